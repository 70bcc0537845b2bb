"""Batch-hard triplet loss (Hermans et al., 2017) on the features before the BN-neck.

For every anchor of a P x K batch: the *hardest positive* (the farthest sample of the same identity)
and the *hardest negative* (the closest sample of another identity), then

* margin ``m``: ``mean(relu(d_ap - d_an + m))`` -- ``nn.MarginRankingLoss(m)(d_an, d_ap, 1)``;
* soft margin: ``mean(softplus(d_ap - d_an))`` -- ``nn.SoftMarginLoss()(d_an - d_ap, 1)``, no margin
  to tune and a gradient that never switches off.

Distances are Euclidean, computed from the differences ``sqrt(sum((x - y)^2))`` in float32 with
autocast off (``torch.cdist`` without its matrix-product shortcut), never as ``|x|^2 + |y|^2 - 2 x.y``.
That formula's ``x.y`` is a matmul, which runs in TF32 (10-bit mantissa) once training sets
``torch.set_float32_matmul_precision("high")`` on Ampere and later GPUs (reid/engine/device.py), and
with feature norms of 20-30 before the BN-neck its cancellation leaves errors of ~1e-2 in the squared
distance: self-distances of ~0.1 instead of 0 and noisy hardest positives, exactly for the close pairs
that matter most. The difference form is exact float32 whatever the matmul precision (identical
features are at distance exactly 0), costs ``B x B x D`` element operations (64 x 64 x 2048: nothing
next to the backbone), and ``cdist``'s backward gives a zero, finite gradient at zero distance.

As in the reference implementations, an anchor's own (zero) distance counts among its positives, so an
identity with a single image in the batch still contributes (it only pushes its negatives away).
Anchors with no negative at all (a batch of one identity) have no triplet and are left out of the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid.errors import ReidError


def pairwise_euclidean(x: Tensor, y: Tensor | None = None) -> Tensor:
    """``[N, M]`` Euclidean distances between the rows of ``x`` and of ``y`` (default ``x``), exact float32.

    No matrix product is involved, so TF32 (``set_float32_matmul_precision("high")``) cannot touch it.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        a = x.float()
        b = a if y is None else y.float()
        return torch.cdist(a.unsqueeze(0), b.unsqueeze(0), p=2.0,
                           compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)


def batch_hard_mining(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(d_ap, d_an, valid)`` per anchor: hardest positive, hardest negative, "has a negative"."""
    if dist.dim() != 2 or dist.size(0) != dist.size(1) or labels.numel() != dist.size(0):
        raise ReidError(f"need a square distance matrix and one label per row, got {tuple(dist.shape)} "
                        f"and {labels.numel()} labels")
    same = labels.view(-1, 1) == labels.view(1, -1)
    d_ap = dist.masked_fill(~same, float("-inf")).max(dim=1).values
    d_an = dist.masked_fill(same, float("inf")).min(dim=1).values
    valid = (~same).any(dim=1)
    return d_ap, d_an, valid


def triplet_loss(
    features: Tensor,
    labels: Tensor,
    margin: float = 0.3,
    soft_margin: bool = False,
    normalize_features: bool = False,
) -> Tensor:
    """Batch-hard triplet loss of ``features [B, D]`` (see the module docstring); a float32 scalar."""
    if features.dim() != 2 or features.size(0) != labels.numel():
        raise ReidError(f"expected features [B, D] and B labels, got {tuple(features.shape)} and {labels.numel()}")
    feats = features.float()
    if normalize_features:
        feats = F.normalize(feats, dim=1)
    d_ap, d_an, valid = batch_hard_mining(pairwise_euclidean(feats), labels)
    # d_an is +inf for an anchor without a negative; both forms give 0 there, and torch.where drops it.
    per_anchor = F.softplus(d_ap - d_an) if soft_margin else F.relu(d_ap - d_an + margin)
    per_anchor = torch.where(valid, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / valid.sum().clamp(min=1)


class TripletLoss(nn.Module):
    """:func:`triplet_loss` with fixed settings; ``forward(features, labels) -> scalar``."""

    def __init__(self, margin: float = 0.3, soft_margin: bool = False, normalize_features: bool = False) -> None:
        super().__init__()
        if margin < 0:
            raise ReidError(f"triplet margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.soft_margin = bool(soft_margin)
        self.normalize_features = bool(normalize_features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return triplet_loss(features, labels, self.margin, self.soft_margin, self.normalize_features)

    def extra_repr(self) -> str:
        kind = "soft_margin" if self.soft_margin else f"margin={self.margin}"
        return f"{kind}, normalize_features={self.normalize_features}"
