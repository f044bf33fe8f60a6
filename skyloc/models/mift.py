"""MIFT: multi-scale information fusion transformer (paper 004), a CrossFormer-S-like backbone.

Multi-scale patch embedding (several kernels, one stride, concatenated), global-local range
attention blocks (alternating local groups of GxG adjacent tokens and global groups sampled at a
fixed interval, with a dynamic position bias), multi-scale patch merging, then the heat-map
partition of the last stage into n regions, a ClassBlock per region plus one for the global mean.
Attention grouping is plain reshape/permute so that it exports to ONNX and TensorRT.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_

from skyloc.errors import SkylocError
from skyloc.models.base import CrossViewModel
from skyloc.models.registry import register_model
from skyloc.runtime.preprocess import DataConfig


class CrossScaleEmbed(nn.Module):
    """Convolutions of several kernel sizes with one stride, concatenated (MEF in the paper).

    Channel widths fall as the kernel grows, which keeps the cost of the big kernels down.
    """

    def __init__(self, in_dim: int, out_dims: list[int], kernels: list[int], stride: int, norm_in: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if norm_in else None
        self.convs = nn.ModuleList(
            nn.Conv2d(in_dim, d, k, stride=stride, padding=(k - stride) // 2) for d, k in zip(out_dims, kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,C,H,W] -> [B,C',H',W']."""
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class DynamicPosBias(nn.Module):
    """An MLP from relative (dy, dx) offsets to a per-head bias, so any group size works."""

    def __init__(self, pos_dim: int, heads: int):
        super().__init__()
        self.proj = nn.Linear(2, pos_dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim),
            nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, pos_dim),
            nn.LayerNorm(pos_dim), nn.ReLU(), nn.Linear(pos_dim, heads),
        )

    def forward(self, group: int) -> torch.Tensor:
        """Bias [heads, G*G, G*G] for a GxG group."""
        r = torch.arange(1 - group, group, dtype=torch.float32, device=self.proj.weight.device)
        offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)
        table = self.mlp(self.proj(offsets))  # [(2G-1)^2, heads]
        coords = torch.stack(torch.meshgrid(torch.arange(group), torch.arange(group), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (group - 1)
        index = (rel[..., 0] * (2 * group - 1) + rel[..., 1]).reshape(-1).to(table.device)
        return table[index].reshape(group * group, group * group, -1).permute(2, 0, 1)


class GroupAttention(nn.Module):
    """Multi-head self-attention inside each group of tokens, with the dynamic position bias."""

    def __init__(self, dim: int, heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.pos = DynamicPosBias(max(dim // 4, 8), heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """x [B_, G*G, C] -> same."""
        n, c = int(x.shape[1]), int(x.shape[2])
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.pos(group).unsqueeze(0)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(-1, n, c)
        return self.proj_drop(self.proj(x))


class GlobalLocalBlock(nn.Module):
    """One transformer block; `global_range` picks dilated (global) or adjacent (local) groups."""

    def __init__(self, dim: int, heads: int, group: int, global_range: bool, mlp_ratio: float = 4.0,
                 drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.group, self.global_range = group, global_range
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GroupAttention(dim, heads, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,H,W,C] -> same."""
        h, w, c = (int(v) for v in x.shape[1:])  # static per input size, also when traced
        group = min(self.group, h, w)
        global_range = self.global_range and min(h, w) > self.group
        y = self.norm1(x)
        ph, pw = (-h) % group, (-w) % group
        if ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        if global_range:  # tokens `interval` apart share a group: a global receptive field
            ih, iw = hp // group, wp // group
            g = y.reshape(-1, group, ih, group, iw, c).permute(0, 2, 4, 1, 3, 5)
        else:  # adjacent GxG tokens share a group
            ih, iw = hp // group, wp // group
            g = y.reshape(-1, ih, group, iw, group, c).permute(0, 1, 3, 2, 4, 5)
        g = self.attn(g.reshape(-1, group * group, c), group)
        g = g.reshape(-1, ih, iw, group, group, c)
        if global_range:
            y = g.permute(0, 3, 1, 4, 2, 5).reshape(-1, hp, wp, c)
        else:
            y = g.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
        y = y[:, :h, :w, :]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def heat_partition(tokens: torch.Tensor, parts: int, heat: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Split tokens [B,N,C] into `parts` regions by heat (the channel mean), mean-pool each.

    Tokens are sorted by heat (ascending) and cut into equal runs; semantically this separates
    e.g. buildings, trees and roads without extra supervision (paper 004, n=3).
    """
    n, c = int(tokens.shape[1]), int(tokens.shape[2])  # static per input size, also when traced
    if parts > n:
        raise SkylocError(f"cannot split {n} tokens into {parts} heat regions; use fewer parts")
    heat = tokens.mean(dim=-1) if heat is None else heat
    order = torch.topk(heat, n, dim=1, largest=False, sorted=True).indices  # ascending heat
    ranked = torch.gather(tokens, 1, order.unsqueeze(-1).expand(-1, -1, c))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [ranked[:, bounds[i] : bounds[i + 1]].mean(dim=1) for i in range(parts)]


class MIFTBackbone(nn.Module):
    """Four stages of multi-scale embedding/merging and global-local range attention blocks."""

    def __init__(self, dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), group=7,
                 embed_kernels=(4, 8, 16, 32), embed_dims=None, merge_kernels=(2, 4), drop_path: float = 0.2):
        super().__init__()
        embed_dims = embed_dims or _inverse_split(dims[0], embed_kernels)
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.embeds = nn.ModuleList()
        i = 0
        for s, (dim, depth, nh) in enumerate(zip(dims, depths, heads)):
            if s == 0:
                self.embeds.append(CrossScaleEmbed(3, list(embed_dims), list(embed_kernels), stride=4))
            else:
                merge_dims = [dim // 2] * (len(merge_kernels) - 1)
                merge_dims.append(dim - sum(merge_dims))
                self.embeds.append(CrossScaleEmbed(dims[s - 1], merge_dims, list(merge_kernels), 2, norm_in=True))
            blocks = [GlobalLocalBlock(dim, nh, group, global_range=(b % 2 == 1), drop_path=rates[i + b])
                      for b in range(depth)]
            i += depth
            self.stages.append(nn.Sequential(*blocks))
        self.embed_norm = nn.LayerNorm(dims[0])
        self.norm = nn.LayerNorm(dims[-1])
        self.num_features = dims[-1]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] -> tokens of the last stage [B,h,w,C], before the final norm."""
        for s, (embed, stage) in enumerate(zip(self.embeds, self.stages)):
            x = embed(x if s == 0 else x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            if s == 0:
                x = self.embed_norm(x)
            x = stage(x)
        return x


def _inverse_split(total: int, kernels) -> list[int]:
    """Channel widths inversely proportional to kernel size, summing to `total` (48/24/12/12)."""
    if tuple(kernels) == (4, 8, 16, 32) and total % 8 == 0:
        return [total // 2, total // 4, total // 8, total - total // 2 - total // 4 - total // 8]
    weights = [1.0 / k for k in kernels]
    dims = [max(1, int(total * w / sum(weights))) for w in weights]
    dims[0] += total - sum(dims)
    return dims


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MIFT(CrossViewModel):
    """MIFT backbone + heat-map partition: a global branch and `parts` regional branches."""

    def __init__(self, num_classes: int = 701, img_size: int = 224, parts: int = 3, bottleneck: int = 512,
                 drop: float = 0.5, model_name: str = "mift_small", **backbone_kw):
        super().__init__()
        self.model_name = model_name
        self.parts = parts
        self.backbone = MIFTBackbone(**backbone_kw)
        dim = self.backbone.num_features
        self._make_heads([dim] * (parts + 1), num_classes, bottleneck, drop)
        self.data_config = DataConfig(input_size=(3, img_size, img_size), interpolation="bicubic")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_branches(self, feats: torch.Tensor) -> list[torch.Tensor]:
        h, w, c = (int(v) for v in feats.shape[1:])
        raw = feats.reshape(-1, h * w, c)
        tokens = self.backbone.norm(raw)
        # Heat comes from the un-normalised tokens: after LayerNorm every token's channel mean is
        # the same constant, which would make the ranking arbitrary.
        return [tokens.mean(dim=1), *heat_partition(tokens, self.parts, heat=raw.mean(dim=-1))]


def _no_hub_weights(name: str):
    raise SkylocError(
        f"{name}: timm has no CrossFormer ImageNet weights to download; pass --backbone-weights "
        "with a local ImageNet checkpoint of this backbone instead"
    )


@register_model
def mift_small(num_classes: int = 701, pretrained: bool = False, **kw) -> MIFT:
    """Paper setting: CrossFormer-S-like, 224 px, 96/192/384/768, depths 2/2/6/2, n=3 (D=2048)."""
    if pretrained:
        _no_hub_weights("mift_small")
    return MIFT(num_classes, model_name="mift_small", **kw)


@register_model
def mift_tiny(num_classes: int = 701, pretrained: bool = False, **kw) -> MIFT:
    """Small CPU variant: 128 px, 32/64/128/256, depths 1/1/2/1, group 4, n=3 (D=1024)."""
    if pretrained:
        _no_hub_weights("mift_tiny")
    kw = {"img_size": 128, "bottleneck": 256, "dims": (32, 64, 128, 256), "depths": (1, 1, 2, 1),
          "heads": (1, 2, 4, 8), "group": 4, "drop_path": 0.1, **kw}
    return MIFT(num_classes, model_name="mift_tiny", **kw)
