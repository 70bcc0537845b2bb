"""Self-distillation heads and the offline-teacher terms, on tiny fixed tensors.

The model is replaced by a dict of leaf tensors shaped like its train-mode outputs, so every value is
checked against a formula written out here and gradients can be traced to each stage.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reid.distill.self_distill import SelfDistillHeads
from reid.distill.teacher import FrozenTeacher, TeacherDistillation, load_teacher, teacher_outputs
from reid.errors import CheckpointError, ReidError
from reid.losses.distillation import feature_distance, logit_kd

STAGE_CHANNELS = {"layer1": 4, "layer2": 6, "layer3": 8, "layer4": 10}
DIM, CLASSES = 10, 5


def fake_outputs(batch: int = 8, seed: int = 0) -> dict:
    """Train-mode model outputs as leaf tensors that require grad (so gradients can be inspected)."""
    g = torch.Generator().manual_seed(seed)
    stage_feats = {s: torch.randn(batch, c, generator=g).requires_grad_() for s, c in STAGE_CHANNELS.items()}
    bn = torch.randn(batch, DIM, generator=g).requires_grad_()
    logits = torch.randn(batch, CLASSES, generator=g).requires_grad_()
    return {"stage_feats": stage_feats, "bn_feat": bn, "global_feat": bn, "logits": logits}


def labels_for(batch: int) -> torch.Tensor:
    return torch.arange(batch) % CLASSES


def heads(teacher: str = "layer3", students=("layer1", "layer2"), **kw) -> SelfDistillHeads:
    torch.manual_seed(0)
    return SelfDistillHeads(STAGE_CHANNELS, teacher, list(students), DIM, CLASSES, **kw)


def head_by_hand(module, x: torch.Tensor) -> torch.Tensor:
    """Linear (no bias) then training-mode BatchNorm1d, written out."""
    z = x @ module.proj.weight.t()
    mean, var = z.mean(0), z.var(0, unbiased=False)
    return (z - mean) / torch.sqrt(var + module.bn.eps) * module.bn.weight + module.bn.bias


def grad_norm(t: torch.Tensor | None) -> float:
    return 0.0 if t is None else float(t.abs().sum())


# -- self-distillation ---------------------------------------------------------------------------
def test_feature_loss_matches_hand_computed_value():
    sd = heads(feature_coefficient=0.5, head_id_weight=1.0)
    out = fake_outputs()
    losses = sd(out, labels_for(8))
    feats = {s: head_by_hand(sd.heads[s], out["stage_feats"][s]) for s in ("layer1", "layer2", "layer3")}
    # l2: Euclidean distance of each sample to its teacher feature, averaged over samples, then over stages.
    per_stage = [(feats[s] - feats["layer3"]).norm(dim=1).mean() for s in ("layer1", "layer2")]
    expected = 0.5 * (per_stage[0] + per_stage[1]) / 2
    torch.testing.assert_close(losses["sd_feature"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["l2", "mse", "cosine"])
def test_feature_loss_uses_the_configured_distance(kind):
    sd = heads(feature_coefficient=1.0, distance=kind)
    out = fake_outputs()
    losses = sd(out, labels_for(8))
    f = {s: sd.heads[s](out["stage_feats"][s])[0] for s in ("layer1", "layer2", "layer3")}
    expected = (feature_distance(f["layer1"], f["layer3"], kind) + feature_distance(f["layer2"], f["layer3"], kind)) / 2
    torch.testing.assert_close(losses["sd_feature"], expected)


def test_every_student_stage_is_distilled_and_the_teacher_side_is_detached():
    sd = heads(feature_coefficient=0.03)
    out = fake_outputs()
    sd(out, labels_for(8))["sd_feature"].backward()
    # The replaced KD code's loop skipped layer2: here both student stages and both student heads get a gradient.
    for stage in ("layer1", "layer2"):
        assert grad_norm(out["stage_feats"][stage].grad) > 0, stage
        assert grad_norm(sd.heads[stage].proj.weight.grad) > 0, stage
    # The teacher stage and its head get nothing from the feature loss.
    assert out["stage_feats"]["layer3"].grad is None
    assert all(p.grad is None for p in sd.heads["layer3"].parameters())


def test_teacher_head_is_trained_by_its_own_supervised_loss():
    # The replaced KD code's teacher head never got a gradient: a fixed random projection.
    sd = heads()
    out = fake_outputs()
    losses = sd(out, labels_for(8))
    assert set(losses) == {"sd_feature", "sd_head_id"}
    losses["sd_head_id"].backward()
    assert grad_norm(sd.heads["layer3"].proj.weight.grad) > 0
    assert grad_norm(sd.heads["layer3"].classifier.weight.grad) > 0
    assert grad_norm(out["stage_feats"]["layer3"].grad) > 0


def test_head_id_loss_is_the_mean_label_smoothed_ce_of_every_head():
    sd = heads(head_id_weight=0.7, feature_coefficient=0.0, label_smoothing=0.1)
    out = fake_outputs()
    y = labels_for(8)
    losses = sd(out, y)
    assert set(losses) == {"sd_head_id"}
    terms = []
    for s in ("layer1", "layer2", "layer3"):
        logits = head_by_hand(sd.heads[s], out["stage_feats"][s]) @ sd.heads[s].classifier.weight.t()
        logp = logits.log_softmax(1)
        target = torch.full_like(logp, 0.1 / CLASSES).scatter_(1, y[:, None], 1 - 0.1 + 0.1 / CLASSES)
        terms.append(-(target * logp).sum(1).mean())
    torch.testing.assert_close(losses["sd_head_id"], 0.7 * sum(terms) / 3, rtol=1e-5, atol=1e-6)


def test_feature_loss_does_not_grow_with_the_batch_size():
    sd = heads(feature_coefficient=0.03)
    small = fake_outputs(8)
    # The same samples twice: BatchNorm statistics are unchanged, so a per-sample mean must be too
    # (the replaced KD code's torch.dist over the batch grew by sqrt(2)).
    double = {
        "stage_feats": {s: torch.cat([v, v]).detach() for s, v in small["stage_feats"].items()},
        "bn_feat": torch.cat([small["bn_feat"]] * 2).detach(),
        "logits": torch.cat([small["logits"]] * 2).detach(),
    }
    a = sd(small, labels_for(8))["sd_feature"]
    b = sd(double, torch.cat([labels_for(8)] * 2))["sd_feature"]
    torch.testing.assert_close(a, b)


# -- kd.feature_reduction: the seed's torch.dist scale (batch_norm) vs the per-sample mean ---------
def pythagorean_pair(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Student/teacher features whose per-sample l2 distances are exactly 5, 13, 5, 13, ...

    Rows differ by (3, 4, 0) or (5, 12, 0) (with sign flips), so every distance is an integer and the
    expected values below are written out by hand, not recomputed with the code under test.
    """
    teacher = torch.arange(batch * 3, dtype=torch.float32).reshape(batch, 3) / 7.0
    diffs = [[3.0, 4.0, 0.0], [-5.0, 0.0, 12.0]]
    delta = torch.tensor([diffs[i % 2] for i in range(batch)])
    return teacher + delta, teacher


@pytest.mark.parametrize("batch", [8, 64])
def test_batch_norm_reduction_is_the_seed_torch_dist_and_sample_mean_the_per_sample_mean(batch):
    s, t = pythagorean_pair(batch)
    half = batch // 2
    # batch_norm = sqrt(sum_i d_i^2) = sqrt(B/2 * (25 + 169)); B=8: sqrt(776) = 27.857, B=64: sqrt(6208) = 78.791.
    expected_batch_norm = math.sqrt(half * 25 + half * 169)
    # sample_mean = mean_i d_i = (5 + 13) / 2 = 9, whatever B.
    expected_sample_mean = 9.0
    got_bn = feature_distance(s, t, "l2", reduction="batch_norm")
    got_sm = feature_distance(s, t, "l2", reduction="sample_mean")
    assert got_bn.item() == pytest.approx(expected_batch_norm, rel=1e-5)
    assert got_sm.item() == pytest.approx(expected_sample_mean, rel=1e-5)
    assert got_bn.item() == pytest.approx(torch.dist(s, t).item(), rel=1e-5)  # literally the seed's call


@pytest.mark.parametrize("batch", [8, 64])
def test_equal_distances_map_batch_norm_at_c_to_sample_mean_at_c_sqrt_b(batch):
    # Every sample at distance 5: batch_norm = sqrt(B) * 5 (B=8: 14.142, B=64: 40), sample_mean = 5.
    t = torch.zeros(batch, 3)
    s = t + torch.tensor([3.0, 4.0, 0.0])
    c = 0.03
    seed_scale = c * feature_distance(s, t, "l2", reduction="batch_norm")
    ours_rescaled = (c * math.sqrt(batch)) * feature_distance(s, t, "l2", reduction="sample_mean")
    assert seed_scale.item() == pytest.approx(c * 5.0 * math.sqrt(batch), rel=1e-5)
    assert ours_rescaled.item() == pytest.approx(seed_scale.item(), rel=1e-5)


@pytest.mark.parametrize("batch", [8, 64])
@pytest.mark.parametrize("reduction", ["sample_mean", "batch_norm"])
def test_stage_heads_combine_stages_by_mean_or_seed_sum(batch, reduction):
    sd = heads(feature_coefficient=0.03, feature_reduction=reduction)
    out = fake_outputs(batch)
    losses = sd(out, labels_for(batch))
    f = {s: head_by_hand(sd.heads[s], out["stage_feats"][s]) for s in ("layer1", "layer2", "layer3")}
    if reduction == "batch_norm":
        # The seed's term per stage, coef * torch.dist(student, teacher), summed over layer1 and layer2.
        expected = 0.03 * (torch.dist(f["layer1"], f["layer3"]) + torch.dist(f["layer2"], f["layer3"]))
    else:
        # Per-sample distance, batch mean, then the mean over the two student stages.
        expected = 0.03 * ((f["layer1"] - f["layer3"]).norm(dim=1).mean()
                           + (f["layer2"] - f["layer3"]).norm(dim=1).mean()) / 2
    torch.testing.assert_close(losses["sd_feature"], expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_reduction_with_one_stage_is_exactly_the_seed_loss():
    sd = heads(students=("layer1",), feature_coefficient=0.03, feature_reduction="batch_norm")
    out = fake_outputs(16)
    f = {s: sd.heads[s](out["stage_feats"][s])[0] for s in ("layer1", "layer3")}
    got = sd(out, labels_for(16))["sd_feature"]
    torch.testing.assert_close(got, 0.03 * torch.dist(f["layer1"], f["layer3"].detach()))


def test_batch_norm_reduction_is_refused_for_other_distances():
    s, t = pythagorean_pair(8)
    with pytest.raises(ReidError, match="l2"):
        feature_distance(s, t, "cosine", reduction="batch_norm")
    from reid.config import ConfigError, validate

    with pytest.raises(ConfigError, match="feature_reduction"):
        validate({"kd": {"feature_distance": "mse", "feature_reduction": "batch_norm"}}, "test")


def test_offline_teacher_feature_term_follows_the_reduction():
    s, t = pythagorean_pair(8)
    term = TeacherDistillation(3, 3, logit_weight=0.0, feature_weight=0.5, feature_reduction="batch_norm")
    got = term({"logits": torch.zeros(8, CLASSES), "bn_feat": s}, {"logits": torch.zeros(8, CLASSES), "feat": t})
    assert got["kd_feature"].item() == pytest.approx(0.5 * math.sqrt(776.0), rel=1e-5)


def test_layer4_teacher_is_the_models_bn_neck_and_classifier():
    sd = heads(teacher="layer4", students=("layer1", "layer2", "layer3"), feature_coefficient=0.2, logit_weight=0.5,
               temperature=4.0)
    assert set(sd.heads) == {"layer1", "layer2", "layer3"}  # no extra head for layer4
    out = fake_outputs()
    losses = sd(out, labels_for(8))
    stages = ("layer1", "layer2", "layer3")
    f = {s: sd.heads[s](out["stage_feats"][s]) for s in stages}
    feat = sum(feature_distance(f[s][0], out["bn_feat"], "l2") for s in stages) / 3
    kd = sum(logit_kd(f[s][1], out["logits"], 4.0) for s in stages) / 3
    torch.testing.assert_close(losses["sd_feature"], 0.2 * feat)
    torch.testing.assert_close(losses["sd_logit"], 0.5 * kd)
    (losses["sd_feature"] + losses["sd_logit"]).backward()
    assert out["bn_feat"].grad is None and out["logits"].grad is None  # the teacher side is detached
    assert all(grad_norm(out["stage_feats"][s].grad) > 0 for s in stages)


def test_self_logit_term_matches_temperature_scaled_kl():
    sd = heads(feature_coefficient=0.0, logit_weight=2.0, temperature=3.0)
    out = fake_outputs()
    losses = sd(out, labels_for(8))
    logits = {s: sd.heads[s](out["stage_feats"][s])[1] for s in ("layer1", "layer2", "layer3")}

    def kl(s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
        p_t = F.softmax(t / T, 1)
        return (p_t * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1).mean() * T * T

    expected = 2.0 * (kl(logits["layer1"], logits["layer3"], 3.0) + kl(logits["layer2"], logits["layer3"], 3.0)) / 2
    torch.testing.assert_close(losses["sd_logit"], expected, rtol=1e-5, atol=1e-6)


def test_zero_weight_terms_are_not_computed_and_unused_modules_not_built():
    sd = heads(teacher="layer4", feature_coefficient=0.1, head_id_weight=0.0)
    assert all(h.classifier is None for h in sd.heads.values())  # nothing reads head logits
    assert set(sd(fake_outputs(), labels_for(8))) == {"sd_feature"}
    off = heads(feature_coefficient=0.0, head_id_weight=0.0, logit_weight=0.0)
    assert len(off.heads) == 0 and off(fake_outputs(), labels_for(8)) == {}


def test_an_untrained_teacher_head_is_refused():
    with pytest.raises(ReidError, match="stage_head_id_weight"):
        heads(head_id_weight=0.0, feature_coefficient=0.03)


def test_student_must_be_shallower_than_teacher():
    with pytest.raises(ReidError, match="shallower"):
        heads(teacher="layer2", students=("layer1", "layer3"))


def test_heads_read_train_mode_outputs_only():
    with pytest.raises(ReidError, match="stage_feats"):
        heads()({"logits": torch.zeros(2, CLASSES)}, labels_for(2))


# -- offline teacher terms -----------------------------------------------------------------------
def test_teacher_logit_term_and_symmetric_variant():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(6, CLASSES, generator=g, requires_grad=True)
    t = torch.randn(6, CLASSES, generator=g)
    student = {"logits": s, "bn_feat": torch.randn(6, DIM)}
    teacher = {"logits": t, "feat": torch.randn(6, DIM)}
    T = 16.0

    def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:  # KL(p || q)
        p = F.softmax(p_logits / T, 1)
        return (p * (F.log_softmax(p_logits / T, 1) - F.log_softmax(q_logits / T, 1))).sum(1).mean() * T * T

    one_way = TeacherDistillation(DIM, DIM, logit_weight=0.5, temperature=T)(student, teacher)
    assert set(one_way) == {"kd_logit"}
    torch.testing.assert_close(one_way["kd_logit"], 0.5 * kl(t, s), rtol=1e-5, atol=1e-6)
    both = TeacherDistillation(DIM, DIM, logit_weight=0.5, temperature=T, symmetric=True)(student, teacher)
    torch.testing.assert_close(both["kd_logit"], 0.5 * logit_kd(s, t, T, symmetric=True))
    assert both["kd_logit"] > one_way["kd_logit"]


def test_teacher_feature_term_uses_an_adapter_only_when_dims_differ():
    same = TeacherDistillation(DIM, DIM, logit_weight=0.0, feature_weight=0.3)
    assert isinstance(same.adapter, torch.nn.Identity)
    g = torch.Generator().manual_seed(2)
    student = {"logits": torch.randn(4, CLASSES, generator=g), "bn_feat": torch.randn(4, DIM, generator=g)}
    teacher = {"logits": torch.randn(4, CLASSES, generator=g), "feat": torch.randn(4, DIM, generator=g)}
    out = same(student, teacher)
    assert set(out) == {"kd_feature"}
    torch.testing.assert_close(out["kd_feature"], 0.3 * (student["bn_feat"] - teacher["feat"]).norm(dim=1).mean())

    wide = TeacherDistillation(DIM, 16, logit_weight=0.0, feature_weight=1.0)
    assert isinstance(wide.adapter, torch.nn.Linear) and wide.adapter.weight.shape == (16, DIM)
    teacher16 = {"logits": teacher["logits"], "feat": torch.randn(4, 16, generator=g)}
    wide(student, teacher16)["kd_feature"].backward()
    assert grad_norm(wide.adapter.weight.grad) > 0
    assert TeacherDistillation(DIM, 16, logit_weight=1.0).adapter is None  # feature term off: no adapter


# -- the frozen teacher with a real (tiny) ReID model --------------------------------------------
def _tiny_config(tmp_path: Path, backbone: str = "resnet18"):
    from reid.config import validate

    return validate({"model": {"backbone": backbone, "pretrained": "none", "channels_last": False},
                     "data": {"height": 64, "width": 32},
                     "train": {"device": "cpu", "output_dir": str(tmp_path / "run")},
                     "tracking": {"enabled": False}}, "test")


def _save_reid_checkpoint(tmp_path: Path, num_classes: int, backbone: str = "resnet18") -> tuple[Path, torch.nn.Module]:
    from reid.checkpoint import save_checkpoint
    from reid.models.reid_model import build_model

    config = _tiny_config(tmp_path, backbone)
    torch.manual_seed(3)
    model = build_model(config, num_classes)
    # One train-mode pass so the BatchNorm running statistics are not the initial 0/1.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 32))
    path = save_checkpoint({"config": config.model_dump(mode="json"), "num_classes": num_classes,
                            "model": model.state_dict()}, tmp_path / f"teacher_{num_classes}.pt")
    return path, model


def test_loaded_teacher_is_frozen_in_eval_mode_and_matches_the_model(tmp_path):
    path, original = _save_reid_checkpoint(tmp_path, num_classes=6)
    teacher = load_teacher(path, "cpu", expected_num_classes=6)
    assert isinstance(teacher, FrozenTeacher)
    assert teacher.num_classes == 6 and teacher.feature_dim == original.embedding_dim
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    images = torch.randn(4, 3, 64, 32)
    out = teacher(images)
    assert set(out) == {"logits", "feat"}
    assert out["logits"].shape == (4, 6) and not out["logits"].requires_grad
    original.eval()
    with torch.no_grad():
        embedding = original(images)
        torch.testing.assert_close(out["feat"], embedding)  # neck_feat "after": the embedding is bn_feat
        torch.testing.assert_close(out["logits"], original.classifier(embedding))
        torch.testing.assert_close(teacher_outputs(original, images)["logits"], out["logits"])
    assert not original.training  # teacher_outputs does not change the model's mode


def test_teacher_with_another_class_count_is_refused(tmp_path):
    path, _ = _save_reid_checkpoint(tmp_path, num_classes=7)
    with pytest.raises(CheckpointError) as info:
        load_teacher(path, "cpu", expected_num_classes=5)
    assert "7" in str(info.value) and "5" in str(info.value)
