"""Evaluation: both directions, two protocols, SUES-200 heights, robustness sweeps, a figure."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from skyloc.errors import SkylocError
from skyloc.models import CrossViewModel
from skyloc.runtime.preprocess import load_image
from skyloc.train.datasets import ViewSet, detect_layout, read_view
from skyloc.train.metrics import retrieval_metrics
from skyloc.train.predict import predict

TASKS = {"drone->satellite": ("query_drone", "gallery_satellite"),
         "satellite->drone": ("query_satellite", "gallery_drone")}


def _feats(model, views: ViewSet, device, flip, transform=None, batch_size=32):
    imgs = (load_image(p) for p, _ in views.items)
    if transform is not None:
        imgs = (transform(im) for im in imgs)
    return predict(model, imgs, batch_size=batch_size, flip=flip, device=device), [c for _, c in views.items]


def default_flip(checkpoint: dict) -> bool:
    """Flip averaging (University-1652's protocol) unless the model was trained on aligned pairs:
    a north-up model is judged as the runtime uses it, one frame, no mirror (a mirror image is
    another layout, i.e. another place, to it)."""
    return not bool(checkpoint.get("config", {}).get("aligned", False))


def evaluate(model: CrossViewModel, data: str | Path, device: str = "cpu", flip: bool = True,
             height: str | None = None, query_transform=None, tasks=TASKS) -> list[dict]:
    """Rows of metrics: each task under the full-gallery and the distractor-free protocol.

    full: every gallery image (University-1652: 951 satellite incl. 250 distractor classes).
    distractor-free: gallery restricted to classes that have queries (some later work).
    """
    layout = detect_layout(data, height)
    rows = []
    for task, (qn, gn) in tasks.items():
        if qn not in layout.test or gn not in layout.test:
            missing = qn if qn not in layout.test else gn
            raise SkylocError(f"missing test folder {missing} in {Path(data)} ({layout.kind}); "
                              f"found: {', '.join(sorted(layout.test)) or 'no test folders'}")
        qv, gv = read_view(layout.test[qn], qn), read_view(layout.test[gn], gn)
        qf, ql = _feats(model, qv, device, flip, query_transform)
        gf, gl = _feats(model, gv, device, flip)
        full = retrieval_metrics(qf, ql, gf, gl)
        keep = np.isin(gl, np.unique(ql))
        clean = retrieval_metrics(qf, ql, gf[keep], np.asarray(gl)[keep])
        rows.append({"task": task, "protocol": "full gallery", "dataset": layout.kind, **full})
        rows.append({"task": task, "protocol": "distractor-free", "dataset": layout.kind, **clean})
    return rows


def rotate(deg: float):
    def f(img):
        h, w = img.shape[:2]
        return cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0), (w, h))
    f.__name__ = f"rotate {deg:g} deg"
    return f


def shift(px: int, padding: str = "black"):
    """Shift right/down by px (at the model input scale) with black or mirrored padding (paper 000)."""
    def f(img):
        h, w = img.shape[:2]
        border = cv2.BORDER_CONSTANT if padding == "black" else cv2.BORDER_REFLECT
        padded = cv2.copyMakeBorder(img, px, 0, px, 0, border, value=0)
        return padded[:h, :w]
    f.__name__ = f"shift {px}px {padding}"
    return f


def robustness(model: CrossViewModel, data: str | Path, device: str = "cpu") -> list[dict]:
    """Drone->satellite R@1/AP under query rotation, shifts and other input sizes (the papers' sweeps)."""
    size = model.data_config.height
    sweeps = [None, rotate(90), rotate(180), shift(int(10 * size / 256)), shift(int(20 * size / 256)),
              shift(int(20 * size / 256), "flip")]
    task = {"drone->satellite": TASKS["drone->satellite"]}
    layout = detect_layout(data)
    qn, gn = TASKS["drone->satellite"]
    if qn not in layout.test or gn not in layout.test:
        raise SkylocError(f"missing test folder {qn if qn not in layout.test else gn} in {Path(data)} ({layout.kind})")
    qv, gv = read_view(layout.test[qn], qn), read_view(layout.test[gn], gn)
    gf, gl = _feats(model, gv, device, flip=False)  # the gallery is not perturbed: embed it once
    rows = []
    for t in sweeps:
        qf, ql = _feats(model, qv, device, flip=False, transform=t)
        r = retrieval_metrics(qf, ql, gf, gl)
        rows.append({"perturbation": t.__name__ if t else "none", "R@1": r["R@1"], "AP": r["AP"]})
    native = model.data_config
    try:
        for factor in (0.75, 1.25):  # both views at another input size
            s = int(round(size * factor / 32) * 32)
            model.data_config = replace(native, input_size=(3, s, s))
            r = evaluate(model, data, device, flip=False, tasks=task)[0]
            rows.append({"perturbation": f"input {s}px (native {size})", "R@1": r["R@1"], "AP": r["AP"]})
    finally:
        model.data_config = native
    return rows


def retrieval_figure(model: CrossViewModel, data: str | Path, out: str | Path, n_queries: int = 4, device="cpu"):
    """Top-5 satellite matches for a few drone queries; green frame = right place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layout = detect_layout(data)
    qv, gv = read_view(layout.test["query_drone"], "query_drone"), read_view(layout.test["gallery_satellite"], "g")
    pick = qv.items[:: max(1, len(qv.items) // n_queries)][:n_queries]
    qf = predict(model, [p for p, _ in pick], device=device)
    gf = predict(model, [p for p, _ in gv.items], device=device)
    fig, axes = plt.subplots(len(pick), 6, figsize=(12, 2.2 * len(pick)))
    axes = np.atleast_2d(axes)
    for r, ((qp, qc), f) in enumerate(zip(pick, qf)):
        axes[r, 0].imshow(load_image(qp))
        axes[r, 0].set_title(f"query {qc}", fontsize=8)
        for j, gi in enumerate(np.argsort(-(gf @ f))[:5]):
            gp, gc = gv.items[gi]
            ax = axes[r, j + 1]
            ax.imshow(load_image(gp))
            ax.set_title(f"#{j + 1} {gc} ({gf[gi] @ f:.2f})", fontsize=8, color="green" if gc == qc else "red")
            for s in ax.spines.values():
                s.set_edgecolor("green" if gc == qc else "red")
                s.set_linewidth(3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return Path(out)


def result_tables(rows: list[dict], robustness_rows: list[dict], data: list[Path]) -> list:
    """`skyloc evaluate`'s tables (rich): one per test set and dataset, the test sets side by side
    when there are several, the robustness sweeps."""
    from rich import box
    from rich.table import Table

    tables = []
    rob = robustness_rows
    short = {"drone->satellite": "drone->sat", "satellite->drone": "sat->drone",
             "full gallery": "full", "distractor-free": "no distr."}
    for d in data:
        mine = [r for r in rows if r["data"] == str(d)]
        for dataset in dict.fromkeys(r["dataset"] for r in mine):
            table = Table("task", "gallery", "R@1", "R@5", "R@10", "R@1%", "AP", "queries",
                          title=f"{dataset} ({d.name})", box=box.SIMPLE_HEAD, caption="gallery: full = every "
                          "gallery image; no distr. = only classes with queries (some later work)")
            for r in (r for r in mine if r["dataset"] == dataset):
                table.add_row(short.get(r["task"], r["task"]), short.get(r["protocol"], r["protocol"]),
                              *(f"{r[k]:.2f}" for k in ("R@1", "R@5", "R@10", "R@1%", "AP")),
                              f"{r['queries']}/{r['gallery']}")
            tables.append(table)
    if len(data) > 1:
        t = Table("test set", "R@1", "R@5", "AP", "chance R@1", "R@1 vs first", title="drone->sat, full gallery",
                  box=box.SIMPLE_HEAD)
        first = None
        for d in data:
            for r in rows:
                if r["data"] == str(d) and r["task"] == "drone->satellite" and r["protocol"] == "full gallery":
                    first = r["R@1"] if first is None else first
                    name = d.name + (f" {r['height']}" if r.get("height") else "")
                    t.add_row(name, f"{r['R@1']:.2f}", f"{r['R@5']:.2f}", f"{r['AP']:.2f}",
                              f"{100.0 / max(1, r['gallery']):.2f}", f"{r['R@1'] - first:+.2f}")
        tables.append(t)
    if rob:
        t = Table("perturbation (drone queries)", "test set", "R@1", "AP", box=box.SIMPLE_HEAD)
        for r in rob:
            t.add_row(r["perturbation"], Path(r["data"]).name, f"{r['R@1']:.2f}", f"{r['AP']:.2f}")
        tables.append(t)
    return tables
