"""Losses: cross-entropy per branch, cross-view triplet with hard mining, InfoNCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def branch_cross_entropy(logits: list[torch.Tensor], labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Mean of the branches' cross-entropy (each branch is its own classifier)."""
    return sum(F.cross_entropy(l, labels, label_smoothing=smoothing) for l in logits) / len(logits)


def _hardest(anchor: torch.Tensor, other: torch.Tensor, la: torch.Tensor, lo: torch.Tensor, margin: float):
    d = torch.cdist(anchor, other)  # Euclidean, as in the papers
    same = la[:, None] == lo[None, :]
    pos = torch.where(same, d, torch.full_like(d, -1e9)).max(dim=1).values
    neg = torch.where(~same, d, torch.full_like(d, 1e9)).min(dim=1).values
    valid = same.any(dim=1) & (~same).any(dim=1)
    return F.relu(margin + pos - neg)[valid]


def cross_view_triplet(f_drone: torch.Tensor, f_sat: torch.Tensor, labels_drone: torch.Tensor,
                       labels_sat: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Triplet loss with the hardest positive and negative mined only in the *other* view.

    Features are L2-normalised first. Both directions (drone anchors, satellite anchors) count.
    """
    fd, fs = F.normalize(f_drone, dim=1), F.normalize(f_sat, dim=1)
    losses = torch.cat([_hardest(fd, fs, labels_drone, labels_sat, margin),
                        _hardest(fs, fd, labels_sat, labels_drone, margin)])
    return losses.mean() if losses.numel() else f_drone.sum() * 0.0


def info_nce(f_drone: torch.Tensor, f_sat: torch.Tensor, labels_drone: torch.Tensor, labels_sat: torch.Tensor,
             temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE (Sample4Geo): every same-class pair is a positive, the rest negatives."""
    fd, fs = F.normalize(f_drone, dim=1), F.normalize(f_sat, dim=1)
    logits = fd @ fs.T / temperature
    target = (labels_drone[:, None] == labels_sat[None, :]).float()

    def soft_ce(lg, tg):
        return -(tg / tg.sum(1, keepdim=True).clamp(min=1) * F.log_softmax(lg, dim=1)).sum(1).mean()

    return 0.5 * (soft_ce(logits, target) + soft_ce(logits.T, target.T))
