"""Metrics and losses against hand-computed cases."""
import numpy as np
import pytest
import torch

from skyloc.train.losses import cross_view_triplet, info_nce
from skyloc.train.metrics import average_precision, retrieval_metrics


def _gallery_order(order, labels):
    """Query [1,0,...] and gallery vectors whose scores follow `order` (best first)."""
    n = len(order)
    scores = np.zeros(n)
    for rank, i in enumerate(order):
        scores[i] = 1.0 - rank * 0.1
    g = np.stack([scores, np.sqrt(np.clip(1 - scores**2, 0, None))], 1)
    return np.array([[1.0, 0.0]]), g


def test_recall_at_k_and_one_percent():
    # ranking: g2 (label b), g0 (a), g1 (a), g3 (c): the first positive for label a is at rank 1
    q, g = _gallery_order([2, 0, 1, 3], None)
    m = retrieval_metrics(q, ["a"], g, ["a", "a", "b", "c"], ks=(1, 2))
    assert m["R@1"] == 0.0 and m["R@2"] == 100.0
    assert m["R@1%"] == 0.0  # 1 % of 4 images rounds to the top 1


def test_average_precision_with_several_positives():
    # positives at ranks 0 and 2: University-1652 trapezoid AP = 0.5*(1+1)/2 + 0.5*(1/2+2/3)/2
    assert average_precision(np.array([0, 2]), 2) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)
    q, g = _gallery_order([0, 1, 2], None)
    m = retrieval_metrics(q, ["a"], g, ["a", "b", "a"])
    assert m["AP"] == pytest.approx(100 * (0.5 + 0.5 * (0.5 + 2 / 3) / 2))
    assert m["R@1"] == 100.0


def test_protocols_differ_only_by_distractor_classes():
    # full gallery: a distractor class 'x' outranks the true match; distractor-free drops it
    q, g = _gallery_order([1, 0], None)
    labels = np.array(["a", "x"])
    full = retrieval_metrics(q, ["a"], g, labels)
    keep = np.isin(labels, ["a"])
    clean = retrieval_metrics(q, ["a"], g[keep], labels[keep])
    assert full["R@1"] == 0.0 and clean["R@1"] == 100.0
    assert full["gallery"] == 2 and clean["gallery"] == 1


def test_queries_without_positive_are_not_counted():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(q, ["a", "zzz"], np.array([[1.0, 0.0]]), ["a"])
    assert m["queries"] == 1 and m["R@1"] == 100.0


def test_triplet_mines_hardest_pairs_across_views_only():
    labels = torch.tensor([0, 1])
    drone = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sat_good = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cross_view_triplet(drone, sat_good, labels, labels, margin=0.3).item() == pytest.approx(0.0)
    # swap satellites: positive distance sqrt(2), negative 0 -> loss = 0.3 + sqrt(2) for all 4 anchors
    sat_bad = sat_good.flip(0)
    assert cross_view_triplet(drone, sat_bad, labels, labels, margin=0.3).item() == pytest.approx(0.3 + 2**0.5, rel=1e-4)
    # two drone images of different classes are identical: mining inside the drone view would make
    # each the other's zero-distance negative; cross-view mining only compares with satellites
    drone_dup = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = cross_view_triplet(drone_dup, sat_good, labels, labels, margin=0.3)
    expected = (0.0 + (0.3 + 2**0.5) + 0.3 + 0.3) / 4  # anchors d0, d1, s0, s1
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_info_nce_prefers_matching_pairs():
    labels = torch.arange(4)
    f = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    good = info_nce(f, f, labels, labels, 0.1)
    bad = info_nce(f, f.roll(1, 0), labels, labels, 0.1)
    assert good.item() < bad.item()
