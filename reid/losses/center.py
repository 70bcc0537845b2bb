"""Center loss (Wen et al., 2016) as the strong baseline uses it (weight 5e-4, centres on their own SGD).

Definition used here: ``L = (1 / B) * sum_i ||x_i - c_{y_i}||^2``, i.e. the *sum* of squared distances
to the class centres divided by the batch size, without the paper's factor 1/2. That is the strong
baseline's implementation (its ``distmat * mask`` summed over the batch and divided by B), so the
recipe's weight 5e-4 means the same thing here; we compute it directly from ``x - centers[y]`` instead
of the full ``B x C`` distance matrix (same value, same gradient, less memory; the reference's clamp
also adds ``(C - 1) * 1e-12`` per sample, which we do not reproduce). Computed in float32.

The centres are a ``Parameter [C, D]`` that the trainer optimises with its own plain SGD at
``loss.center_lr`` (0.5). The objective adds ``center_weight * L`` to the total, so the centres'
gradient is scaled by ``center_weight`` too; the strong baseline divides it back out (``grad *= 1 /
center_weight``) before the SGD step, so the centres move at ``lr * dL/dc`` while the network feels the
weighted term. This module does *not* do that: the trainer does, with
:func:`reid.engine.optim.rescale_center_gradients`, after ``backward`` (and after AMP unscaling).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reid.errors import ReidError


class CenterLoss(nn.Module):
    """``forward(features [B, D], labels [B]) -> (1/B) sum_i ||x_i - c_{y_i}||^2``; see the module docstring."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        if num_classes < 1 or feat_dim < 1:
            raise ReidError(f"center loss needs num_classes >= 1 and feat_dim >= 1, got {num_classes}, {feat_dim}")
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        # Standard-normal initialisation, as in the reference implementation.
        self.centers = nn.Parameter(torch.randn(self.num_classes, self.feat_dim))

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        if features.dim() != 2 or features.size(1) != self.feat_dim or features.size(0) != labels.numel():
            raise ReidError(f"expected features [B, {self.feat_dim}] and B labels, got {tuple(features.shape)} "
                            f"and {labels.numel()} labels")
        with torch.autocast(device_type=features.device.type, enabled=False):
            diff = features.float() - self.centers.float().index_select(0, labels.long().view(-1))
            return diff.pow(2).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"
