"""The one feature-extraction function: evaluation, export verification and tests all use it."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from skyloc.models import CrossViewModel
from skyloc.runtime.preprocess import DataConfig, load_image, preprocess


def to_tensor(image_rgb: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """The evaluation transform: exactly the runtime's `preprocess`, as a torch tensor."""
    return torch.from_numpy(preprocess(image_rgb, cfg))


@torch.no_grad()
def predict(model: CrossViewModel, images: Sequence[np.ndarray | str | Path] | Iterable, batch_size: int = 32,
            flip: bool = False, device: str | torch.device = "cpu", progress=None) -> np.ndarray:
    """Descriptors [N,D] (float32, unit length) for RGB images or image paths.

    flip=True averages the descriptor of each image and its mirror (University-1652 protocol).
    """
    model = model.eval().to(device)
    cfg = model.data_config
    out: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        x = torch.stack(batch).to(device)
        f = model.embed(x)
        if flip:
            f = torch.nn.functional.normalize(f + model.embed(torch.flip(x, dims=[3])), dim=1)
        out.append(f.float().cpu().numpy())
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for item in images:
        img = load_image(item) if isinstance(item, (str, Path)) else item
        batch.append(to_tensor(img, cfg))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not out:
        return np.zeros((0, model.embed_dim), np.float32)
    return np.concatenate(out)
