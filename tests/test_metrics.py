"""The evaluation protocol on hand-made cases (expected values worked out in the comments), its edge
cases, chunking invariance, distances, and feature extraction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from reid.config import EvalConfig
from reid.errors import EvaluationError
from reid.evaluation.distance import iter_distance_chunks, pairwise_distance
from reid.evaluation.features import extract_features
from reid.evaluation import metrics
from reid.evaluation.metrics import evaluate_distances, evaluate_features, ranked_lists

# ---------------------------------------------------------------------------------------------------
# Hand case. Gallery (index: pid, cam):  g0 (1,1)  g1 (2,2)  g2 (1,2)  g3 (0,3) distractor  g4 (1,3)  g5 (3,1)
G_PIDS = np.array([1, 2, 1, 0, 1, 3])
G_CAMS = np.array([1, 2, 2, 3, 3, 1])
Q_PIDS = np.array([1, 2, 3])
Q_CAMS = np.array([1, 2, 2])
DIST = np.array([
    # q0 (pid 1, cam 1): g0 is junk (same pid, same cam). Ranking without junk: g1 g2 g3 g4 g5,
    #   relevant g2 at rank 2 and g4 at rank 4.
    #   standard AP = (1/2 + 2/4) / 2 = 0.5; first match rank 2; mINP = 2 relevant / rank 4 = 0.5
    #   trapezoidal AP = 1/2 * ((0/1 + 1/2)/2) + 1/2 * ((1/3 + 2/4)/2) = 1/8 + 5/24 = 1/3
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    # q1 (pid 2, cam 2): its only gallery image g1 has the same camera -> junk -> skipped.
    [0.9, 0.3, 0.1, 0.2, 0.4, 0.5],
    # q2 (pid 3, cam 2): g5 (pid 3, cam 1) is closest -> AP 1, rank 1, mINP 1 (both variants).
    [0.5, 0.4, 0.3, 0.2, 0.1, 0.05],
])


def test_hand_case_standard_ap() -> None:
    res = evaluate_distances(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=10, ranks=[1, 2, 5])
    # Two valid queries: mAP = (0.5 + 1) / 2; rank-1 = 1/2 (only q2); rank-2 = 2/2; mINP = (0.5 + 1) / 2
    assert res.mAP == pytest.approx(0.75)
    assert res.ranks == {1: pytest.approx(0.5), 2: pytest.approx(1.0), 5: pytest.approx(1.0)}
    assert res.mINP == pytest.approx(0.75)
    np.testing.assert_allclose(res.cmc, [0.5] + [1.0] * 9)
    assert (res.num_queries, res.num_valid_queries, res.num_skipped_queries) == (3, 2, 1)
    assert np.isnan(res.ap_per_query[1]) and res.ap_per_query[0] == pytest.approx(0.5)


def test_hand_case_trapezoidal_ap() -> None:
    res = evaluate_distances(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap_variant="trapezoidal")
    # (1/3 + 1) / 2 = 2/3; CMC and mINP do not depend on the AP variant.
    assert res.mAP == pytest.approx(2 / 3)
    assert res.ap_variant == "trapezoidal"
    assert res.rank(1) == pytest.approx(0.5) and res.mINP == pytest.approx(0.75)


@pytest.mark.parametrize("variant", ["standard", "trapezoidal"])
def test_both_ap_variants_are_reported_from_the_same_ranking(variant) -> None:
    # Hand values above: standard (0.5 + 1) / 2 = 0.75, trapezoidal (1/3 + 1) / 2 = 2/3, whichever is `mAP`.
    out = evaluate_distances(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap_variant=variant).to_dict()
    assert out["mAP_standard"] == pytest.approx(0.75) and out["mAP_trapezoidal"] == pytest.approx(2 / 3)
    assert out["mAP"] == out[f"mAP_{variant}"] and out["ap_variant"] == variant


def test_hand_case_without_cross_camera_filter() -> None:
    res = evaluate_distances(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, cross_camera=False, ranks=[1, 3])
    # q0: g0 now relevant; ranking g0 g1 g2 g3 g4 g5, relevant at 1, 3, 5:
    #     AP = (1/1 + 2/3 + 3/5) / 3 = 34/45, mINP = 3/5.
    # q1: ranking g2 g3 g1 ..., relevant g1 at rank 3: AP = 1/3, mINP = 1/3.
    # q2: AP 1, mINP 1.  mAP = (34/45 + 15/45 + 45/45) / 3 = 94/135.
    assert res.num_skipped_queries == 0
    assert res.mAP == pytest.approx(94 / 135)
    assert res.mINP == pytest.approx((0.6 + 1 / 3 + 1) / 3)
    assert res.ranks[1] == pytest.approx(2 / 3) and res.ranks[3] == pytest.approx(1.0)


def test_ties_keep_gallery_order() -> None:
    # Equal distances: the stable sort keeps lower gallery indices first.
    q_pids, q_cams, g_cams = [5], [1], [2, 3]
    neg_first = evaluate_distances(np.array([[0.2, 0.2]]), q_pids, [7, 5], q_cams, g_cams)
    pos_first = evaluate_distances(np.array([[0.2, 0.2]]), q_pids, [5, 7], q_cams, g_cams)
    assert neg_first.mAP == pytest.approx(0.5) and neg_first.rank(1) == 0.0
    assert pos_first.mAP == pytest.approx(1.0) and pos_first.rank(1) == 1.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_ranking_is_exact_with_ties(dtype, seed: int) -> None:
    # Quantised distances: many ties, between relevant items, between a relevant item and others, and
    # at the hardest match (the ranking's tie-break by gallery index is exercised on every path).
    rng = np.random.default_rng(seed)
    qp, gp = rng.integers(0, 5, 30), rng.integers(0, 5, 25)
    dist = (rng.integers(0, 3, (30, 25)) + 2 * (qp[:, None] != gp[None, :])).astype(dtype)
    qc, gc = rng.integers(1, 3, 30), rng.integers(1, 3, 25)
    res = evaluate_distances(dist, qp, gp, qc, gc, max_rank=10)
    m_ap, cmc, minp = _reference(dist, qp, gp, qc, gc, 10, "standard")
    assert res.mAP == pytest.approx(m_ap, abs=1e-12) and res.mINP == pytest.approx(minp, abs=1e-12)
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-12)


def test_integer_distance_matrix() -> None:
    # Hamming-like integer distances (issue 12, item 14). Ranking g3 (0) g1 (1) g2 (2) g0 (3); the
    # query's matches g2, g0 sit at ranks 3 and 4: AP (1/3 + 2/4) / 2 = 5/12, mINP 2/4, CMC 0 0 1 1.
    res = evaluate_distances(np.array([[3, 1, 2, 0]]), [1], [1, 2, 1, 2], [1], [2, 2, 2, 2], max_rank=4)
    assert res.mAP == pytest.approx(5 / 12) and res.mINP == pytest.approx(0.5)
    np.testing.assert_array_equal(res.cmc, [0.0, 0.0, 1.0, 1.0])
    rl = ranked_lists(np.array([[3, 1, 2, 0]]), [0], [1], [1, 2, 1, 2], [1], [2, 2, 2, 2], size=4)
    np.testing.assert_array_equal(rl.gallery_index[0], [3, 1, 2, 0])
    np.testing.assert_array_equal(rl.matches[0], [False, False, True, True])
    # An integer tie (g1, g2 both at 1) keeps gallery order, and a junk item (g0) is left out.
    tied = evaluate_distances(torch.tensor([[0, 1, 1, 5]]), [1], [1, 2, 1, 1], [1], [1, 2, 2, 3])
    assert tied.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    rl = ranked_lists(torch.tensor([[0, 1, 1, 5]]), [0], [1], [1, 2, 1, 1], [1], [1, 2, 2, 3], size=4)
    np.testing.assert_array_equal(rl.gallery_index[0], [1, 2, 3, -1])


def test_fewer_gallery_items_than_max_rank_pads_with_last_value() -> None:
    # 3 gallery images, one junk for the query -> 2 ranked items, max_rank 50: no ragged crash.
    # Ranking (junk g0 removed): g1 (neg), g2 (match) -> CMC 0 at rank 1, 1 from rank 2 on.
    res = evaluate_distances(np.array([[0.1, 0.2, 0.3]]), [1], [1, 2, 1], [1], [1, 2, 3], max_rank=50)
    assert res.cmc.shape == (50,)
    np.testing.assert_array_equal(res.cmc, [0.0] + [1.0] * 49)
    assert res.rank(20) == 1.0 and res.mAP == pytest.approx(0.5)


def test_every_query_filtered_raises_clear_error_and_switch_works() -> None:
    # A single-camera dataset: every match is same-camera, so the protocol removes them all.
    dist = np.random.default_rng(0).random((4, 8))
    q_pids, g_pids = [1, 2, 3, 4], [1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(EvaluationError) as err:
        evaluate_distances(dist, q_pids, g_pids, [1] * 4, [1] * 8)
    msg = str(err.value)
    assert "all 4 queries were skipped" in msg and "eval.cross_camera=false" in msg and "single camera" in msg
    res = evaluate_distances(dist, q_pids, g_pids, [1] * 4, [1] * 8, cross_camera=False)
    assert res.num_valid_queries == 4 and res.num_skipped_queries == 0


def test_no_shared_identity_error_says_so() -> None:
    with pytest.raises(EvaluationError, match="no query identity appears in the gallery"):
        evaluate_distances(np.zeros((2, 2)), [1, 2], [3, 4], [1, 2], [1, 2])


def test_all_skipped_message_separates_absent_ids_from_the_camera_rule() -> None:
    # Query 0 (id 1) has only a same-camera match; query 1's id 7 is not in the gallery at all.
    dist = np.zeros((2, 3))
    with pytest.raises(EvaluationError) as err:
        evaluate_distances(dist, [1, 7], [1, 2, 3], [1, 1], [1, 2, 2])
    msg = str(err.value)
    assert "all 2 queries were skipped" in msg
    assert "1 of them have an identity that appears nowhere in the gallery (ids 7" in msg
    assert "for the other 1 every gallery image of the query's identity was taken by the query's own camera" in msg
    # Only the camera rule at work: the message does not mention absent identities.
    with pytest.raises(EvaluationError) as err:
        evaluate_distances(dist, [1, 2], [1, 2, 3], [1, 2], [1, 2, 2])
    msg = str(err.value)
    assert "every gallery image of a query's identity was taken by the query's own camera" in msg
    assert "nowhere in the gallery" not in msg and "eval.cross_camera=false" in msg


def test_skipped_queries_are_counted_and_excluded() -> None:
    # Query 0 has a cross-camera match; queries 1 and 2 only same-camera ones; query 3's id is absent.
    g_pids, g_cams = [1, 2, 3, 9], [2, 1, 1, 1]
    dist = np.array([[0.5, 0.1, 0.2, 0.3]] * 4)
    res = evaluate_distances(dist, [1, 2, 3, 7], g_pids, [1, 1, 1, 1], g_cams)
    # Query 0: ranking g1 g2 g3 g0 -> match at rank 4: AP 1/4.
    assert (res.num_valid_queries, res.num_skipped_queries) == (1, 3)
    assert res.mAP == pytest.approx(0.25) and res.rank(5) == 1.0 and res.rank(1) == 0.0


def test_non_finite_distances_are_refused() -> None:
    dist = np.array([[0.1, np.nan]])
    with pytest.raises(EvaluationError, match="NaN or Inf"):
        evaluate_distances(dist, [1], [1, 2], [1], [2, 3])


def _reference(dist: np.ndarray, qp, gp, qc, gc, max_rank: int, variant: str):
    """Per-query loop: stable argsort, drop junk, AP / CMC / INP (written independently of the module)."""
    aps, cmcs, inps = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        hits = (gp[order] == qp[i])[keep]
        if not hits.any():
            continue
        cmc = np.cumsum(hits)[:max_rank] > 0
        cmcs.append(np.pad(cmc, (0, max_rank - len(cmc)), mode="edge"))
        pos = np.flatnonzero(hits) + 1.0
        idx = np.arange(1, len(pos) + 1)
        prec = idx / pos
        if variant == "standard":
            aps.append(prec.mean())
        else:
            before = np.where(pos > 1, (idx - 1) / np.maximum(pos - 1, 1), 1.0)
            aps.append(((before + prec) / 2).mean())
        inps.append(len(pos) / pos[-1])
    return np.mean(aps), np.mean(cmcs, axis=0), np.mean(inps)


@pytest.mark.parametrize("decimals", [None, 1])  # continuous distances / coarse ones with many ties
@pytest.mark.parametrize("variant", ["standard", "trapezoidal"])
def test_chunked_equals_one_shot_and_reference(variant: str, decimals: int | None) -> None:
    rng = np.random.default_rng(1)
    nq, ng = 97, 203
    qp, gp = rng.integers(0, 20, nq), rng.integers(0, 15, ng)  # ids 15-19: no match
    qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    # Relevant items tend to rank high (as with a trained model), but some queries have matches far
    # down the ranking and some none at all.
    dist = (rng.random((nq, ng)) + 0.7 * (qp[:, None] != gp[None, :])).astype(np.float32)
    if decimals is not None:
        dist = dist.round(decimals)
    results = [evaluate_distances(dist, qp, gp, qc, gc, max_rank=30, ap_variant=variant, chunk_size=c)
               for c in (1, 7, 64, 97, 500)]
    tensor = torch.from_numpy(dist)
    results.append(evaluate_distances(lambda a, b: tensor[a:b], qp, gp, qc, gc, max_rank=30, ap_variant=variant,
                                      chunk_size=13))
    first = results[0]
    for other in results[1:]:
        assert other.mAP == first.mAP and other.mINP == first.mINP
        np.testing.assert_array_equal(other.cmc, first.cmc)
        np.testing.assert_array_equal(other.ap_per_query, first.ap_per_query)
    m_ap, cmc, minp = _reference(dist, qp, gp, qc, gc, 30, variant)
    assert first.mAP == pytest.approx(m_ap, abs=1e-12)
    np.testing.assert_allclose(first.cmc, cmc, atol=1e-12)
    assert first.mINP == pytest.approx(minp, abs=1e-12)
    assert first.num_skipped_queries > 0  # the case exercises skipping too


def test_search_in_slices_equals_one_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    # The binary search runs over slices of the selected gallery items (bounded temporaries); tiny
    # slices, some cutting through a row and through tied items, must give the same numbers.
    rng = np.random.default_rng(3)
    qp, gp = rng.integers(0, 8, 40), rng.integers(0, 8, 60)
    qc, gc = rng.integers(1, 3, 40), rng.integers(1, 3, 60)
    dist = rng.integers(0, 4, (40, 60)).astype(np.float32)
    whole = evaluate_distances(dist, qp, gp, qc, gc, max_rank=20)
    monkeypatch.setattr(metrics, "_SEARCH_SLICE", 7)
    sliced = evaluate_distances(dist, qp, gp, qc, gc, max_rank=20)
    np.testing.assert_array_equal(sliced.ap_per_query, whole.ap_per_query)
    np.testing.assert_array_equal(sliced.cmc, whole.cmc)
    assert sliced.mINP == whole.mINP
    m_ap, _, _ = _reference(dist, qp, gp, qc, gc, 20, "standard")
    assert whole.mAP == pytest.approx(m_ap, abs=1e-12)


def test_to_dict_is_json_and_named_as_documented() -> None:
    res = evaluate_distances(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ranks=[1, 5, 10, 20]).with_flags(rerank=True)
    d = json.loads(json.dumps(res.to_dict()))
    for key in ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP", "num_queries", "num_valid_queries",
                "num_skipped_queries", "ap_variant", "rerank"):
        assert key in d
    assert d["rerank"] is True and "cmc" not in d
    assert len(res.to_dict(include_cmc=True)["cmc"]) == 50
    assert "mAP 75.0" in res.summary()


# ---------------------------------------------------------------------------------------------------
def test_distances_cosine_and_euclidean() -> None:
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(5, 8, generator=gen) * 3, torch.randn(7, 8, generator=gen) * 3
    cos = pairwise_distance(q, g, "cosine", normalize=False)  # cosine normalises regardless
    expected = 1 - torch.nn.functional.cosine_similarity(q.unsqueeze(1), g.unsqueeze(0), dim=2)
    torch.testing.assert_close(cos, expected, atol=1e-5, rtol=0)
    euc = pairwise_distance(q, g, "euclidean", normalize=False)
    torch.testing.assert_close(euc, torch.cdist(q, g) ** 2, atol=1e-3, rtol=1e-5)
    euc_n = pairwise_distance(q, g, "euclidean", normalize=True)
    torch.testing.assert_close(euc_n, 2 * cos, atol=1e-5, rtol=0)  # |a-b|^2 = 2 - 2 a.b on unit vectors
    parts = torch.cat([d for _, d in iter_distance_chunks(q, g, "euclidean", False, chunk_size=2)])
    torch.testing.assert_close(parts, euc)


def test_evaluate_features_chunks_and_config() -> None:
    gen = torch.Generator().manual_seed(2)
    pids = np.repeat(np.arange(10), 4)
    cams = np.tile(np.arange(4), 10)
    feats = torch.randn(10, 16, generator=gen)[torch.as_tensor(pids)] + 0.7 * torch.randn(40, 16, generator=gen)
    q, g = np.arange(0, 40, 4), np.setdiff1d(np.arange(40), np.arange(0, 40, 4))
    one = evaluate_features(feats[q], feats[g], pids[q], pids[g], cams[q], cams[g], EvalConfig(chunk_size=512))
    many = evaluate_features(feats[q], feats[g], pids[q], pids[g], cams[q], cams[g], EvalConfig(chunk_size=3))
    assert one.mAP == many.mAP and one.distance == "cosine" and not one.rerank
    full = evaluate_distances(pairwise_distance(feats[q], feats[g]), pids[q], pids[g], cams[q], cams[g])
    assert full.mAP == pytest.approx(one.mAP, abs=1e-12)


def test_ranked_lists_exclude_junk_and_pad() -> None:
    rl = ranked_lists(DIST, [0, 2], Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, size=7)
    # q0: junk g0 excluded -> g1 g2 g3 g4 g5, then padding.
    np.testing.assert_array_equal(rl.gallery_index[0], [1, 2, 3, 4, 5, -1, -1])
    np.testing.assert_array_equal(rl.matches[0], [False, True, False, True, False, False, False])
    # q2 (pid 3, cam 2): no junk; g5 first and a match.
    np.testing.assert_array_equal(rl.gallery_index[1][:6], [5, 4, 3, 2, 1, 0])
    assert rl.matches[1].tolist() == [True] + [False] * 6


# ---------------------------------------------------------------------------------------------------
class _TinyNet(nn.Module):
    """Not flip-invariant (a linear map of the raw pixels), with BatchNorm to observe eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x).flatten(1))


def test_extract_features_flip_sum_order_and_mode() -> None:
    torch.manual_seed(0)
    model = _TinyNet()
    model.bn.running_mean.fill_(0.3)
    model.train()
    images = torch.randn(7, 3, 4, 2)
    loader = [images[:3], (images[3:], torch.arange(4))]  # a tensor batch, then a tuple batch
    plain = extract_features(model, loader, "cpu", flip=False)
    flipped = extract_features(model, loader, torch.device("cpu"), flip=True)
    assert model.training, "the model's train/eval mode must be restored"
    model.eval()
    with torch.no_grad():
        expected = model(images)
        expected_flip = expected + model(torch.flip(images, dims=[3]))
    assert plain.dtype == torch.float32 and plain.shape == (7, 5)
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(flipped, expected_flip)
    assert not torch.allclose(flipped, 2 * expected)  # the flip really changed the input
    assert not plain.is_inference()


def test_extract_features_empty_loader_is_an_error() -> None:
    with pytest.raises(EvaluationError, match="no images"):
        extract_features(_TinyNet(), [], "cpu")


# ---------------------------------------------------------------------------------------------------
# float32 distances are ranked with one exact int64 key per item (row, distance bits, gallery index);
# float64 ones with the per-row binary search. Both must give the stable sort's ranking exactly.
@pytest.mark.parametrize("cross_camera", [True, False])
def test_keyed_ranking_equals_binary_search_and_reference(cross_camera: bool) -> None:
    rng = np.random.default_rng(11)
    nq, ng = 61, 157
    qp, gp = rng.integers(0, 12, nq), rng.integers(0, 10, ng)
    qc, gc = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    # Negative and positive values, exact ties (coarse grid), +0.0 and -0.0 (equal as floats: the
    # gallery index decides), and values a float32 holds exactly so the float64 copy ranks the same.
    dist = (rng.integers(-6, 7, (nq, ng)) / 4.0).astype(np.float32)
    dist[rng.random((nq, ng)) < 0.05] = -0.0
    keyed = evaluate_distances(dist, qp, gp, qc, gc, max_rank=40, cross_camera=cross_camera)
    searched = evaluate_distances(dist.astype(np.float64), qp, gp, qc, gc, max_rank=40, cross_camera=cross_camera)
    np.testing.assert_array_equal(keyed.ap_per_query, searched.ap_per_query)
    np.testing.assert_array_equal(keyed.cmc, searched.cmc)
    assert keyed.mINP == searched.mINP
    if cross_camera:
        m_ap, cmc, minp = _reference(dist, qp, gp, qc, gc, 40, "standard")
        assert keyed.mAP == pytest.approx(m_ap, abs=1e-12) and keyed.mINP == pytest.approx(minp, abs=1e-12)
        np.testing.assert_allclose(keyed.cmc, cmc, atol=1e-12)


def test_order_keys_sort_like_row_distance_gallery_index() -> None:
    values = torch.tensor([[3.0, -0.0, 0.0, -2.5, float("inf"), 1e-30, -1e-30, 0.0]])
    rows = torch.zeros(8, dtype=torch.int64)
    cols = torch.arange(8)
    keys = metrics._order_keys(values, rows, cols, col_bits=3)
    expected = sorted(range(8), key=lambda j: (float(values[0, j]), j))  # -0.0 == 0.0: index order
    assert torch.argsort(keys).tolist() == expected
    # A later row sorts after every key of an earlier one, whatever the distances.
    later = metrics._order_keys(torch.tensor([[-3e38]]).expand(2, 1).contiguous(), torch.tensor([1]),
                                torch.tensor([0]), col_bits=3)
    assert bool((later > keys).all())


def test_key_width_falls_back_to_binary_search_for_huge_galleries(monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics._key_bits(512, 15_913) == 14
    assert metrics._key_bits(512, 1 << 23) is None  # 9 + 32 + 23 bits do not fit an int64
    # With the keyed path switched off, float32 distances take the binary search: same numbers.
    rng = np.random.default_rng(5)
    qp, gp = rng.integers(0, 6, 30), rng.integers(0, 6, 80)
    qc, gc = rng.integers(1, 3, 30), rng.integers(1, 3, 80)
    dist = rng.integers(0, 5, (30, 80)).astype(np.float32)
    keyed = evaluate_distances(dist, qp, gp, qc, gc, max_rank=20)
    monkeypatch.setattr(metrics, "_key_bits", lambda rows, gallery: None)
    searched = evaluate_distances(dist, qp, gp, qc, gc, max_rank=20)
    np.testing.assert_array_equal(keyed.ap_per_query, searched.ap_per_query)
    np.testing.assert_array_equal(keyed.cmc, searched.cmc)
    assert keyed.mINP == searched.mINP
