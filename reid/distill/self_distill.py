"""Self-distillation: a deeper stage of the backbone teaches shallower ones, during training only.

Every stage involved (the teacher stage and each student stage) gets a small projection head on its
globally pooled feature (``stage_feats[stage]``, ``[B, C_s]``): ``Linear(C_s, D, bias=False)`` then
``BatchNorm1d(D)`` with a frozen zero bias, i.e. a miniature BN-neck that maps the stage into the
space of the final embedding (``D = embedding_dim``), plus a bias-free classifier on its output.

Loss terms (each already weighted; a term whose weight is 0 is neither computed nor returned, so
that no parameter is left without a gradient, which DDP would refuse):

* ``sd_feature`` = ``feature_coefficient * mean_s distance(head_s(x), teacher(x).detach())``,
  averaged over *all* student stages, with a per-sample distance averaged over the batch
  (:func:`reid.losses.distillation.feature_distance`), so its size does not depend on the batch size
  (``feature_reduction="sample_mean"``). With ``feature_reduction="batch_norm"`` it is the replaced
  code's scale instead: ``feature_coefficient * sum_s torch.dist(head_s(x), teacher(x).detach())``,
  a *sum* over student stages because that code added one such term per distilled stage (it reached
  only layer1; with ``student_stages: [layer1]`` the two coincide);
* ``sd_head_id`` = ``head_id_weight * mean_h CE_ls(classifier_h(head_h(x)), y)`` over every head
  (students and the teacher stage's own head): the supervised loss that makes the teacher head a
  meaningful, identity-discriminative projection rather than a fixed random one, and that gives the
  student classifiers something to learn for the logit term. A mean, not a sum, so adding stages
  does not multiply the ID pressure on the backbone;
* ``sd_logit`` = ``logit_weight * mean_s KL(softmax(t/T) || softmax(s/T)) * T^2`` from the teacher
  stage's logits (detached) to each student stage's logits.

The teacher side is always detached: the teacher head learns only from its own supervised loss.

Teacher stage ``layer4``: the final stage already has a trained projection, the model's BN-neck,
and a trained classifier. Its output ``bn_feat`` and ``logits`` are then the teacher (detached), and
no extra head is built; the model's own ID loss is what trains it.

What was fixed relative to the distillation code this replaces (see ``docs/DISTILLATION.md``): all student stages are
distilled (its loop skipped layer2), the teacher head is trained (it got no gradient), the distance
is per sample (``torch.dist`` over the batch grew with the batch size).

The heads exist only in the training objective: the model, its embedding and its inference cost are
unchanged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from reid.config import STAGES
from reid.errors import ReidError
from reid.losses.distillation import feature_distance, logit_kd

#: The final stage: its "head" is the model's own BN-neck and classifier.
FINAL_STAGE = "layer4"


class StageHead(nn.Module):
    """Pooled stage feature ``[B, C_s]`` -> ``[B, D]`` feature and, optionally, ``[B, num_classes]`` logits.

    A linear projection and a BatchNorm whose bias is frozen at zero, like the BN-neck of the final
    embedding, so every head's output lives on the same normalised scale as ``bn_feat`` and the
    feature distances between stages compare like with like.
    """

    def __init__(self, in_channels: int, dim: int, num_classes: int | None) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes else None
        nn.init.kaiming_normal_(self.proj.weight, mode="fan_out")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor | None]:
        feat = self.bn(self.proj(pooled))
        logits = self.classifier(feat) if self.classifier is not None else None
        return feat, logits


class SelfDistillHeads(nn.Module):
    """Training-only heads and loss terms of self-distillation (see the module docstring).

    ``forward(outputs, labels)`` takes the model's train-mode output dict (``stage_feats``, and
    ``bn_feat``/``logits`` when the teacher stage is ``layer4``) and returns the weighted terms.
    """

    def __init__(
        self,
        stage_channels: Mapping[str, int],
        teacher_stage: str,
        student_stages: Sequence[str],
        embedding_dim: int,
        num_classes: int,
        *,
        feature_coefficient: float = 0.03,
        distance: str = "l2",
        feature_reduction: str = "sample_mean",
        head_id_weight: float = 1.0,
        logit_weight: float = 0.0,
        temperature: float = 16.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        students = list(dict.fromkeys(student_stages))  # keep order, drop repeats
        if not students:
            raise ReidError("self-distillation needs at least one student stage (kd.student_stages)")
        for stage in [teacher_stage, *students]:
            if stage not in STAGES:
                raise ReidError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
        too_deep = [s for s in students if STAGES.index(s) >= STAGES.index(teacher_stage)]
        if too_deep:
            raise ReidError(f"student stages {too_deep} must be shallower than the teacher stage {teacher_stage!r}")
        own_teacher_head = teacher_stage != FINAL_STAGE
        needed = students + ([teacher_stage] if own_teacher_head else [])
        missing = [s for s in needed if s not in stage_channels]
        if missing:
            raise ReidError(f"the backbone reports no channel count for {missing} (stage_channels: {dict(stage_channels)})")
        if own_teacher_head and head_id_weight <= 0 and (feature_coefficient > 0 or logit_weight > 0):
            raise ReidError(
                f"kd.stage_head_id_weight is 0, so the {teacher_stage} teacher head would get no gradient and "
                "teach a fixed random projection; set kd.stage_head_id_weight > 0 (default 1.0) or use "
                "kd.teacher_stage=layer4 (the model's own BN-neck is the teacher)"
            )

        self.teacher_stage = teacher_stage
        self.student_stages = students
        self.feature_coefficient = float(feature_coefficient)
        self.distance = distance
        self.feature_reduction = feature_reduction
        self.head_id_weight = float(head_id_weight)
        self.logit_weight = float(logit_weight)
        self.temperature = float(temperature)
        self.label_smoothing = float(label_smoothing)

        # A head's classifier is built only when some term reads its logits; an unused parameter would
        # make DistributedDataParallel fail ("parameters that were not used in producing loss").
        want_logits = self.head_id_weight > 0 or self.logit_weight > 0
        classes = num_classes if want_logits else None
        # With every weight at 0 (an ablation point of a sweep) nothing is built and nothing is returned.
        if not self.active:
            needed = []
        self.heads = nn.ModuleDict({s: StageHead(int(stage_channels[s]), embedding_dim, classes) for s in needed})

    @property
    def active(self) -> bool:
        """True when at least one term has a positive weight."""
        return self.feature_coefficient > 0 or self.head_id_weight > 0 or self.logit_weight > 0

    @property
    def own_teacher_head(self) -> bool:
        """False when the teacher is the final stage (the model's BN-neck and classifier)."""
        return self.teacher_stage != FINAL_STAGE

    def stage_outputs(self, outputs: Mapping[str, object]) -> dict[str, tuple[Tensor, Tensor | None]]:
        """``{stage: (feature, logits)}`` for every involved stage; the teacher's is *not* detached here."""
        stage_feats = outputs.get("stage_feats")
        if not isinstance(stage_feats, Mapping):
            raise ReidError("self-distillation needs the model's train-mode output 'stage_feats' "
                            "(pooled layer1..layer4 features); is the model in eval mode?")
        result: dict[str, tuple[Tensor, Tensor | None]] = {}
        for stage, head in self.heads.items():
            if stage not in stage_feats:
                raise ReidError(f"the model's stage_feats has no {stage!r} (has {sorted(stage_feats)})")
            result[stage] = head(stage_feats[stage])
        if not self.own_teacher_head:
            result[self.teacher_stage] = (outputs["bn_feat"], outputs["logits"])  # type: ignore[assignment]
        return result

    def forward(self, outputs: Mapping[str, object], labels: Tensor) -> dict[str, Tensor]:
        if not self.active:
            return {}
        per_stage = self.stage_outputs(outputs)
        teacher_feat, teacher_logits = per_stage[self.teacher_stage]
        losses: dict[str, Tensor] = {}
        if self.feature_coefficient > 0:
            target = teacher_feat.detach()
            distances = torch.stack([feature_distance(per_stage[s][0], target, self.distance, self.feature_reduction)
                                     for s in self.student_stages])
            # batch_norm is the replaced code's scale: one coef * torch.dist term per stage, summed.
            combined = distances.sum() if self.feature_reduction == "batch_norm" else distances.mean()
            losses["sd_feature"] = self.feature_coefficient * combined
        if self.head_id_weight > 0:
            # Every head of ours (students and, when it is not layer4, the teacher's) learns the identities.
            terms = [nn.functional.cross_entropy(per_stage[s][1].float(), labels, label_smoothing=self.label_smoothing)
                     for s in self.heads]
            losses["sd_head_id"] = self.head_id_weight * torch.stack(terms).mean()
        if self.logit_weight > 0:
            assert teacher_logits is not None
            target_logits = teacher_logits.detach()
            terms = [logit_kd(per_stage[s][1], target_logits, self.temperature) for s in self.student_stages]
            losses["sd_logit"] = self.logit_weight * torch.stack(terms).mean()
        return losses
