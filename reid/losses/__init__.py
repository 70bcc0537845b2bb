"""Losses of the strong baseline and of knowledge distillation.

Every loss computes in float32 whatever the autocast dtype (bf16/fp16 logits and features are
upcast): softmax, distances and their square roots are where half precision loses the most.
"""

from reid.losses.center import CenterLoss
from reid.losses.distillation import feature_distance, logit_kd
from reid.losses.id_loss import CrossEntropyLabelSmooth, cross_entropy_label_smooth
from reid.losses.triplet import TripletLoss, batch_hard_mining, pairwise_euclidean, triplet_loss

__all__ = [
    "CenterLoss",
    "CrossEntropyLabelSmooth",
    "TripletLoss",
    "batch_hard_mining",
    "cross_entropy_label_smooth",
    "feature_distance",
    "logit_kd",
    "pairwise_euclidean",
    "triplet_loss",
]
