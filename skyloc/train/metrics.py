"""Retrieval metrics as the University-1652 benchmark computes them (R@K, R@1%, AP)."""
from __future__ import annotations

import numpy as np


def average_precision(ranked_good: np.ndarray, n_good: int) -> float:
    """University-1652 AP: trapezoid between precision before and after each positive.

    `ranked_good` holds the 0-based ranks of the positives, ascending.
    """
    ap = 0.0
    for i, rank in enumerate(ranked_good):
        precision = (i + 1) / (rank + 1)
        old_precision = i / rank if rank != 0 else 1.0
        ap += (1.0 / n_good) * (old_precision + precision) / 2
    return ap


def retrieval_metrics(q: np.ndarray, q_labels, g: np.ndarray, g_labels, ks=(1, 5, 10)) -> dict:
    """Dot-product ranking of every query against the gallery; R@K (%), R@1% (%), AP (%)."""
    q_labels, g_labels = np.asarray(q_labels), np.asarray(g_labels)
    one_pct = max(1, int(round(len(g) * 0.01)))
    hits = {k: 0 for k in ks}
    hit_pct, ap_sum, counted = 0, 0.0, 0
    for start in range(0, len(q), 1024):
        scores = q[start : start + 1024] @ g.T
        order = np.argsort(-scores, axis=1, kind="stable")
        for row, lab in zip(order, q_labels[start : start + 1024]):
            good = np.flatnonzero(g_labels[row] == lab)
            if good.size == 0:
                continue  # no positive in the gallery: the query does not count (University-1652)
            counted += 1
            first = good[0]
            for k in ks:
                hits[k] += first < k
            hit_pct += first < one_pct
            ap_sum += average_precision(good, good.size)
    n = max(counted, 1)
    out = {f"R@{k}": 100.0 * hits[k] / n for k in ks}
    out["R@1%"] = 100.0 * hit_pct / n
    out["AP"] = 100.0 * ap_sum / n
    out["queries"] = counted
    out["gallery"] = int(len(g))
    return out
