"""The Market-1501 retrieval protocol (mAP, CMC, mINP), exact and vectorised, in chunks of queries.

Protocol, as the reference evaluators apply it:

* For each query, gallery images with the same identity **and** the same camera are *junk*: they are
  removed from that query's ranking (``cross_camera=True``). With ``cross_camera=False`` nothing is
  removed and same-camera images of the identity count as matches (single-camera datasets).
* Distractors (pid 0) stay in the gallery as negatives; pid -1 images were dropped when the dataset
  was read, so they never reach this module.
* A query with no remaining match is *skipped*: it does not count in any average, and the number of
  skipped queries is reported. If every query is skipped, :class:`~reid.errors.EvaluationError` says
  why and how to switch.
* ``ap_variant="standard"``: non-interpolated AP, the mean over the relevant items of the precision at
  each relevant position (the number every published Python evaluator reports).
  ``ap_variant="trapezoidal"``: the official MATLAB/"Oxford" code. Each relevant hit moves recall up
  by ``1/R`` and contributes that step times the *average* of the precision just before the hit
  (``(i-1)/(r-1)``, taken as 1 at rank 1) and the precision at the hit (``i/r``), where ``i`` is the
  hit's number among the relevant items and ``r`` its rank. It is the trapezoid rule on the
  precision-recall curve and comes out 0.5-1.0 mAP lower on Market-1501.
* CMC at rank k: the fraction of valid queries with a match among their first k (non-junk) results.
  The curve is computed from each query's first-match rank, so a query left with fewer gallery items
  than ``max_rank`` simply keeps its last value (no ragged arrays).
* mINP (FastReID): per query ``R / rank of the hardest (last) relevant item``, averaged.

Ties: the ranking is a *stable* sort by distance, so equal distances keep gallery order (lower
gallery index first). The per-query-loop reference in ``benchmarks/bench_evaluation.py`` uses the
same rule (``np.argsort(kind="stable")``) and agrees to 1e-6.

How it is vectorised: junk items get an infinite distance before ranking, which moves them behind
every real item while keeping the others' relative order; the rank of every relevant item is then
its position in the ranked row plus one. Only the positions of relevant items (a few dozen per
query) are extracted, so AP, CMC and mINP for a whole chunk cost one ranking and a few gathers, and
memory is bounded by ``chunk_size x gallery``. The ranking itself avoids sorting whole rows where it
can: a ``topk`` prefilter keeps the nearest ``CANDIDATES`` items, which is exact for every row whose
hardest relevant item lies strictly inside them (see :func:`_relevant_positions`); other rows are
sorted in full.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from reid.errors import EvaluationError
from reid.evaluation.distance import DistanceProducer

APVariant = Literal["standard", "trapezoidal"]
AP_VARIANTS: tuple[str, ...] = ("standard", "trapezoidal")
ArrayLike = torch.Tensor | np.ndarray | Sequence[int]


@dataclass
class RankedLists:
    """The top of the ranking of a few queries, for pictures (junk already excluded).

    ``gallery_index`` is ``-1`` (and ``matches`` False) where a query has fewer non-junk gallery items
    than the list length.
    """

    query_index: np.ndarray
    gallery_index: np.ndarray
    matches: np.ndarray
    query_paths: list[str] | None = None
    gallery_paths: list[list[str | None]] | None = None


@dataclass
class EvalResult:
    """Metrics of one evaluation; fractions in [0, 1] (multiply by 100 for the usual percentages)."""

    mAP: float
    cmc: np.ndarray
    ranks: dict[int, float]
    mINP: float
    num_queries: int
    num_valid_queries: int
    num_skipped_queries: int
    ap_variant: str = "standard"
    cross_camera: bool = True
    rerank: bool = False
    distance: str | None = None
    # Per-query AP, NaN for skipped queries: for picking queries to show and for paired comparisons.
    ap_per_query: np.ndarray | None = field(default=None, repr=False)
    ranked_lists: RankedLists | None = field(default=None, repr=False)

    @property
    def max_rank(self) -> int:
        return int(len(self.cmc))

    def rank(self, k: int) -> float:
        """CMC at rank k (1-based)."""
        if k in self.ranks:
            return self.ranks[k]
        if 1 <= k <= len(self.cmc):
            return float(self.cmc[k - 1])
        raise KeyError(f"rank-{k} was not computed (ranks {sorted(self.ranks)}, max_rank {len(self.cmc)})")

    def to_dict(self, include_cmc: bool = False) -> dict[str, Any]:
        """JSON-able summary: ``mAP``, ``rank1``, ``rank5``..., ``mINP``, query counts, variant flags."""
        out: dict[str, Any] = {"mAP": float(self.mAP)}
        for k in sorted(self.ranks):
            out[f"rank{k}"] = float(self.ranks[k])
        out.update({
            "mINP": float(self.mINP),
            "num_queries": int(self.num_queries),
            "num_valid_queries": int(self.num_valid_queries),
            "num_skipped_queries": int(self.num_skipped_queries),
            "ap_variant": self.ap_variant,
            "cross_camera": bool(self.cross_camera),
            "rerank": bool(self.rerank),
        })
        if self.distance is not None:
            out["distance"] = self.distance
        if include_cmc:
            out["cmc"] = [float(v) for v in self.cmc]
        return out

    def summary(self) -> str:
        """One line for logs: ``mAP 85.9 | R1 94.5 | R5 ... | mINP 59.4 (3368/3368 queries)``."""
        parts = [f"mAP {100 * self.mAP:.1f}"] + [f"R{k} {100 * v:.1f}" for k, v in sorted(self.ranks.items())]
        parts.append(f"mINP {100 * self.mINP:.1f}")
        extra = f" ({self.num_valid_queries}/{self.num_queries} queries, AP {self.ap_variant}"
        extra += ", re-ranked)" if self.rerank else ")"
        return " | ".join(parts) + extra

    def with_flags(self, **changes: Any) -> "EvalResult":
        return dataclasses.replace(self, **changes)


@dataclass
class _QueryStats:
    """Per-query results of one chunk (float64/int64 numpy, on the CPU)."""

    ap: np.ndarray
    inp: np.ndarray
    first_rank: np.ndarray  # 1-based rank of the first match; 0 when there is none
    num_relevant: np.ndarray


def _as_labels(values: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    """Identity / camera labels as a 1-D int64 tensor on ``device``."""
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        raise ValueError(f"{name} must hold integers, got {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.int64)


def _accum_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps per-query precisions exact enough to match a float64 reference to 1e-9;
    # MPS has no float64, so it falls back to float32 (agreement ~1e-6).
    return torch.float32 if device.type == "mps" else torch.float64


def protocol_masks(
    qp: torch.Tensor, qc: torch.Tensor, gp: torch.Tensor, gc: torch.Tensor, cross_camera: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(relevant, junk)`` boolean ``[Q, G]`` masks: the protocol's definition in one place.

    relevant = same identity (and, with ``cross_camera``, another camera); junk = same identity and
    same camera when ``cross_camera`` (removed from the ranking), else nothing.
    """
    match = qp.unsqueeze(1) == gp.unsqueeze(0)
    if not cross_camera:
        return match, torch.zeros_like(match)
    junk = match & (qc.unsqueeze(1) == gc.unsqueeze(0))
    return match & ~junk, junk


def _mask_junk(
    dist: torch.Tensor, qp: torch.Tensor, qc: torch.Tensor, gp: torch.Tensor, gc: torch.Tensor, cross_camera: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (distances with junk at +inf, relevant mask) for a chunk of queries."""
    relevant, junk = protocol_masks(qp, qc, gp, gc, cross_camera)
    if not cross_camera:
        return dist, relevant
    return dist.masked_fill(junk, float("inf")), relevant


# Candidates kept by the top-k prefilter of :func:`_relevant_positions` (a module constant so that
# tests can shrink it and exercise both paths on small data).
CANDIDATES = 1024


def _full_sort_positions(masked: torch.Tensor, relevant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.sort(masked, dim=1, stable=True).indices
    return relevant.gather(1, order).nonzero(as_tuple=True)


def _relevant_positions(masked: torch.Tensor, relevant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, 0-based position) of every relevant item in the stable ranking, row-major.

    Exact, and faster than sorting whole rows: ``topk`` first selects the ``CANDIDATES`` nearest items
    of each row (a partial selection, several times cheaper than a sort on the CPU). When a row's
    hardest relevant item is strictly closer than its k-th candidate, every item ranked before any
    relevant one is among the candidates, so sorting the candidates by (distance, gallery index)
    gives the exact positions. Only the other rows (a poor model, a huge identity) are fully sorted.
    """
    n, g = masked.shape
    k = CANDIDATES
    if k >= g:
        return _full_sort_positions(masked, relevant)
    hardest = masked.masked_fill(~relevant, float("-inf")).amax(dim=1)
    values, cand = torch.topk(masked, k, dim=1, largest=False, sorted=False)
    fast = hardest < values.amax(dim=1)
    del values
    parts_rows, parts_pos = [], []
    fast_rows = fast.nonzero().squeeze(1)
    if fast_rows.numel():
        by_index = torch.sort(cand[fast_rows], dim=1).values  # candidates in gallery order ...
        dist = masked[fast_rows.unsqueeze(1), by_index]
        ranked = by_index.gather(1, torch.sort(dist, dim=1, stable=True).indices)  # ... then stably by distance
        r, p = relevant[fast_rows.unsqueeze(1), ranked].nonzero(as_tuple=True)
        parts_rows.append(fast_rows[r])
        parts_pos.append(p)
    slow_rows = (~fast).nonzero().squeeze(1)
    if slow_rows.numel():
        r, p = _full_sort_positions(masked[slow_rows], relevant[slow_rows])
        parts_rows.append(slow_rows[r])
        parts_pos.append(p)
    rows, pos = torch.cat(parts_rows), torch.cat(parts_pos)
    order = torch.argsort(rows * g + pos)  # back to row-major order
    return rows[order], pos[order]


def _chunk_stats(
    dist: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    gp: torch.Tensor,
    gc: torch.Tensor,
    cross_camera: bool,
    ap_variant: str,
) -> _QueryStats:
    """AP, INP, first-match rank and #relevant for each query of one chunk (see module docstring)."""
    if not bool(torch.isfinite(dist).all()):
        raise EvaluationError(
            "the distance matrix holds NaN or Inf values: the features are not finite "
            "(a diverged model or an fp16 overflow); check the checkpoint's training loss"
        )
    masked, relevant = _mask_junk(dist, qp, qc, gp, gc, cross_camera)
    num_rel = relevant.sum(dim=1)
    rows, pos = _relevant_positions(masked, relevant)
    del masked

    dtype = _accum_dtype(dist.device)
    n = dist.shape[0]
    rank = (pos + 1).to(dtype)  # junk sits at +inf behind every relevant item, so position = rank - 1
    offsets = torch.cumsum(num_rel, 0) - num_rel
    hit = (torch.arange(rows.numel(), device=dist.device) - offsets[rows] + 1).to(dtype)  # i-th relevant
    precision = hit / rank
    if ap_variant == "standard":
        contrib = precision
    else:  # trapezoidal: average of the precision before the hit and at it
        before = torch.where(rank > 1, (hit - 1) / (rank - 1).clamp(min=1), torch.ones_like(rank))
        contrib = 0.5 * (before + precision)
    ap_sum = torch.zeros(n, dtype=dtype, device=dist.device).index_add_(0, rows, contrib)

    num_rel_f = num_rel.to(dtype)
    valid = num_rel > 0
    nan = torch.full((n,), float("nan"), dtype=dtype, device=dist.device)
    ap = torch.where(valid, ap_sum / num_rel_f.clamp(min=1), nan)

    first = hit == 1
    first_rank = torch.zeros(n, dtype=torch.int64, device=dist.device)
    first_rank[rows[first]] = pos[first] + 1
    last = hit == num_rel_f[rows]
    last_rank = torch.ones(n, dtype=dtype, device=dist.device)
    last_rank[rows[last]] = rank[last]
    inp = torch.where(valid, num_rel_f / last_rank, nan)

    return _QueryStats(
        ap=ap.cpu().double().numpy(),
        inp=inp.cpu().double().numpy(),
        first_rank=first_rank.cpu().numpy(),
        num_relevant=num_rel.cpu().numpy(),
    )


def _no_valid_query_error(
    q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray, cross_camera: bool
) -> EvaluationError:
    """Explain why every query was filtered away, and what to do about it."""
    shared = np.intersect1d(q_pids, g_pids)
    cams = np.union1d(q_camids, g_camids)
    if shared.size == 0:
        return EvaluationError(
            f"no query identity appears in the gallery ({len(np.unique(q_pids))} query ids, "
            f"{len(np.unique(g_pids))} gallery ids, none shared), so no query can be evaluated: "
            "check that query and gallery come from the same test split"
        )
    # Only reachable with cross_camera=True: otherwise a shared identity always leaves a match.
    single = " (the data has a single camera)" if cams.size == 1 else ""
    return EvaluationError(
        f"all {len(q_pids)} queries were skipped: every gallery image of a query's identity was taken by "
        f"the query's own camera{single}, and the Market-1501 protocol removes same-identity same-camera "
        f"images (cameras seen: {', '.join(str(c) for c in cams[:10])}{'...' if cams.size > 10 else ''}). "
        "For single-camera or custom data, count same-camera matches with -o eval.cross_camera=false"
    )


def evaluate_distances(
    distances: torch.Tensor | np.ndarray | DistanceProducer,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    ap_variant: APVariant = "standard",
    cross_camera: bool = True,
    chunk_size: int = 512,
    ranks: Sequence[int] = (1, 5, 10, 20),
) -> EvalResult:
    """Apply the protocol to a ``[Q, G]`` distance matrix or a producer of its row slices.

    ``distances`` is either the full matrix (tensor or array; it is read a chunk at a time and never
    modified) or a function ``(start, stop) -> tensor [stop-start, G]``, so that distances can be
    computed lazily and memory stays at ``chunk_size x G``. Work runs on the distances' device.
    """
    if ap_variant not in AP_VARIANTS:
        raise ValueError(f"unknown ap_variant {ap_variant!r}; expected one of {', '.join(AP_VARIANTS)}")
    if max_rank < 1 or chunk_size < 1:
        raise ValueError("max_rank and chunk_size must be >= 1")
    if isinstance(distances, np.ndarray):
        distances = torch.from_numpy(distances)

    num_q = len(q_pids)
    num_g = len(g_pids)
    if num_q == 0 or num_g == 0:
        raise EvaluationError(f"nothing to evaluate: {num_q} query and {num_g} gallery images")
    if len(q_camids) != num_q or len(g_camids) != num_g:
        raise ValueError("pids and camids must have the same length on each side")

    if isinstance(distances, torch.Tensor):
        if tuple(distances.shape) != (num_q, num_g):
            raise ValueError(f"distance matrix has shape {tuple(distances.shape)}, expected ({num_q}, {num_g})")
        matrix = distances
        produce: DistanceProducer = lambda start, stop: matrix[start:stop]  # noqa: E731
        device = matrix.device
    else:
        produce = distances
        device = None

    stats: list[_QueryStats] = []
    labels: tuple[torch.Tensor, ...] | None = None
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        dist = produce(start, stop)
        if tuple(dist.shape) != (stop - start, num_g):
            raise ValueError(f"distance chunk [{start}:{stop}] has shape {tuple(dist.shape)}, expected ({stop - start}, {num_g})")
        if labels is None:
            device = dist.device
            labels = (_as_labels(q_pids, "q_pids", device), _as_labels(q_camids, "q_camids", device),
                      _as_labels(g_pids, "g_pids", device), _as_labels(g_camids, "g_camids", device))
        qp, qc, gp, gc = labels
        stats.append(_chunk_stats(dist, qp[start:stop], qc[start:stop], gp, gc, cross_camera, ap_variant))

    ap = np.concatenate([s.ap for s in stats])
    inp = np.concatenate([s.inp for s in stats])
    first_rank = np.concatenate([s.first_rank for s in stats])
    valid = first_rank > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise _no_valid_query_error(np.asarray(_as_labels(q_pids, "q_pids", torch.device("cpu"))),
                                    np.asarray(_as_labels(g_pids, "g_pids", torch.device("cpu"))),
                                    np.asarray(_as_labels(q_camids, "q_camids", torch.device("cpu"))),
                                    np.asarray(_as_labels(g_camids, "g_camids", torch.device("cpu"))),
                                    cross_camera)

    fr = first_rank[valid]
    # Fraction of valid queries whose first match is within rank k; constant beyond the last rank,
    # which is exactly "pad with the last value" for short rankings.
    counts = np.bincount(np.minimum(fr, max_rank + 1), minlength=max_rank + 2)[1 : max_rank + 1]
    cmc = np.cumsum(counts) / num_valid
    rank_values = {int(k): float((fr <= k).mean()) for k in ranks}
    return EvalResult(
        mAP=float(ap[valid].mean()),
        cmc=cmc.astype(np.float64),
        ranks=rank_values,
        mINP=float(inp[valid].mean()),
        num_queries=num_q,
        num_valid_queries=num_valid,
        num_skipped_queries=num_q - num_valid,
        ap_variant=ap_variant,
        cross_camera=cross_camera,
        ap_per_query=ap,
    )


def make_distance_producer(qf: torch.Tensor, gf: torch.Tensor, eval_cfg: Any) -> DistanceProducer:
    """The distance rows the protocol ranks: plain distances, or k-reciprocal re-ranked ones.

    ``eval_cfg`` is a :class:`reid.config.EvalConfig` (``distance``, ``normalize``, ``rerank*``).
    """
    from reid.evaluation.distance import distance_producer

    if not eval_cfg.rerank:
        return distance_producer(qf, gf, eval_cfg.distance, eval_cfg.normalize)
    from reid.evaluation.reranking import KReciprocalReranker

    reranker = KReciprocalReranker(
        qf, gf, k1=eval_cfg.rerank_k1, k2=eval_cfg.rerank_k2, lambda_value=eval_cfg.rerank_lambda,
        metric=eval_cfg.distance, normalize=eval_cfg.normalize, max_memory_gb=eval_cfg.rerank_max_memory_gb,
        chunk_size=eval_cfg.chunk_size,
    )
    return reranker.distances


def evaluate_features(
    qf: torch.Tensor,
    gf: torch.Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    eval_cfg: Any,
) -> EvalResult:
    """Distances (optionally re-ranked) a chunk of queries at a time, then the protocol.

    Never holds more than ``eval_cfg.chunk_size x gallery`` distances, so MSMT17-size data (12k x 82k)
    evaluates in bounded memory. ``eval_cfg`` is a :class:`reid.config.EvalConfig`.
    """
    produce = make_distance_producer(qf, gf, eval_cfg)
    result = evaluate_distances(
        produce, q_pids, g_pids, q_camids, g_camids,
        max_rank=eval_cfg.max_rank, ap_variant=eval_cfg.ap_variant, cross_camera=eval_cfg.cross_camera,
        chunk_size=eval_cfg.chunk_size, ranks=eval_cfg.ranks,
    )
    return result.with_flags(rerank=bool(eval_cfg.rerank), distance=eval_cfg.distance)


def ranked_lists(
    distances: torch.Tensor | np.ndarray | DistanceProducer,
    query_index: Sequence[int],
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    size: int = 10,
    cross_camera: bool = True,
) -> RankedLists:
    """The first ``size`` non-junk gallery items of the given queries, with their match flags.

    Uses the same junk rule and tie-break as :func:`evaluate_distances`, so the pictures show exactly
    the ranking that was scored.
    """
    if isinstance(distances, np.ndarray):
        distances = torch.from_numpy(distances)
    if isinstance(distances, torch.Tensor):
        matrix = distances
        produce: DistanceProducer = lambda start, stop: matrix[start:stop]  # noqa: E731
    else:
        produce = distances
    index = [int(i) for i in query_index]
    if not index:
        return RankedLists(np.zeros(0, np.int64), np.zeros((0, size), np.int64), np.zeros((0, size), bool))
    rows = torch.cat([produce(i, i + 1) for i in index])
    device = rows.device
    sel = torch.as_tensor(index, device=device)
    qp = _as_labels(q_pids, "q_pids", device)[sel]
    qc = _as_labels(q_camids, "q_camids", device)[sel]
    gp = _as_labels(g_pids, "g_pids", device)
    gc = _as_labels(g_camids, "g_camids", device)
    masked, relevant = _mask_junk(rows, qp, qc, gp, gc, cross_camera)
    k = min(size, rows.shape[1])
    order = torch.sort(masked, dim=1, stable=True).indices[:, :k]
    kept = torch.isfinite(masked.gather(1, order))
    flags = relevant.gather(1, order) & kept
    gallery_index = torch.where(kept, order, torch.full_like(order, -1))
    if k < size:  # gallery smaller than the list: pad
        pad = size - k
        gallery_index = torch.cat([gallery_index, gallery_index.new_full((len(index), pad), -1)], dim=1)
        flags = torch.cat([flags, flags.new_zeros((len(index), pad))], dim=1)
    return RankedLists(
        query_index=np.asarray(index, dtype=np.int64),
        gallery_index=gallery_index.cpu().numpy(),
        matches=flags.cpu().numpy(),
    )
