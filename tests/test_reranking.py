"""k-reciprocal re-ranking against a direct, loop-based implementation of the paper's definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.config import EvalConfig
from reid.errors import EvaluationError
from reid.evaluation.distance import pairwise_distance
from reid.evaluation.metrics import evaluate_distances, evaluate_features
from reid.evaluation.reranking import KReciprocalReranker, estimate_rerank_memory, rerank_distances


def reference_rerank(qf: torch.Tensor, gf: torch.Tensor, k1: int, k2: int, lam: float, metric: str) -> np.ndarray:
    """Zhong et al. 2017, written from the definitions with sets and loops (no vectorisation).

    N(p,k): the k+1 nearest images (p included); R(p,k) = {g in N(p,k) : p in N(g,k)};
    R*(p) = R(p,k1) plus R(c,round(k1/2)) for each c in R(p,k1) with |R(c,k1/2) & R(p,k1)| > 2/3 |R(c,k1/2)|;
    V_p(g) = exp(-d(p,g)) on R*(p), normalised to sum 1; V_p <- mean of V over the k2 nearest images;
    d_J = 1 - sum(min(V_p, V_g)) / sum(max(V_p, V_g)); final = (1-lambda) d_J + lambda d.
    """
    feats = torch.cat([qf, gf])
    dist = pairwise_distance(feats, feats, metric, True).double().numpy()
    n, nq = dist.shape[0], qf.shape[0]
    d = dist / dist.max(axis=1, keepdims=True)
    order = np.argsort(dist, axis=1, kind="stable")

    def nearest(p: int, k: int) -> list[int]:
        return [int(x) for x in order[p, : k + 1]]

    def reciprocal(p: int, k: int) -> set[int]:
        return {g for g in nearest(p, k) if p in nearest(g, k)}

    V = np.zeros((n, n))
    for p in range(n):
        r = reciprocal(p, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, int(round(k1 / 2)))
            if len(rc & r) > 2.0 / 3.0 * len(rc):
                expanded |= rc
        for g in expanded:
            V[p, g] = np.exp(-d[p, g])
        V[p] /= V[p].sum()
    if k2 > 1:
        V = np.stack([V[order[p, :k2]].mean(axis=0) for p in range(n)])
    final = np.zeros((nq, n - nq))
    for i in range(nq):
        for j in range(n - nq):
            g = nq + j
            jac = 1.0 - np.minimum(V[i], V[g]).sum() / np.maximum(V[i], V[g]).sum()
            final[i, j] = (1.0 - lam) * jac + lam * d[i, g]
    return final


def clustered_features(num_ids: int, per_id: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids, dim, generator=gen)
    pids = np.repeat(np.arange(num_ids), per_id)
    feats = centers[torch.as_tensor(pids)] + noise * torch.randn(len(pids), dim, generator=gen)
    return feats, pids


@pytest.mark.parametrize("k1,k2,lam,metric", [(6, 3, 0.3, "cosine"), (5, 1, 0.5, "euclidean"), (8, 4, 0.0, "cosine")])
def test_matches_loop_reference(k1: int, k2: int, lam: float, metric: str) -> None:
    feats, _ = clustered_features(num_ids=12, per_id=5, dim=16, noise=0.8, seed=k1)
    qf, gf = feats[::5], torch.cat([feats[i::5] for i in range(1, 5)])
    ours = rerank_distances(qf, gf, k1=k1, k2=k2, lambda_value=lam, metric=metric).double().numpy()
    ref = reference_rerank(qf, gf, k1, k2, lam, metric)
    assert ours.shape == (12, 48)
    np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0)
    # The Jaccard term is not trivial on this data: some pairs overlap and some do not.
    jac = KReciprocalReranker(qf, gf, k1=k1, k2=k2).jaccard(0, 12)
    assert (jac < 0.99).any() and (jac > 0.999).any()


def test_fewer_images_than_k1_matches_reference() -> None:
    # 8 images with the default k1=20: every neighbour list is cut at N, nothing crashes.
    feats, _ = clustered_features(num_ids=4, per_id=2, dim=6, noise=0.5, seed=11)
    qf, gf = feats[:3], feats[3:]
    ours = rerank_distances(qf, gf).double().numpy()
    np.testing.assert_allclose(ours, reference_rerank(qf, gf, 20, 6, 0.3, "cosine"), atol=2e-5, rtol=0)


def test_producer_slices_equal_full_matrix() -> None:
    feats, _ = clustered_features(num_ids=10, per_id=6, dim=8, noise=0.5, seed=3)
    qf, gf = feats[:15], feats[15:]
    reranker = KReciprocalReranker(qf, gf, k1=6, k2=3)
    full = reranker.distances(0, 15)
    parts = torch.cat([reranker.distances(s, min(s + 4, 15)) for s in range(0, 15, 4)])
    torch.testing.assert_close(parts, full, rtol=0, atol=1e-6)


def test_lambda_one_is_normalised_original_distance() -> None:
    feats, _ = clustered_features(num_ids=5, per_id=4, dim=8, noise=0.5, seed=1)
    qf, gf = feats[:5], feats[5:]
    out = rerank_distances(qf, gf, k1=4, k2=2, lambda_value=1.0)
    allf = torch.cat([qf, gf])
    d = pairwise_distance(allf, allf, "cosine")
    expected = (d / d.max(dim=1, keepdim=True).values)[:5, 5:]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_reranking_through_evaluate_features_improves_clustered_case() -> None:
    # Tight identity clusters + a few hard gallery outliers: re-ranking should not hurt here, and the
    # result must be flagged as re-ranked.
    feats, pids = clustered_features(num_ids=20, per_id=6, dim=32, noise=1.2, seed=7)
    camids = np.tile(np.arange(6), 20)
    q_idx = np.arange(0, len(pids), 6)
    g_idx = np.setdiff1d(np.arange(len(pids)), q_idx)
    cfg = EvalConfig(rerank=True, rerank_k1=6, rerank_k2=3, chunk_size=7)
    res = evaluate_features(feats[q_idx], feats[g_idx], pids[q_idx], pids[g_idx], camids[q_idx], camids[g_idx], cfg)
    plain = evaluate_features(feats[q_idx], feats[g_idx], pids[q_idx], pids[g_idx], camids[q_idx], camids[g_idx],
                              EvalConfig(chunk_size=7))
    assert res.rerank and not plain.rerank
    assert res.to_dict()["rerank"] is True
    assert res.mAP >= plain.mAP - 0.02
    # Same thing through the full matrix.
    full = rerank_distances(feats[q_idx], feats[g_idx], k1=6, k2=3)
    direct = evaluate_distances(full, pids[q_idx], pids[g_idx], camids[q_idx], camids[g_idx])
    assert direct.mAP == pytest.approx(res.mAP, abs=1e-6)


def test_memory_refusal_names_estimate_limit_and_parameter() -> None:
    qf, gf = torch.randn(30, 8), torch.randn(50, 8)
    with pytest.raises(EvaluationError) as err:
        KReciprocalReranker(qf, gf, max_memory_gb=1e-6)
    msg = str(err.value)
    assert "eval.rerank_max_memory_gb" in msg and "GiB" in msg and "1e-06" in msg


def test_memory_estimate_scales_and_fits_market_by_default() -> None:
    market = estimate_rerank_memory(3368, 15913)
    msmt = estimate_rerank_memory(11659, 82161)
    assert 0 < market < msmt
    assert market < 8 * 1024**3  # the default limit allows Market-1501
    assert estimate_rerank_memory(3368, 15913, chunk_size=64) < market
