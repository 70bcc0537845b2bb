"""Distillation terms: logit KD with a temperature, and per-sample feature distances.

``logit_kd(s, t, T)`` = ``KL(softmax(t/T) || softmax(s/T)) * T^2``, summed over classes and averaged
over the batch (``batchmean``, the mathematically correct KL; ``reduction="mean"`` would also divide by
the class count). The ``T^2`` keeps the gradient's size independent of ``T`` (Hinton et al.), so the
same weight works for T = 4 and T = 16. ``symmetric=True`` is the *average* of both directions,
``(KL(t||s) + KL(s||t)) / 2``, which puts it on the same scale as the one-directional loss (FastReID
found the symmetric form to work best for ReID, with T = 16).

``feature_distance(s, t, kind, reduction)``: with ``reduction="sample_mean"`` (the default) a distance
per sample, then the batch mean, so the loss does not grow with the batch size: ``l2`` = Euclidean norm
of ``s - t``; ``mse`` = mean squared difference over the dimensions; ``cosine`` = ``1 - cos(s, t)``.
``reduction="batch_norm"`` is the replaced distillation code's scale, ``torch.dist(s, t)``: the L2 norm
of ``s - t`` over the whole ``[B, D]`` tensor, ``sqrt(sum_i d_i^2)`` with ``d_i`` the per-sample ``l2``
distance, which grows like ``sqrt(B)``; it is defined for ``l2`` only. It exists so that a coefficient
taken from that code (0.03) means what it meant there; ``docs/DISTILLATION.md`` gives the mapping.

Neither function detaches the teacher: the caller decides (an offline teacher already runs without
gradient; a self-distillation teacher head is detached by its caller). Both compute in float32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from reid.errors import ReidError

FeatureDistance = Literal["l2", "mse", "cosine"]
FeatureReduction = Literal["sample_mean", "batch_norm"]


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per row, from log-probabilities (stable: no log of a rounded-to-zero probability)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def logit_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float, symmetric: bool = False) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2``, batch mean; see the module docstring."""
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ReidError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                        f"{tuple(teacher_logits.shape)} must both be [B, C]")
    if temperature <= 0:
        raise ReidError(f"the distillation temperature must be > 0, got {temperature}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = _kl_rows(log_t, log_s)
    if symmetric:
        kl = 0.5 * (kl + _kl_rows(log_s, log_t))
    return kl.mean() * (temperature * temperature)


def feature_distance(
    student: Tensor, teacher: Tensor, kind: FeatureDistance = "l2", reduction: FeatureReduction = "sample_mean"
) -> Tensor:
    """Distance of ``[B, D]`` features: per-sample batch mean or whole-batch L2 norm (module docstring)."""
    if student.shape != teacher.shape or student.dim() != 2:
        raise ReidError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
                        "must both be [B, D] (project one onto the other first)")
    s, t = student.float(), teacher.float()
    if reduction == "batch_norm":
        if kind != "l2":
            raise ReidError(f"kd.feature_reduction batch_norm (torch.dist over the batch) is defined for "
                            f"kd.feature_distance l2 only, got {kind!r}; use sample_mean or l2")
        return torch.linalg.vector_norm(s - t, ord=2)
    if reduction != "sample_mean":
        raise ReidError(f"unknown feature reduction {reduction!r}; use sample_mean or batch_norm")
    if kind == "l2":
        per_sample = torch.linalg.vector_norm(s - t, ord=2, dim=1)
    elif kind == "mse":
        per_sample = (s - t).pow(2).mean(dim=1)
    elif kind == "cosine":
        per_sample = 1.0 - F.cosine_similarity(s, t, dim=1)
    else:
        raise ReidError(f"unknown feature distance {kind!r}; use l2, mse or cosine")
    return per_sample.mean()
