"""Offline knowledge distillation: a trained, frozen ReID model teaches the student.

The teacher is loaded from a reid checkpoint with ``weights_only=True`` (through
:func:`reid.models.inference.load_inference_model`), every parameter is frozen, and it runs in eval
mode under ``torch.no_grad``, always: :class:`FrozenTeacher` ignores ``train(True)``, so a trainer that
calls ``objective.train()`` cannot put the teacher's BatchNorm into training mode (FastReID's known
mistake: its teacher's running statistics drift with the student's batches).

Why not ``torch.inference_mode``: the teacher's outputs are targets of losses whose backward saves
them (``KL(t || s)`` keeps ``softmax(t)``), and inference tensors cannot be saved for backward.

Loss terms (:class:`TeacherDistillation`, already weighted; 0-weight terms are not computed):

* ``kd_logit`` = ``logit_weight * KL(softmax(t/T) || softmax(s/T)) * T^2`` (batch mean), or the
  symmetric average of both directions with ``kd.symmetric`` (FastReID's choice, T = 16);
* ``kd_feature`` = ``feature_weight * distance(adapter(student bn_feat), teacher bn_feat)``, per sample
  then averaged (or the whole-batch ``torch.dist`` with ``kd.feature_reduction: batch_norm``); the adapter is a learned bias-free ``Linear`` when the two embedding sizes differ
  (e.g. ResNet18 512 -> ResNet50 2048) and the identity when they are equal. Training-only.

The teacher must have been trained on the same identities as the student: its classifier's class
count must match, or the logits cannot be compared (:class:`~reid.errors.CheckpointError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from reid.errors import CheckpointError, ReidError
from reid.losses.distillation import feature_distance, logit_kd


def teacher_outputs(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    """``{"logits": [B, C], "feat": [B, D]}`` of a ReID model without changing its mode.

    The eval-mode forward of :class:`~reid.models.reid_model.ReIDModel` returns the embedding only,
    so the full output is taken from :meth:`~reid.models.reid_model.ReIDModel.forward_all`, which runs
    in the model's current mode (eval: the BN-neck uses its running statistics). ``feat`` is
    ``bn_feat``, the feature the classifier sees.
    """
    forward_all = getattr(model, "forward_all", None)
    if not callable(forward_all):
        raise ReidError(f"a teacher must be a reid model with forward_all(); got {type(model).__name__}")
    out = forward_all(images)
    return {"logits": out["logits"], "feat": out["bn_feat"]}


def model_num_classes(model: nn.Module) -> int:
    """The number of identities a ReID model's classifier was trained on."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return int(classifier.out_features)
    raise CheckpointError(f"cannot tell how many classes the teacher ({type(model).__name__}) was trained on")


class FrozenTeacher(nn.Module):
    """A ReID model that is always in eval mode, never requires a gradient, and returns logits + feature.

    Hold it outside any module tree that is saved or optimised (the objective keeps it in a plain
    attribute), so it is never in a ``state_dict``, an optimiser or DDP's parameter list.
    """

    def __init__(self, model: nn.Module, source: str = "") -> None:
        super().__init__()
        self.model = model
        self.source = source
        self.num_classes = model_num_classes(model)
        self.feature_dim = int(getattr(model, "embedding_dim"))
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Stay in eval mode whatever is asked: running BatchNorm statistics must not drift."""
        return super().train(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        if self.training or self.model.training:  # someone bypassed train(); put it back
            super().train(False)
        with torch.no_grad():
            return teacher_outputs(self.model, images)


def load_teacher(path: Path | str, device: torch.device | str, expected_num_classes: int | None = None) -> FrozenTeacher:
    """Load a reid checkpoint as a frozen teacher on ``device``.

    ``expected_num_classes`` is the student's class count; a teacher trained on another number of
    identities is refused with both numbers in the message.
    """
    from reid.models.inference import load_inference_model

    path = Path(path)
    model, _config = load_inference_model(path, device)
    teacher = FrozenTeacher(model, source=str(path)).to(device)
    if expected_num_classes is not None and teacher.num_classes != expected_num_classes:
        raise CheckpointError(
            f"teacher {path} was trained on {teacher.num_classes} classes but the student has {expected_num_classes}; "
            "offline distillation compares logits class by class, so the teacher must be trained on the same "
            "training set (same manifest) as the student"
        )
    return teacher


class TeacherDistillation(nn.Module):
    """The offline KD terms and the training-only feature adapter (the teacher itself is *not* held here)."""

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        *,
        logit_weight: float = 1.0,
        temperature: float = 16.0,
        symmetric: bool = False,
        feature_weight: float = 0.0,
        distance: str = "l2",
        feature_reduction: str = "sample_mean",
    ) -> None:
        super().__init__()
        self.logit_weight = float(logit_weight)
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)
        self.feature_weight = float(feature_weight)
        self.distance = distance
        self.feature_reduction = feature_reduction
        # Built only when the feature term is on: an unused parameter would upset DDP.
        self.adapter: nn.Module | None = None
        if self.feature_weight > 0:
            self.adapter = nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim, bias=False)

    @property
    def active(self) -> bool:
        """True when at least one term has a positive weight (else the teacher need not even run)."""
        return self.logit_weight > 0 or self.feature_weight > 0

    def forward(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        if self.logit_weight > 0:
            s, t = student["logits"], teacher["logits"].detach()
            if s.shape != t.shape:
                raise ReidError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ in shape")
            losses["kd_logit"] = self.logit_weight * logit_kd(s, t, self.temperature, symmetric=self.symmetric)
        if self.feature_weight > 0:
            assert self.adapter is not None
            mapped = self.adapter(student["bn_feat"])
            losses["kd_feature"] = self.feature_weight * feature_distance(
                mapped, teacher["feat"].detach(), self.distance, self.feature_reduction)
        return losses
