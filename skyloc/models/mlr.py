"""MLR: ConvNeXt multi-level representation learning (paper 000, MCCG-like).

backbone map O -> [SGE(O), ACmix(O)] -> F_out = alpha*F_att + beta*F_conv (learnable, init 0.5);
global branch avgpool(O) and fused branch avgpool(F_out), each with a ClassBlock.

The `_layout` variants (ours, not the paper's) add a third branch: O average-pooled on a GxG grid
and concatenated, so the descriptor keeps where things are. Both views of a map pair are north-up
(the runtime derotates frames), so layout helps tell two nearby places apart; global pooling throws
it away. They also standardise each input image per channel (`ImageStandardise`): white balance and
exposure, what changes most between dates, are gone before the backbone. And they carry a fixed,
unlearned part (`EdgeLayout`, `edge_grid`): where the image's edges lie on an 8x8 grid, weighted as
much as the learned branches together. Measured on NAIP across dates (README, 8-epoch runs): R@1
50.0 % with all three; 41.9 % without the edge layout, 46.2 % without the standardisation, 44.4 %
without the layout branch.
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from skyloc.models.base import CrossViewModel
from skyloc.models.layers import EdgeLayout, ImageStandardise
from skyloc.models.registry import register_model
from skyloc.runtime.preprocess import DataConfig


class SpatialGroupEnhance(nn.Module):
    """SGE (Li et al.): each channel group re-weights its positions by similarity to its mean."""

    def __init__(self, groups: int = 64):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(1, groups, 1, 1))
        self.bias = nn.Parameter(torch.ones(1, groups, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = (int(v) for v in x.shape[1:])
        g = self.groups
        xg = x.reshape(-1, c // g, h, w)  # [B*g, c/g, h, w]
        sim = (xg * xg.mean(dim=(2, 3), keepdim=True)).sum(dim=1)  # [B*g, h, w]
        t = sim.reshape(-1, h * w)
        t = (t - t.mean(dim=1, keepdim=True)) / (t.std(dim=1, keepdim=True) + 1e-5)
        t = t.reshape(-1, g, h, w) * self.weight + self.bias
        return (xg * torch.sigmoid(t.reshape(-1, 1, h, w))).reshape(-1, c, h, w)


class ACMix(nn.Module):
    """Convolution + self-attention mix (Pan et al. 2022), sharing one set of 1x1 projections.

    Attention path: multi-head self-attention over all positions (the 8x8 map is small) with a
    convolutional position encoding. Convolution path: the same q/k/v re-projected by a
    fully-connected layer into k*k shifted copies and aggregated by a grouped 3x3 convolution.
    The two paths are summed with learnable rates, as in ACmix.
    """

    def __init__(self, dim: int, heads: int = 4, kernel: int = 3):
        super().__init__()
        self.heads, self.head_dim, self.kernel = heads, dim // heads, kernel
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.fc = nn.Conv2d(3 * heads, kernel * kernel, 1, bias=False)
        self.dep_conv = nn.Conv2d(
            kernel * kernel * self.head_dim, dim, kernel, padding=kernel // 2, groups=self.head_dim
        )
        self.proj = nn.Conv2d(dim, dim, 1)
        self.rate_att = nn.Parameter(torch.tensor(0.5))
        self.rate_conv = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = (int(v) for v in x.shape[1:])
        q, k, v = self.qkv(x).chunk(3, dim=1)
        # attention path
        qa = (q + self.pos(q)).reshape(-1, self.heads, self.head_dim, h * w)
        ka = (k + self.pos(k)).reshape(-1, self.heads, self.head_dim, h * w)
        va = v.reshape(-1, self.heads, self.head_dim, h * w)
        attn = torch.softmax(qa.transpose(-2, -1) @ ka / math.sqrt(self.head_dim), dim=-1)  # [B,h,N,N]
        out_att = (va @ attn.transpose(-2, -1)).reshape(-1, c, h, w)
        # convolution path
        qkv = torch.cat([t.reshape(-1, self.heads, self.head_dim, h * w) for t in (q, k, v)], dim=1)
        qkv = qkv.permute(0, 2, 1, 3).reshape(-1, 3 * self.heads, h, w)  # [B*hd, 3*heads, h, w]
        shifted = self.fc(qkv).reshape(-1, self.head_dim * self.kernel * self.kernel, h, w)
        out_conv = self.dep_conv(shifted)  # [B, C, h, w]
        return self.proj(self.rate_att * out_att + self.rate_conv * out_conv)


class MLR(CrossViewModel):
    """ConvNeXt backbone + SGE / ACmix fusion, two branches (global, fused), unit descriptors."""

    def __init__(
        self,
        backbone: str = "convnext_tiny",
        num_classes: int = 701,
        img_size: int = 256,
        bottleneck: int = 512,
        drop: float = 0.5,
        sge_groups: int = 64,
        attn_heads: int = 8,
        layout_grid: int = 0,
        image_norm: bool = False,
        edge_grid: int = 0,
        pretrained: bool = False,
        model_name: str = "mlr_convnext_tiny",
    ):
        super().__init__()
        self.model_name = model_name
        self.standardise = ImageStandardise() if image_norm else nn.Identity()
        self.backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="")
        dim = self.backbone.num_features
        self.sge = SpatialGroupEnhance(sge_groups)
        self.acmix = ACMix(dim, heads=attn_heads)
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.beta = nn.Parameter(torch.tensor(0.5))
        self.layout_grid = layout_grid
        self._make_heads([dim, dim] + ([dim * layout_grid**2] if layout_grid else []), num_classes, bottleneck, drop)
        self.data_config = DataConfig(input_size=(3, img_size, img_size), interpolation="bicubic")
        self.edges = EdgeLayout(edge_grid) if edge_grid else None

    def fixed_branches(self) -> list[nn.Module]:
        return [self.edges] if self.edges is not None else []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self.standardise(x))

    def forward_branches(self, feats: torch.Tensor) -> list[torch.Tensor]:
        fused = self.alpha * self.sge(feats) + self.beta * self.acmix(feats)
        branches = [feats.mean(dim=(2, 3)), fused.mean(dim=(2, 3))]
        if self.layout_grid:
            branches.append(F.adaptive_avg_pool2d(feats, self.layout_grid).flatten(1))
        return branches


@register_model
def mlr_convnext_tiny(num_classes: int = 701, pretrained: bool = False, **kw) -> MLR:
    """Paper setting: ConvNeXt-T, 256 px, 768x8x8 map, 512-d branches (D=1024)."""
    return MLR("convnext_tiny", num_classes, pretrained=pretrained, model_name="mlr_convnext_tiny", **kw)


@register_model
def mlr_convnext_atto(num_classes: int = 701, pretrained: bool = False, **kw) -> MLR:
    """Small CPU variant: ConvNeXt-atto, 128 px, 256-d branches (D=512)."""
    kw = {"img_size": 128, "bottleneck": 256, "sge_groups": 32, "attn_heads": 4, **kw}
    return MLR("convnext_atto", num_classes, pretrained=pretrained, model_name="mlr_convnext_atto", **kw)


@register_model
def mlr_convnext_atto_layout(num_classes: int = 701, pretrained: bool = False, **kw) -> MLR:
    """mlr_convnext_atto with the 2x2 layout branch, per-image standardised input and the 8x8 edge
    layout (D=3x256+64): the CPU recipes' model for your maps."""
    kw = {"img_size": 128, "bottleneck": 256, "sge_groups": 32, "attn_heads": 4, "layout_grid": 2, "image_norm": True,
          "edge_grid": 8, **kw}
    return MLR("convnext_atto", num_classes, pretrained=pretrained, model_name="mlr_convnext_atto_layout", **kw)


@register_model
def mlr_convnext_tiny_layout(num_classes: int = 701, pretrained: bool = False, **kw) -> MLR:
    """mlr_convnext_tiny with the 2x2 layout branch, per-image standardised input and the 8x8 edge
    layout (D=3x512+64): the GPU recipe's model for your maps."""
    kw = {"layout_grid": 2, "image_norm": True, "edge_grid": 8, **kw}
    return MLR("convnext_tiny", num_classes, pretrained=pretrained, model_name="mlr_convnext_tiny_layout", **kw)
