"""Parameter counts and GFLOPs, to compare the paper variants with the papers."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from skyloc.models.base import CrossViewModel


def profile_model(model: CrossViewModel) -> dict:
    """Params (total and backbone, millions) and GFLOPs of one `embed` at the model's input size.

    GFLOPs follow the papers' convention: multiply-accumulates (FLOP counter / 2).
    """
    model = model.eval()
    x = torch.randn(1, *model.data_config.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.embed(x)
    return {
        "model": model.model_name,
        "input": "x".join(str(v) for v in model.data_config.input_size[1:]),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "backbone_params_m": sum(p.numel() for p in model.backbone.parameters()) / 1e6,
        "gmacs": counter.get_total_flops() / 2e9,
        "embed_dim": model.embed_dim,
    }
