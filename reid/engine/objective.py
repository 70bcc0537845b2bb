"""The training objective: the model plus every loss the configuration switches on.

``objective(images, labels) -> (losses, outputs)``. Every entry of ``losses`` is already multiplied by
its weight and named, so the trainer only sums the dict and logs each term:

======================  ==========================================================  =====================
name                    what                                                        weight
======================  ==========================================================  =====================
``id``                  label-smoothed CE on the BN-neck logits                     ``loss.id_weight``
``triplet``             batch-hard triplet on ``global_feat`` (before the neck)      ``loss.triplet_weight``
``center``              centre loss on ``global_feat``                              ``loss.center_weight``
``sd_feature``          self-distillation feature loss (all student stages)         ``kd.feature_loss_coefficient``
``sd_head_id``          supervised loss of the self-distillation stage heads        ``kd.stage_head_id_weight``
``sd_logit``            stage-to-stage logit KD                                     ``kd.self_logit_weight``
``kd_logit``            offline teacher -> student logit KD                         ``kd.logit_weight``
``kd_feature``          offline teacher -> student feature distance                 ``kd.teacher_feature_weight``
======================  ==========================================================  =====================

A term whose weight is 0 is neither computed nor present, and the ``sd_*`` / ``kd_*`` terms exist only
with ``kd.self_distill`` / ``kd.teacher_checkpoint``: with distillation off the objective *is* the
strong baseline, to the last bit. Modules that only a disabled term would use are not built, so every
parameter of the objective gets a gradient (DistributedDataParallel refuses unused parameters).

What is saved: the model is saved by the trainer on its own (``checkpoint["model"]``);
:meth:`Objective.extra_state_dict` holds the rest of what trains (self-distillation heads, the KD
adapter, the centres). The offline teacher is deliberately *not* part of the module tree (a plain
attribute), so it is in no ``state_dict``, no optimiser and no DDP bucket; it follows
``objective.to(device)`` and stays in eval mode through ``objective.train()``.

Distributed runs: wrap the whole objective in DDP (so the heads are synchronised too); the
batch-hard triplet loss is the ``triplet`` attribute, which the trainer may replace with a wrapper
that mines over the global batch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from reid.config import Config
from reid.distill.self_distill import SelfDistillHeads
from reid.distill.teacher import FrozenTeacher, TeacherDistillation, load_teacher
from reid.errors import CheckpointError, ReidError
from reid.losses.center import CenterLoss
from reid.losses.id_loss import CrossEntropyLabelSmooth
from reid.losses.triplet import TripletLoss

#: Submodules of the objective that are saved by :meth:`Objective.extra_state_dict`.
EXTRA_MODULES = ("center", "self_distill", "teacher_kd")


class Objective(nn.Module):
    """The model and its training losses; see the module docstring."""

    def __init__(self, config: Config, model: nn.Module, num_classes: int, teacher: FrozenTeacher | None = None) -> None:
        super().__init__()
        loss, kd = config.loss, config.kd
        self.model = model
        self.num_classes = int(num_classes)
        self.id_weight = float(loss.id_weight)
        self.triplet_weight = float(loss.triplet_weight)
        self.center_weight = float(loss.center_weight)
        embedding_dim = int(getattr(model, "embedding_dim"))

        self.id_loss: nn.Module | None = (
            CrossEntropyLabelSmooth(num_classes, epsilon=loss.label_smoothing) if self.id_weight > 0 else None
        )
        self.triplet: nn.Module | Callable[..., Tensor] | None = (
            TripletLoss(margin=loss.triplet_margin, soft_margin=loss.triplet_soft_margin) if self.triplet_weight > 0 else None
        )
        self.center: nn.Module | None = CenterLoss(num_classes, embedding_dim) if self.center_weight > 0 else None

        self.self_distill: SelfDistillHeads | None = None
        if kd.self_distill and (kd.feature_loss_coefficient > 0 or kd.stage_head_id_weight > 0 or kd.self_logit_weight > 0):
            backbone = getattr(model, "backbone", None)
            stage_channels = getattr(backbone, "stage_channels", None) or getattr(model, "stage_channels", None)
            if not stage_channels:
                raise ReidError("self-distillation needs the backbone's stage_channels (channels of layer1..layer4)")
            self.self_distill = SelfDistillHeads(
                stage_channels, kd.teacher_stage, kd.student_stages, embedding_dim, num_classes,
                feature_coefficient=kd.feature_loss_coefficient, distance=kd.feature_distance,
                feature_reduction=kd.feature_reduction,
                head_id_weight=kd.stage_head_id_weight, logit_weight=kd.self_logit_weight,
                temperature=kd.temperature, label_smoothing=loss.label_smoothing,
            )

        # Held in the instance dict, not registered: never saved, optimised or wrapped by DDP.
        if not (kd.logit_weight > 0 or kd.teacher_feature_weight > 0):
            teacher = None  # no offline term: the teacher would only cost a forward pass
        object.__setattr__(self, "_teacher", teacher)
        self.teacher_kd: TeacherDistillation | None = None
        if teacher is not None:
            if teacher.num_classes != self.num_classes:
                raise CheckpointError(
                    f"teacher {teacher.source or ''} was trained on {teacher.num_classes} classes but the student has "
                    f"{self.num_classes}; the teacher must be trained on the same training set as the student"
                )
            self.teacher_kd = TeacherDistillation(
                embedding_dim, teacher.feature_dim, logit_weight=kd.logit_weight, temperature=kd.temperature,
                symmetric=kd.symmetric, feature_weight=kd.teacher_feature_weight, distance=kd.feature_distance,
                feature_reduction=kd.feature_reduction,
            )

        if not (self.id_weight > 0 or self.triplet_weight > 0 or self.center_weight > 0
                or self.self_distill is not None or self.teacher_kd is not None):
            raise ReidError("every loss weight is 0: set loss.id_weight or loss.triplet_weight > 0")

    # -- the teacher, outside the module tree -------------------------------------------------------
    @property
    def teacher(self) -> FrozenTeacher | None:
        """The frozen offline teacher, or None."""
        return self.__dict__["_teacher"]

    def train(self, mode: bool = True) -> "Objective":
        """Switch the model and heads; the teacher stays in eval mode whatever ``mode`` is."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(False)
        return self

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Objective":
        # ``.to(device)``, ``.cuda()``, ``.half()`` also move the unregistered teacher.
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    # -- the losses ----------------------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], dict[str, Any]]:
        out = self.model(images)
        if not isinstance(out, Mapping):
            raise ReidError("the objective needs the model's train-mode outputs (a dict), but the model returned "
                            f"{type(out).__name__}; call objective.train() before a training step")
        losses: dict[str, Tensor] = {}
        if self.id_loss is not None:
            losses["id"] = self.id_weight * self.id_loss(out["logits"], labels)
        if self.triplet is not None:
            losses["triplet"] = self.triplet_weight * self.triplet(out["global_feat"], labels)
        if self.center is not None:
            losses["center"] = self.center_weight * self.center(out["global_feat"], labels)
        if self.self_distill is not None:
            losses.update(self.self_distill(out, labels))
        outputs: dict[str, Any] = dict(out)
        if self.teacher is not None and self.teacher_kd is not None:
            teacher_out = self.teacher(images)
            losses.update(self.teacher_kd(out, teacher_out))
            outputs["teacher_logits"] = teacher_out["logits"]
        return losses, outputs

    # -- what the trainer optimises and saves --------------------------------------------------------
    def center_parameters(self) -> Iterator[nn.Parameter]:
        """The centre-loss centres (their own SGD optimiser); empty when centre loss is off."""
        if self.center is not None:
            yield from self.center.parameters()

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Model, self-distillation heads and KD adapter; not the centres, never the teacher.

        Frozen parameters (``requires_grad=False``, e.g. the BN-neck bias) are included:
        :func:`reid.engine.optim.build_optimizer` filters them, and parameters frozen only for the
        first epochs must still be in the optimiser.
        """
        centers = {id(p) for p in self.center_parameters()}
        for p in self.parameters():
            if id(p) not in centers:
                yield p

    def extra_state_dict(self) -> dict[str, Tensor]:
        """State of what trains besides the model (heads, adapter, centres): ``checkpoint["objective"]``."""
        state: dict[str, Tensor] = {}
        for name in EXTRA_MODULES:
            module = getattr(self, name)
            if module is not None:
                for key, value in module.state_dict().items():
                    state[f"{name}.{key}"] = value.detach().cpu()
        return state

    def load_extra_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Inverse of :meth:`extra_state_dict`; refuses a state from a differently configured objective."""
        expected = set(self.extra_state_dict())
        got = set(state)
        if expected != got:
            missing, unexpected = sorted(expected - got), sorted(got - expected)
            raise CheckpointError(
                "the saved training heads do not match this configuration (was kd.* or loss.center_weight changed?): "
                f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            )
        for name in EXTRA_MODULES:
            module = getattr(self, name)
            if module is not None:
                prefix = f"{name}."
                sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                try:
                    module.load_state_dict(sub, strict=True)
                except RuntimeError as exc:
                    raise CheckpointError(f"the saved {name} state does not fit: {exc}") from None


def build_objective(config: Config, model: nn.Module, num_classes: int, device: torch.device | str) -> Objective:
    """The objective the configuration describes, on ``device`` (loads and freezes the teacher, if any)."""
    teacher = None
    kd = config.kd
    if kd.teacher_checkpoint is not None and (kd.logit_weight > 0 or kd.teacher_feature_weight > 0):
        teacher = load_teacher(config.kd.teacher_checkpoint, device, expected_num_classes=num_classes)
    objective = Objective(config, model, num_classes, teacher)
    return objective.to(device)
