"""Losses against values computed independently, by hand, with plain Python math on tiny examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid.errors import ReidError
from reid.losses.center import CenterLoss
from reid.losses.distillation import feature_distance, logit_kd
from reid.losses.id_loss import CrossEntropyLabelSmooth, cross_entropy_label_smooth
from reid.losses.triplet import TripletLoss, batch_hard_mining, pairwise_euclidean, triplet_loss


def softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


# -- label-smoothed cross entropy ---------------------------------------------------------------------
LOGITS = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
LABELS = [2, 0]


def smoothed_ce_by_hand(logits: list[list[float]], labels: list[int], eps: float) -> float:
    total = 0.0
    for row, y in zip(logits, labels):
        p = softmax(row)
        c = len(row)
        q = [(1 - eps) * (1.0 if k == y else 0.0) + eps / c for k in range(c)]
        total += -sum(qk * math.log(pk) for qk, pk in zip(q, p))
    return total / len(logits)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_matches_the_hand_computed_value(eps):
    got = cross_entropy_label_smooth(torch.tensor(LOGITS), torch.tensor(LABELS), eps)
    assert got.item() == pytest.approx(smoothed_ce_by_hand(LOGITS, LABELS, eps), rel=1e-6)
    module = CrossEntropyLabelSmooth(num_classes=3, epsilon=eps)
    assert module(torch.tensor(LOGITS), torch.tensor(LABELS)).item() == pytest.approx(got.item(), rel=1e-6)


def test_label_smoothing_zero_is_plain_cross_entropy_and_smoothing_changes_it():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 5, generator=g) * 3, torch.randint(0, 5, (8,), generator=g)
    torch.testing.assert_close(cross_entropy_label_smooth(logits, labels, 0.0), F.cross_entropy(logits, labels))
    assert not torch.isclose(cross_entropy_label_smooth(logits, labels, 0.1), F.cross_entropy(logits, labels))


def test_label_smoothing_checks_the_class_count_and_epsilon():
    with pytest.raises(ReidError, match=r"\[B, 4\]"):
        CrossEntropyLabelSmooth(4)(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ReidError, match="epsilon"):
        CrossEntropyLabelSmooth(4, epsilon=1.0)


def test_label_smoothing_returns_float32_for_half_logits():
    logits = torch.tensor(LOGITS, dtype=torch.bfloat16)
    out = cross_entropy_label_smooth(logits, torch.tensor(LABELS), 0.1)
    assert out.dtype == torch.float32


# -- batch-hard triplet --------------------------------------------------------------------------------
# Two ids; anchor 0's farthest positive is sample 1 (distance 5), its closest negative sample 2 (1).
POINTS = [(0.0, 0.0), (3.0, 4.0), (1.0, 0.0), (10.0, 0.0), (0.0, 2.0)]
IDS = [0, 0, 1, 1, 1]


def hardest_by_hand() -> tuple[list[float], list[float]]:
    d_ap, d_an = [], []
    for i, (p, y) in enumerate(zip(POINTS, IDS)):
        pos = [math.dist(p, q) for q, z in zip(POINTS, IDS) if z == y]  # includes the anchor itself
        neg = [math.dist(p, q) for q, z in zip(POINTS, IDS) if z != y]
        d_ap.append(max(pos))
        d_an.append(min(neg))
    return d_ap, d_an


def test_pairwise_distances_are_euclidean():
    x = torch.tensor(POINTS)
    expected = torch.tensor([[math.dist(p, q) for q in POINTS] for p in POINTS])
    torch.testing.assert_close(pairwise_euclidean(x), expected, atol=1e-5, rtol=1e-5)


def test_batch_hard_mining_picks_the_hardest_positive_and_negative():
    d_ap, d_an, valid = batch_hard_mining(pairwise_euclidean(torch.tensor(POINTS)), torch.tensor(IDS))
    exp_ap, exp_an = hardest_by_hand()
    assert d_ap[0].item() == pytest.approx(5.0, abs=1e-5) and d_an[0].item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(d_ap, torch.tensor(exp_ap), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d_an, torch.tensor(exp_an), atol=1e-5, rtol=1e-5)
    assert valid.all()


def test_margin_triplet_matches_the_hand_computed_value_and_margin_ranking_semantics():
    exp_ap, exp_an = hardest_by_hand()
    expected = sum(max(0.0, a - n + 0.3) for a, n in zip(exp_ap, exp_an)) / len(POINTS)
    got = TripletLoss(margin=0.3)(torch.tensor(POINTS), torch.tensor(IDS))
    assert got.item() == pytest.approx(expected, abs=1e-5)
    ranking = torch.nn.MarginRankingLoss(margin=0.3)(torch.tensor(exp_an), torch.tensor(exp_ap), torch.ones(5))
    assert got.item() == pytest.approx(ranking.item(), abs=1e-5)


def test_soft_margin_triplet_matches_the_hand_computed_value():
    exp_ap, exp_an = hardest_by_hand()
    expected = sum(math.log1p(math.exp(a - n)) for a, n in zip(exp_ap, exp_an)) / len(POINTS)
    got = TripletLoss(soft_margin=True)(torch.tensor(POINTS), torch.tensor(IDS))
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_triplet_normalize_features_uses_unit_vectors():
    unit = [(x / math.hypot(x, y), y / math.hypot(x, y)) if (x, y) != (0.0, 0.0) else (0.0, 0.0) for x, y in POINTS]
    pts = torch.tensor(POINTS[1:])  # drop the zero vector, which has no direction
    ids = torch.tensor(IDS[1:])
    expected = triplet_loss(torch.tensor(unit[1:]), ids, margin=0.3)
    got = TripletLoss(margin=0.3, normalize_features=True)(pts, ids)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert got.item() != pytest.approx(TripletLoss(margin=0.3)(pts, ids).item(), abs=1e-3)


def test_triplet_gradient_is_finite_for_identical_features_and_single_identity_batches():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = triplet_loss(x, torch.tensor([0, 0, 1, 1]), margin=0.3)
    loss.backward()
    assert torch.isfinite(x.grad).all()

    y = torch.randn(4, 3, requires_grad=True)
    for soft in (False, True):
        lone = triplet_loss(y, torch.zeros(4, dtype=torch.long), soft_margin=soft)
        lone.backward()
        assert lone.item() == 0.0 and torch.isfinite(y.grad).all()


def test_triplet_under_bf16_autocast_keeps_float32_precision():
    # Large shared component, tiny differences: |x|^2 + |y|^2 - 2xy in bf16 would cancel to noise.
    g = torch.Generator().manual_seed(0)
    base = torch.full((1, 16), 8.0)
    x = base + 0.05 * torch.randn(8, 16, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    reference = triplet_loss(x, labels, margin=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = triplet_loss(x, labels, margin=0.3)
        dist = pairwise_euclidean(x)
    assert inside.dtype == torch.float32 and dist.dtype == torch.float32
    assert inside.item() == pytest.approx(reference.item(), abs=1e-5)


# -- center loss -------------------------------------------------------------------------------------------
def test_center_loss_is_the_sum_of_squared_distances_over_the_batch_size():
    torch.manual_seed(0)
    loss = CenterLoss(num_classes=3, feat_dim=2)
    centers = [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]
    with torch.no_grad():
        loss.centers.copy_(torch.tensor(centers))
    feats = [[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [3.0, -1.0]]
    labels = [0, 1, 1, 2]
    expected = sum(sum((f - c) ** 2 for f, c in zip(feat, centers[y])) for feat, y in zip(feats, labels)) / 4
    x = torch.tensor(feats, requires_grad=True)
    got = loss(x, torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=1e-6)

    got.backward()
    # dL/dc_j = -(2 / B) * sum_{i: y_i = j} (x_i - c_j); class 1 has two samples.
    for j in range(3):
        grad = [-(2 / 4) * sum(feat[d] - centers[j][d] for feat, y in zip(feats, labels) if y == j) for d in range(2)]
        assert loss.centers.grad[j].tolist() == pytest.approx(grad, rel=1e-6)
    assert [p for p in loss.parameters()] == [loss.centers]


def test_center_loss_checks_shapes():
    with pytest.raises(ReidError, match=r"\[B, 4\]"):
        CenterLoss(3, 4)(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))


# -- distillation --------------------------------------------------------------------------------------------
def kl_by_hand(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


@pytest.mark.parametrize("symmetric", [False, True])
def test_logit_kd_of_identical_logits_is_zero(symmetric):
    logits = torch.randn(4, 7)
    assert logit_kd(logits, logits.clone(), 4.0, symmetric=symmetric).item() == pytest.approx(0.0, abs=1e-6)


def test_logit_kd_two_class_hand_computed_with_temperature_squared():
    student = [[2.0, 0.0], [3.0, 0.0]]
    teacher = [[0.0, 2.0], [0.0, 0.0]]
    for T in (1.0, 2.0, 4.0):
        forward = sum(kl_by_hand(softmax([v / T for v in t]), softmax([v / T for v in s]))
                      for s, t in zip(student, teacher)) / 2
        backward = sum(kl_by_hand(softmax([v / T for v in s]), softmax([v / T for v in t]))
                       for s, t in zip(student, teacher)) / 2
        got = logit_kd(torch.tensor(student), torch.tensor(teacher), T)
        assert got.item() == pytest.approx(forward * T * T, rel=1e-5)
        sym = logit_kd(torch.tensor(student), torch.tensor(teacher), T, symmetric=True)
        assert sym.item() == pytest.approx(0.5 * (forward + backward) * T * T, rel=1e-5)
        if T == 1.0:
            # KL(t || s) differs from KL(s || t) here, so the test can tell the directions apart.
            assert forward != pytest.approx(backward, rel=1e-2)


def test_logit_kd_matches_torch_kl_div_batchmean():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 9, generator=g), torch.randn(5, 9, generator=g)
    T = 3.0
    ref = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True) * T * T
    torch.testing.assert_close(logit_kd(s, t, T), ref)


def test_logit_kd_refuses_mismatched_shapes_and_bad_temperature():
    with pytest.raises(ReidError, match="logits"):
        logit_kd(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ReidError, match="temperature"):
        logit_kd(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)


S_FEAT = [[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]]
T_FEAT = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0 + 1.0]]


@pytest.mark.parametrize("kind", ["l2", "mse", "cosine"])
def test_feature_distance_hand_computed(kind):
    per = []
    for s, t in zip(S_FEAT, T_FEAT):
        diff = [a - b for a, b in zip(s, t)]
        if kind == "l2":
            per.append(math.sqrt(sum(d * d for d in diff)))
        elif kind == "mse":
            per.append(sum(d * d for d in diff) / len(diff))
        else:
            dot = sum(a * b for a, b in zip(s, t))
            per.append(1 - dot / (math.sqrt(sum(a * a for a in s)) * math.sqrt(sum(b * b for b in t))))
    got = feature_distance(torch.tensor(S_FEAT), torch.tensor(T_FEAT), kind)
    assert got.item() == pytest.approx(sum(per) / len(per), rel=1e-6)


@pytest.mark.parametrize("kind", ["l2", "mse", "cosine"])
def test_feature_distance_does_not_depend_on_batch_size(kind):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    once = feature_distance(s, t, kind)
    twice = feature_distance(torch.cat([s, s]), torch.cat([t, t]), kind)
    torch.testing.assert_close(once, twice)


def test_feature_distance_leaves_detaching_to_the_caller():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    feature_distance(s, t, "l2").backward()
    assert s.grad is not None and t.grad is not None  # the teacher is not detached here
    with pytest.raises(ReidError, match="unknown feature distance"):
        feature_distance(s, t, "l1")  # type: ignore[arg-type]
    with pytest.raises(ReidError, match=r"\[B, D\]"):
        feature_distance(s, torch.randn(3, 5), "l2")


# -- exact fp32 triplet distances whatever the matmul precision ------------------------------------------
def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """``t`` (float32) rounded to TF32's 10-bit mantissa, what an Ampere tensor core multiplies."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def emulated_tf32(monkeypatch) -> None:
    """Every float32 matrix product called through torch's Python API multiplies TF32-rounded inputs,
    as CUDA does under ``torch.set_float32_matmul_precision("high")`` (CPUs have no TF32 to run)."""
    def rounded(fn, operand_slots):
        def wrapper(*args, **kwargs):
            args = list(args)
            for i in operand_slots:
                if i < len(args) and isinstance(args[i], torch.Tensor) and args[i].dtype == torch.float32:
                    args[i] = tf32_round(args[i])
            return fn(*args, **kwargs)
        return wrapper

    for name, slots in (("mm", (0, 1)), ("matmul", (0, 1)), ("bmm", (0, 1)), ("addmm", (1, 2)), ("baddbmm", (1, 2))):
        monkeypatch.setattr(torch, name, rounded(getattr(torch, name), slots))
        monkeypatch.setattr(torch.Tensor, name, rounded(getattr(torch.Tensor, name), slots))  # self is slot 0
    monkeypatch.setattr(torch.Tensor, "__matmul__", rounded(torch.Tensor.__matmul__, (0, 1)))
    monkeypatch.setattr(F, "linear", rounded(F.linear, (0, 1)))


def test_emulated_tf32_is_what_breaks_the_cancelling_formula(monkeypatch):
    """The emulation is real: |x|^2 + |x|^2 - 2 x.x through a TF32 product is far from 0 at norm ~25."""
    x = torch.randn(4, 2048, generator=torch.Generator().manual_seed(0)) * 0.55  # norms ~25, as before the BN-neck
    emulated_tf32(monkeypatch)
    sq = (x * x).sum(1)
    self_sq = torch.addmm(sq[:, None] + sq[None, :], x, x.t(), beta=1.0, alpha=-2.0).diagonal()
    assert self_sq.abs().max().item() > 1e-3


def test_triplet_distances_are_exact_fp32_under_high_matmul_precision(monkeypatch):
    """Identical features are at distance exactly 0, and every distance is the float64 one to fp32 rounding,
    with TF32 products (set_float32_matmul_precision("high") semantics, emulated)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2048, generator=gen) * 0.55
    x[1] = x[0]
    x[9] = x[8]
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7])
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        emulated_tf32(monkeypatch)
        dist = pairwise_euclidean(x)
        loss = triplet_loss(x, labels, margin=0.3)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert dist[0, 1].item() == 0.0 and dist[8, 9].item() == 0.0 and dist.diagonal().eq(0).all()
    d64 = torch.cdist(x.double(), x.double())
    assert ((dist.double() - d64).abs() / d64.clamp(min=1.0)).max().item() < 1e-5
    monkeypatch.undo()
    assert loss.item() == pytest.approx(triplet_loss(x.double(), labels, margin=0.3).item(), rel=1e-5)
