"""ONNX Runtime vs PyTorch parity: raw tensors, rankings, and the user-level image-file path."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from skyloc.errors import ModelMismatchError
from skyloc.models import CrossViewModel, weights_fingerprint
from skyloc.runtime.embedder import OnnxEmbedder, embed_images
from skyloc.runtime.preprocess import load_image
from skyloc.train.predict import predict

MAX_ABS_TOL = 1e-4
COSINE_TOL = 0.9999


@dataclass
class ParityReport:
    rows: list[dict] = field(default_factory=list)
    ranking_agreement: float = 1.0
    topk: int = 5

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows) and self.ranking_agreement == 1.0

    def add(self, name: str, a: np.ndarray, b: np.ndarray, max_abs_tol: float = MAX_ABS_TOL,
            cos_tol: float = COSINE_TOL) -> dict:
        max_abs = float(np.abs(a - b).max())
        cos = float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
        row = {"check": name, "max_abs": max_abs, "min_cosine": cos, "ok": max_abs <= max_abs_tol and cos >= cos_tol}
        self.rows.append(row)
        return row


def sample_images(n: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Structured test images (smooth blobs and edges, not white noise), reproducible."""
    rng = np.random.default_rng(seed)
    imgs = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):
            p = rng.integers(0, size, 2)
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(8, size // 4)),
                       tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        imgs.append(img)
    return imgs


def verify(onnx_path: str | Path, model: CrossViewModel, batch_sizes=(1, 4), gallery: int = 32, topk: int = 5,
           image_files: list[Path] | None = None) -> ParityReport:
    """Run the same inputs through PyTorch and ONNX Runtime (CPU) and compare."""
    session = OnnxEmbedder(onnx_path, providers=["CPUExecutionProvider"])
    fp = weights_fingerprint(model)
    if session.meta.fingerprint != fp:
        raise ModelMismatchError(f"{onnx_path} was exported from weights {session.meta.fingerprint}, "
                                 f"the checkpoint has {fp}: export again from this checkpoint")
    model = model.eval()
    report = ParityReport(topk=topk)
    c, h, w = model.data_config.input_size
    gen = torch.Generator().manual_seed(0)
    for b in batch_sizes:
        x = torch.randn(b, c, h, w, generator=gen)
        with torch.no_grad():
            ref = model.embed(x).numpy()
        report.add(f"random tensors, batch {b}", ref, session.embed_tensor(x.numpy()))
    # rankings on a small gallery: do both backends order the gallery the same way?
    imgs = sample_images(gallery, size=max(h, w))
    ref = predict(model, imgs)
    got = embed_images(session, imgs)
    report.add(f"gallery of {gallery} images", ref, got)
    k = min(topk, gallery)
    rank_ref = np.argsort(-(ref @ ref.T), axis=1)[:, :k]
    rank_got = np.argsort(-(got @ got.T), axis=1)[:, :k]
    report.ranking_agreement = float(np.mean(np.all(rank_ref == rank_got, axis=1)))
    # user-level parity: image files through the runtime vs the PyTorch evaluation pipeline
    if image_files:
        ref = predict(model, [Path(p) for p in image_files])
        got = embed_images(session, [load_image(p) for p in image_files])
        report.add(f"{len(image_files)} image files (runtime vs evaluation)", ref, got)
    return report
