"""The training objective: named, weighted terms; the baseline unchanged when distillation is off;
heads that train, a teacher that never does; and a tiny end-to-end run with an offline teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reid.config import validate
from reid.engine.objective import Objective, build_objective
from reid.errors import CheckpointError, ReidError

CLASSES, IN_DIM = 4, 12


class StubBackbone(nn.Module):
    stage_channels = {"layer1": 6, "layer2": 6, "layer3": 8, "layer4": 10}


class StubModel(nn.Module):
    """A chain of linear "stages" on a flat input with the ReIDModel output contract."""

    embedding_dim = 10

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = StubBackbone()
        chans = [IN_DIM, *StubBackbone.stage_channels.values()]
        self.stages = nn.ModuleDict({s: nn.Linear(chans[i], chans[i + 1])
                                     for i, s in enumerate(StubBackbone.stage_channels)})
        self.neck = nn.BatchNorm1d(self.embedding_dim)
        self.classifier = nn.Linear(self.embedding_dim, CLASSES, bias=False)

    def forward(self, x: torch.Tensor):
        h = x.flatten(1)
        stage_feats = {}
        for name, layer in self.stages.items():
            h = torch.tanh(layer(h))
            stage_feats[name] = h
        bn = self.neck(h)
        if not self.training:
            return bn
        return {"logits": self.classifier(bn), "global_feat": h, "bn_feat": bn, "stage_feats": stage_feats}


def config(**sections):
    # Centre loss (on in the recipe) off unless a test asks for it: these tests check the other terms.
    tree = {"model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False},
            "data": {"height": 64, "width": 32}, "loss": {"center_weight": 0.0}, "tracking": {"enabled": False}}
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    return validate(tree, "test")


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN_DIM, generator=g), torch.arange(n) % CLASSES


def baseline_by_hand(out: dict, labels: torch.Tensor, eps: float = 0.1, margin: float = 0.3) -> dict[str, torch.Tensor]:
    """Label-smoothed CE and batch-hard triplet (Euclidean, margin), written out."""
    logp = out["logits"].log_softmax(1)
    target = torch.full_like(logp, eps / CLASSES).scatter_(1, labels[:, None], 1 - eps + eps / CLASSES)
    ce = -(target * logp).sum(1).mean()
    f = out["global_feat"]
    dist = (f[:, None, :] - f[None, :, :]).pow(2).sum(-1).clamp_min(1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(1).values
    triplet = F.relu(hardest_pos - hardest_neg + margin).mean()
    return {"id": ce, "triplet": triplet}


# -- the baseline --------------------------------------------------------------------------------
def test_baseline_terms_match_hand_computed_values():
    model = StubModel().train()
    objective = build_objective(config(loss={"id_weight": 1.0, "triplet_weight": 1.0}), model, CLASSES, "cpu")
    x, y = batch()
    losses, outputs = objective(x, y)
    assert set(losses) == {"id", "triplet"}
    expected = baseline_by_hand(outputs, y)
    torch.testing.assert_close(losses["id"], expected["id"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["triplet"], expected["triplet"], rtol=1e-5, atol=1e-6)
    assert outputs["logits"].shape == (8, CLASSES)


def test_weights_multiply_and_zero_weights_drop_terms():
    x, y = batch()
    ref, _ = build_objective(config(), StubModel().train(), CLASSES, "cpu")(x, y)
    weighted, _ = build_objective(config(loss={"id_weight": 0.5, "triplet_weight": 2.0}), StubModel().train(),
                                  CLASSES, "cpu")(x, y)
    torch.testing.assert_close(weighted["id"], 0.5 * ref["id"])
    torch.testing.assert_close(weighted["triplet"], 2.0 * ref["triplet"])
    objective = build_objective(config(loss={"triplet_weight": 0.0}), StubModel().train(), CLASSES, "cpu")
    assert objective.triplet is None and set(objective(x, y)[0]) == {"id"}


def test_every_kd_weight_zero_is_exactly_the_baseline(tmp_path):
    x, y = batch()
    baseline, _ = build_objective(config(), StubModel().train(), CLASSES, "cpu")(x, y)
    # Self-distillation switched on with zero weights, and a teacher path with zero weights (never read).
    off = config(kd={"self_distill": True, "feature_loss_coefficient": 0.0, "stage_head_id_weight": 0.0,
                     "self_logit_weight": 0.0, "teacher_checkpoint": str(tmp_path / "absent.pt"),
                     "logit_weight": 0.0, "teacher_feature_weight": 0.0})
    objective = build_objective(off, StubModel().train(), CLASSES, "cpu")
    losses, _ = objective(x, y)
    assert set(losses) == set(baseline) == {"id", "triplet"}
    for name in losses:
        assert torch.equal(losses[name], baseline[name]), name
    assert objective.extra_state_dict() == {} and objective.teacher is None


def test_center_loss_term_and_parameters():
    objective = build_objective(config(loss={"center_weight": 5e-4}), StubModel().train(), CLASSES, "cpu")
    x, y = batch()
    losses, _ = objective(x, y)
    assert set(losses) == {"id", "triplet", "center"}
    centers = list(objective.center_parameters())
    assert centers and all(c.shape[0] == CLASSES for c in centers)
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert not trainable & {id(c) for c in centers}
    assert {id(p) for p in objective.model.parameters()} <= trainable
    assert any(k.startswith("center.") for k in objective.extra_state_dict())


def test_eval_mode_model_is_a_clear_error():
    objective = build_objective(config(), StubModel(), CLASSES, "cpu").eval()
    with pytest.raises(ReidError, match="train"):
        objective(*batch())


# -- self-distillation through the objective -----------------------------------------------------
def test_self_distillation_terms_and_gradients_with_stub_model():
    cfg = config(kd={"self_distill": True, "teacher_stage": "layer3", "student_stages": ["layer1", "layer2"],
                     "feature_loss_coefficient": 0.03, "self_logit_weight": 0.5})
    objective = build_objective(cfg, StubModel().train(), CLASSES, "cpu")
    x, y = batch()
    losses, _ = objective(x, y)
    assert set(losses) == {"id", "triplet", "sd_feature", "sd_head_id", "sd_logit"}
    losses["sd_feature"].backward()
    stages, heads = objective.model.stages, objective.self_distill.heads
    assert stages["layer2"].weight.grad is not None and stages["layer2"].weight.grad.abs().sum() > 0
    assert stages["layer1"].weight.grad.abs().sum() > 0
    assert stages["layer3"].weight.grad is None  # the teacher stage is only a target
    assert all(p.grad is None for p in heads["layer3"].parameters())
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert {id(p) for p in heads.parameters()} <= trainable


def test_extra_state_round_trip_and_mismatch():
    cfg = config(kd={"self_distill": True}, loss={"center_weight": 5e-4})
    a = build_objective(cfg, StubModel().train(), CLASSES, "cpu")
    state = a.extra_state_dict()
    assert state and not any(k.startswith("model.") for k in state)
    assert {k.split(".")[0] for k in state} == {"self_distill", "center"}
    b = build_objective(cfg, StubModel().train(), CLASSES, "cpu")
    with torch.no_grad():
        for p in b.self_distill.parameters():
            p.add_(1.0)
    b.load_extra_state_dict(state)
    for key, value in b.extra_state_dict().items():
        assert torch.equal(value, state[key]), key
    other = build_objective(config(kd={"self_distill": True}), StubModel().train(), CLASSES, "cpu")
    with pytest.raises(CheckpointError, match="unexpected"):
        other.load_extra_state_dict(state)


# -- the offline teacher, with real tiny ReID models ---------------------------------------------
def save_teacher(tmp_path: Path, num_classes: int, backbone: str = "resnet18") -> Path:
    from reid.checkpoint import save_checkpoint
    from reid.models.reid_model import build_model

    cfg = config(model={"backbone": backbone})
    torch.manual_seed(1)
    teacher = build_model(cfg, num_classes).train()
    with torch.no_grad():
        teacher(torch.randn(8, 3, 64, 32))  # non-trivial BatchNorm running statistics
    return save_checkpoint({"config": cfg.model_dump(mode="json"), "num_classes": num_classes,
                            "model": teacher.state_dict()}, tmp_path / "teacher.pt")


def test_teacher_with_another_class_count_is_refused(tmp_path):
    from reid.models.reid_model import build_model

    path = save_teacher(tmp_path, num_classes=6)
    cfg = config(kd={"teacher_checkpoint": str(path)})
    with pytest.raises(CheckpointError, match=r"6.*5|5.*6"):
        build_objective(cfg, build_model(cfg, 5), 5, "cpu")


def test_end_to_end_offline_kd_trains_the_student_and_never_the_teacher(tmp_path):
    from reid.engine.optim import build_optimizer
    from reid.models.reid_model import build_model

    num_classes = 4
    path = save_teacher(tmp_path, num_classes)
    cfg = config(kd={"teacher_checkpoint": str(path), "logit_weight": 1.0, "temperature": 4.0,
                     "teacher_feature_weight": 0.1, "self_distill": True, "teacher_stage": "layer3",
                     "student_stages": ["layer1", "layer2"]},
                 optim={"lr": 1e-3, "weight_decay": 0.0})
    torch.manual_seed(0)
    student = build_model(cfg, num_classes)
    objective = build_objective(cfg, student, num_classes, "cpu")
    teacher = objective.teacher
    assert teacher is not None
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_ids = {id(p) for p in teacher.parameters()}

    # The teacher is outside everything that is saved or optimised.
    assert not any("teacher." in k and "teacher_kd" not in k for k in objective.state_dict())
    assert not {id(p) for p in objective.parameters()} & teacher_ids
    assert not {id(p) for p in objective.trainable_parameters()} & teacher_ids
    assert all(k.split(".")[0] in {"self_distill", "teacher_kd", "center"} for k in objective.extra_state_dict())
    assert len(objective.state_dict()) == len(student.state_dict()) + len(objective.extra_state_dict())

    optimizer = build_optimizer(cfg.optim, objective.trainable_parameters(), "cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 64, 32, generator=g)
    labels = torch.arange(8) % num_classes
    totals = []
    for _ in range(6):
        objective.train()
        assert not teacher.training and not any(m.training for m in teacher.modules())
        optimizer.zero_grad(set_to_none=True)
        losses, outputs = objective(images, labels)
        assert set(losses) == {"id", "triplet", "sd_feature", "sd_head_id", "kd_logit", "kd_feature"}
        assert "teacher_logits" in outputs
        total = sum(losses.values())
        total.backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert all(p.grad is not None for p in objective.trainable_parameters() if p.requires_grad), \
            "every trainable parameter must get a gradient (DDP refuses unused ones)"
        optimizer.step()
        totals.append(float(total.detach()))
    assert totals[-1] < totals[0], totals
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), f"teacher {key} changed"
