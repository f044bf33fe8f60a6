"""The API every skyloc network shares (timm-like): forward_features, heads, embed, data_config."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from skyloc.errors import SkylocError
from skyloc.models.layers import ClassBlock, unit_descriptor
from skyloc.runtime.preprocess import DataConfig


@dataclass
class BranchOutput:
    """Training output: one logits tensor and one feature tensor per branch."""

    logits: list[torch.Tensor]
    features: list[torch.Tensor]


class CrossViewModel(nn.Module):
    """Base class: a backbone, branch pooling (`forward_branches`) and one ClassBlock per branch.

    Subclasses set `self.model_name`, `self.data_config`, `self.heads` and implement
    `forward_features` (image -> feature map) and `forward_branches` (map -> pooled vectors).
    """

    model_name: str = ""
    data_config: DataConfig
    heads: nn.ModuleList

    def _make_heads(self, in_dims: list[int], num_classes: int, bottleneck: int, drop: float) -> None:
        self.num_classes = num_classes
        self.bottleneck_dim = bottleneck
        self.heads = nn.ModuleList(ClassBlock(d, num_classes, bottleneck, drop) for d in in_dims)

    @property
    def num_branches(self) -> int:
        return len(self.heads)

    @property
    def embed_dim(self) -> int:
        return self.num_branches * self.bottleneck_dim + sum(b.dim for b in self.fixed_branches())

    def fixed_branches(self) -> list[nn.Module]:
        """Descriptor parts computed from the image by a fixed rule (nothing learned, no head)."""
        return []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_branches(self, feats: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward_head(self, branches: list[torch.Tensor]) -> BranchOutput:
        logits, feats = zip(*(head(b) for head, b in zip(self.heads, branches)))
        return BranchOutput(list(logits), list(feats))

    def forward(self, x: torch.Tensor) -> BranchOutput:
        return self.forward_head(self.forward_branches(self.forward_features(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The retrieval descriptor [B, embed_dim], unit length. This is what ONNX exports.

        The learned branches count equally; each fixed branch weighs as much as all of them together,
        so similarity = mean(learned cosine similarity, fixed one) when there is one."""
        learned = self.forward(x).features
        fixed = [b(x) for b in self.fixed_branches()]
        return unit_descriptor(learned + fixed, [1.0] * len(learned) + [float(len(learned))] * len(fixed))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def load_backbone_weights(self, path: str | Path) -> None:
        """Load ImageNet backbone weights from a local file (offline machines)."""
        p = Path(path)
        if not p.is_file():
            raise SkylocError(f"backbone weights not found: {p}")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise SkylocError(f"cannot read backbone weights {p}: {exc}") from None
        if isinstance(state, dict):
            for key in ("model", "state_dict"):
                if key in state and isinstance(state[key], dict):
                    state = state[key]
        own = self.backbone.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if len(usable) < 0.5 * len(own):
            raise SkylocError(
                f"{p} matches only {len(usable)}/{len(own)} backbone tensors of {self.model_name}: "
                "is it the ImageNet checkpoint of this backbone?"
            )
        self.backbone.load_state_dict(usable, strict=False)


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of every tensor in the state dict: identifies the exact weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
