"""Label-smoothed cross-entropy: the ID loss of the strong baseline (epsilon 0.1, +1.0 mAP on Market).

With ``C`` classes the target distribution is ``q = (1 - eps) * onehot(y) + eps / C`` and the loss is
``-sum_c q_c log p_c`` averaged over the batch. ReID training sets have few images per identity, so a
network trained on hard one-hot targets overfits the training identities; smoothing keeps the logits
from growing without bound and generalises better to the unseen test identities.

Computed as ``(1 - eps) * NLL + eps * mean_c(-log p_c)`` (no dense one-hot matrix), in float32. This
equals ``F.cross_entropy(logits, y, label_smoothing=eps)``; the explicit form keeps the recipe's
definition visible and independent of the PyTorch version.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from reid.errors import ReidError


def cross_entropy_label_smooth(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Mean over the batch of ``-sum_c q_c log softmax(logits)_c`` (see the module docstring)."""
    if logits.dim() != 2:
        raise ReidError(f"logits must be [B, C], got {tuple(logits.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ReidError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    log_probs = F.log_softmax(logits.float(), dim=1)
    nll = -log_probs.gather(1, targets.long().view(-1, 1)).squeeze(1)
    uniform = -log_probs.mean(dim=1)
    return ((1.0 - epsilon) * nll + epsilon * uniform).mean()


class CrossEntropyLabelSmooth(nn.Module):
    """:func:`cross_entropy_label_smooth` for a fixed number of classes (checked at every call)."""

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ReidError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
        self.num_classes = int(num_classes)
        self.epsilon = float(epsilon)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.dim() != 2 or logits.size(1) != self.num_classes:
            raise ReidError(f"expected logits [B, {self.num_classes}], got {tuple(logits.shape)}")
        return cross_entropy_label_smooth(logits, targets, self.epsilon)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, epsilon={self.epsilon}"
