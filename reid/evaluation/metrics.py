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

How it is vectorised: no row is sorted. A relevant item's rank is one plus the number of relevant
items before it plus the number of other non-junk items before it, where "before" is the stable
sort's order (smaller distance, or equal distance and lower gallery index). Per chunk of queries, the
relevant and junk items come from the labels (the gallery sorted by identity once, two binary searches
per query), not from a ``[Q, G]`` comparison. Only the gallery items that can come before one of a
row's relevant items (distance <= the row's hardest match) are looked at; each learns how many relevant
items precede it, and a per-row histogram of those counts gives every relevant item's rank. For
float32 distances the count is one ``searchsorted`` in a flat sorted array of exact int64 keys
(row, distance bits, gallery index), so ties need no second pass (:func:`_relevant_positions_keyed`);
float64 distances, which do not fit such a key, use a per-row branchless binary search with the
gallery index as tie-break (:func:`_relevant_positions`). AP, CMC and mINP then cost a few gathers over
the relevant items, and memory is bounded by ``chunk_size x gallery``. The same torch code runs on the
CPU and on CUDA, with a few host synchronisations per chunk, none per query. Integer distances (e.g.
Hamming) are ranked as float64, half precision as float32.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from reid.data.checks import camera_advice
from reid.errors import EvaluationError
from reid.evaluation.distance import DistanceProducer

APVariant = Literal["standard", "trapezoidal"]
AP_VARIANTS: tuple[str, ...] = ("standard", "trapezoidal")
ArrayLike = torch.Tensor | np.ndarray | Sequence[int]
MAX_LISTED = 20  # skipped queries / images named in metrics.json and in the log (the counts are complete)


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
    # mAP under both AP variants (same ranking), written as mAP_standard / mAP_trapezoidal; None after
    # operations that only know one (e.g. averaging results).
    mAP_by_variant: dict[str, float] | None = None
    # Paths of the skipped queries (no valid match) and of test images left out as corrupt
    # (data.corrupt_images=skip), when the caller knows the paths; reported so they can be looked at.
    skipped_queries: list[str] | None = field(default=None, repr=False)
    skipped_images: list[str] | None = field(default=None, repr=False)

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
        for variant, value in (self.mAP_by_variant or {}).items():
            out[f"mAP_{variant}"] = float(value)
        if self.skipped_queries:
            out["skipped_queries"] = list(self.skipped_queries[:MAX_LISTED])
        if self.skipped_images:
            out["num_skipped_images"] = len(self.skipped_images)
            out["skipped_images"] = list(self.skipped_images[:MAX_LISTED])
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

    def skipped_report(self) -> str:
        """Lines naming the skipped queries and the corrupt test images left out ("" when none)."""
        lines = []
        for what, paths, total in (("skipped queries ({}, no valid gallery match)", self.skipped_queries,
                                    self.num_skipped_queries),
                                   ("corrupt test images left out ({}, data.corrupt_images=skip)", self.skipped_images,
                                    len(self.skipped_images or []))):
            if paths:
                more = f" ... and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
                lines.append(f"{what.format(total)}: {', '.join(paths[:MAX_LISTED])}{more}")
        return "\n".join(lines)

    def with_flags(self, **changes: Any) -> "EvalResult":
        return dataclasses.replace(self, **changes)


@dataclass
class _QueryStats:
    """Per-query results of one chunk (float64/int64 numpy, on the CPU)."""

    ap: np.ndarray
    ap_other: np.ndarray  # the other AP variant, from the same ranking (reported beside mAP)
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


def _as_float(dist: torch.Tensor) -> torch.Tensor:
    """Distances in a float dtype that ranks exactly like the input.

    Integer (e.g. Hamming) or boolean distances become float64, exact for integers up to 2**53; half
    precision becomes float32 (a superset). The ranking needs a float to hold ``inf`` for junk.
    """
    if not dist.is_floating_point():
        return dist.to(torch.float64)
    if dist.dtype in (torch.float16, torch.bfloat16):
        return dist.float()
    return dist


# Selected gallery items binary-searched at once by :func:`_relevant_positions` (bounds its temporaries).
_SEARCH_SLICE = 1 << 22


def _count_before(
    thresholds: torch.Tensor,
    num_rel: torch.Tensor,
    rows: torch.Tensor,
    values: torch.Tensor,
    gallery_index: torch.Tensor | None = None,
    threshold_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """For each (row, value): how many of the row's first ``num_rel[row]`` sorted thresholds precede it.

    A branchless binary search, one gather per halving step, so it runs the same on CPU and CUDA and
    on any float dtype. "Precede" is ``threshold < value``; with the gallery indices given it is the
    stable ranking's order: ``(distance, gallery index)`` compared lexicographically.
    """
    width = thresholds.shape[1]
    flat = thresholds.flatten()
    flat_index = threshold_index.flatten() if threshold_index is not None else None
    base = rows * width
    limit = num_rel[rows]
    count = torch.zeros_like(rows)
    step = 1 << (width - 1).bit_length()  # a power of two >= width: the steps can sum to any count
    while step:
        candidate = count + step
        at = base + (candidate - 1).clamp(max=width - 1)
        threshold = flat[at]
        before = threshold < values
        if gallery_index is not None:
            before |= (threshold == values) & (flat_index[at] < gallery_index)
        count = torch.where(before & (candidate <= limit), candidate, count)
        step >>= 1
    return count


@dataclass
class _Matches:
    """The gallery items of a chunk's queries' identities, from the labels alone (no ``[Q, G]`` mask).

    ``rel_rows``/``rel_cols``: the relevant items, row-major and in gallery order within a row;
    ``junk_rows``/``junk_cols``: the same-identity same-camera items the protocol removes (empty
    without ``cross_camera``); ``num_rel``: relevant items per row.
    """

    rel_rows: torch.Tensor
    rel_cols: torch.Tensor
    junk_rows: torch.Tensor
    junk_cols: torch.Tensor
    num_rel: torch.Tensor


@dataclass
class _GalleryIndex:
    """The gallery sorted by identity once per evaluation (stable: gallery order within an identity)."""

    order: torch.Tensor
    sorted_pids: torch.Tensor

    @classmethod
    def build(cls, gp: torch.Tensor) -> "_GalleryIndex":
        order = torch.argsort(gp, stable=True)
        return cls(order=order, sorted_pids=gp[order])

    def matches(self, qp: torch.Tensor, qc: torch.Tensor, gc: torch.Tensor, cross_camera: bool) -> _Matches:
        """Every (query row, gallery column) pair of equal identity, split into relevant and junk.

        Cost: two binary searches per query plus one entry per same-identity pair, instead of comparing
        every query with every gallery label.
        """
        start = torch.searchsorted(self.sorted_pids, qp)
        counts = torch.searchsorted(self.sorted_pids, qp, right=True) - start
        rows = torch.repeat_interleave(torch.arange(len(qp), device=qp.device), counts)
        within = torch.arange(rows.numel(), device=qp.device) - (torch.cumsum(counts, 0) - counts)[rows]
        cols = self.order[start[rows] + within]
        if cross_camera:
            junk = gc[cols] == qc[rows]
            rel_rows, rel_cols, junk_rows, junk_cols = rows[~junk], cols[~junk], rows[junk], cols[junk]
        else:
            rel_rows, rel_cols = rows, cols
            junk_rows = junk_cols = rows[:0]
        num_rel = torch.bincount(rel_rows, minlength=len(qp))
        return _Matches(rel_rows, rel_cols, junk_rows, junk_cols, num_rel)


def _order_keys(dist: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, col_bits: int) -> torch.Tensor:
    """One int64 per (row, col) item that sorts exactly like (row, distance, gallery index).

    A float32's bits read as an int32 order like the floats once the negative ones have their other
    31 bits flipped (``-0.0`` is made ``+0.0`` first, so the two tie as floats do). The row goes above
    the 32 distance bits and the gallery index below them, so equal distances keep gallery order: the
    stable ranking's order, with no tie left to resolve.
    """
    values = dist[rows, cols] + 0.0  # -0.0 + 0.0 == +0.0
    bits = values.view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)  # [0, 2**32), float order
    return (rows << (32 + col_bits)) | (bits << col_bits) | cols


def _key_bits(rows: int, gallery: int) -> int | None:
    """Bits for the gallery index in :func:`_order_keys`, or None when (row, distance, index) cannot
    share one int64 (galleries beyond about 2**22 items at 512 queries per chunk)."""
    col_bits = max(int(gallery - 1).bit_length(), 1)
    row_bits = max(int(rows - 1).bit_length(), 1)
    return col_bits if row_bits + 32 + col_bits <= 63 else None


def _relevant_positions_keyed(
    dist: torch.Tensor, matches: _Matches, col_bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_relevant_positions` for float32 distances, with one exact key per item instead of a
    per-row binary search with tie-breaks.

    Every item is keyed by (row, distance, gallery index) (:func:`_order_keys`), so one flat sort of the
    relevant items' keys holds every row's thresholds in ranking order, row after row, and one
    ``searchsorted`` per selected item gives how many relevant items of its row precede it. The
    selection (distance <= the row's hardest match) is taken on the raw distances: the relevant items
    in it count one in their own slot, which the position formula below takes back, and the junk items
    in it are counted separately and subtracted, so no ``[Q, G]`` copy with junk masked is made.
    """
    n = dist.shape[0]
    device = dist.device
    num_rel = matches.num_rel
    width = int(num_rel.max()) if n else 0
    if width == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    rel_keys, _ = torch.sort(_order_keys(dist, matches.rel_rows, matches.rel_cols, col_bits))
    row_start = torch.cumsum(num_rel, 0) - num_rel
    rel_dist = dist[matches.rel_rows, matches.rel_cols]
    hardest = torch.full((n,), float("-inf"), dtype=dist.dtype, device=device)
    hardest.scatter_reduce_(0, matches.rel_rows, rel_dist, reduce="amax")

    def bucket(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        keys = _order_keys(dist, rows, cols, col_bits)
        return rows * (width + 1) + (torch.searchsorted(rel_keys, keys) - row_start[rows])

    histogram = torch.zeros(n * (width + 1), dtype=torch.int64, device=device)
    selected_rows, selected_cols = (dist <= hardest.unsqueeze(1)).nonzero(as_tuple=True)
    for start in range(0, selected_rows.numel(), _SEARCH_SLICE):
        rows = selected_rows[start : start + _SEARCH_SLICE]
        cols = selected_cols[start : start + _SEARCH_SLICE]
        histogram += torch.bincount(bucket(rows, cols), minlength=n * (width + 1))
    del selected_rows, selected_cols
    if matches.junk_rows.numel():
        jr, jc = matches.junk_rows, matches.junk_cols
        taken = dist[jr, jc] <= hardest[jr]
        histogram -= torch.bincount(bucket(jr[taken], jc[taken]), minlength=n * (width + 1))
    # counted[r, m] = selected non-junk items preceded by at most m relevant items of row r: the m + 1
    # relevant items up to slot m (each counts in its own slot) and the other items before the m-th
    # relevant one. Its 0-based position is the number of items before it: counted - 1.
    counted = torch.cumsum(histogram.view(n, width + 1), dim=1)
    out_rows, m = (torch.arange(width, device=device).unsqueeze(0) < num_rel.unsqueeze(1)).nonzero(as_tuple=True)
    return out_rows, counted[out_rows, m] - 1


def _relevant_positions(
    dist: torch.Tensor, relevant: torch.Tensor, junk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, 0-based position) of every relevant item in the stable ranking without junk, row-major.

    Exact without sorting any row. A relevant item's position is the number of relevant items before
    it plus the number of other non-junk items before it, "before" meaning a smaller distance or an
    equal one at a lower gallery index (the stable sort's order). So: sort each row's few relevant
    distances (the *thresholds*); select the other items that can precede a threshold at all (distance
    <= the row's hardest match, a small part of the gallery for any useful model); find for each of
    those how many thresholds precede it (:func:`_count_before`); a per-row histogram of these counts,
    summed, gives the number of other items before each relevant one. Items that tie with a threshold
    are recounted with the gallery index as tie-break; they are rare with real features, and exact
    either way. Cost: a few passes over the chunk plus a binary search per selected item, against a
    full sort of every row; memory stays ``O(rows x gallery)``.
    """
    n, g = dist.shape
    device = dist.device
    num_rel = relevant.sum(dim=1)
    width = int(num_rel.max())
    if width == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    rel_rows, rel_cols = relevant.nonzero(as_tuple=True)  # row-major, gallery order within a row
    slot = torch.arange(rel_rows.numel(), device=device) - (torch.cumsum(num_rel, 0) - num_rel)[rel_rows]
    thresholds = dist.new_full((n, width), float("inf"))
    thresholds[rel_rows, slot] = dist[rel_rows, rel_cols]
    threshold_index = torch.full((n, width), g, dtype=torch.int64, device=device)
    threshold_index[rel_rows, slot] = rel_cols
    # Stable: equal distances keep gallery order, so the thresholds are in (distance, index) order.
    thresholds, order = torch.sort(thresholds, dim=1, stable=True)
    threshold_index = threshold_index.gather(1, order)
    hardest = thresholds.gather(1, (num_rel - 1).clamp(min=0).unsqueeze(1))
    hardest = hardest.masked_fill((num_rel == 0).unsqueeze(1), float("-inf"))  # nothing to rank there

    others = dist.masked_fill(relevant | junk, float("inf"))
    selected_rows, selected_cols = (others <= hardest).nonzero(as_tuple=True)
    del others
    # histogram[r, m] = other items preceded by exactly m of row r's relevant items; the binary search
    # runs over slices of the selection so that its temporaries stay small even for a useless model.
    histogram = torch.zeros(n * (width + 1), dtype=torch.int64, device=device)
    for start in range(0, selected_rows.numel(), _SEARCH_SLICE):
        rows = selected_rows[start : start + _SEARCH_SLICE]
        cols = selected_cols[start : start + _SEARCH_SLICE]
        values = dist[rows, cols]
        count = _count_before(thresholds, num_rel, rows, values)
        tied = thresholds.flatten()[rows * width + count.clamp(max=width - 1)] == values
        tied &= count < num_rel[rows]
        if bool(tied.any()):
            t = tied.nonzero().squeeze(1)
            count[t] = _count_before(thresholds, num_rel, rows[t], values[t], cols[t], threshold_index)
        histogram += torch.bincount(rows * (width + 1) + count, minlength=n * (width + 1))
    # others_before[r, m] = other items before the m-th relevant item = those preceded by <= m of them
    others_before = torch.cumsum(histogram.view(n, width + 1), dim=1)
    out_rows, m = (torch.arange(width, device=device).unsqueeze(0) < num_rel.unsqueeze(1)).nonzero(as_tuple=True)
    return out_rows, m + others_before[out_rows, m]


def _chunk_stats(
    dist: torch.Tensor,
    qp: torch.Tensor,
    qc: torch.Tensor,
    gp: torch.Tensor,
    gc: torch.Tensor,
    cross_camera: bool,
    ap_variant: str,
    gallery: "_GalleryIndex | None" = None,
) -> _QueryStats:
    """AP, INP, first-match rank and #relevant for each query of one chunk (see module docstring)."""
    low, high = torch.aminmax(dist) if dist.is_floating_point() else (dist.min(), dist.max())
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):  # NaN propagates to both
        raise EvaluationError(
            "the distance matrix holds NaN or Inf values: the features are not finite "
            "(a diverged model or an fp16 overflow); check the checkpoint's training loss"
        )
    dist = _as_float(dist)
    col_bits = _key_bits(dist.shape[0], dist.shape[1]) if dist.dtype == torch.float32 else None
    if col_bits is not None:
        matches = (gallery or _GalleryIndex.build(gp)).matches(qp, qc, gc, cross_camera)
        num_rel = matches.num_rel
        rows, pos = _relevant_positions_keyed(dist, matches, col_bits)
    else:  # float64 (or integer) distances, or a gallery too large for one int64 key
        relevant, junk = protocol_masks(qp, qc, gp, gc, cross_camera)
        num_rel = relevant.sum(dim=1)
        rows, pos = _relevant_positions(dist, relevant, junk)
        del relevant, junk

    dtype = _accum_dtype(dist.device)
    n = dist.shape[0]
    rank = (pos + 1).to(dtype)  # positions count non-junk items only
    offsets = torch.cumsum(num_rel, 0) - num_rel
    hit = (torch.arange(rows.numel(), device=dist.device) - offsets[rows] + 1).to(dtype)  # i-th relevant
    precision = hit / rank
    # trapezoidal: average of the precision before the hit and at it. Both variants are computed (the
    # ranking is the expensive part) so that a result can name the other one too.
    before = torch.where(rank > 1, (hit - 1) / (rank - 1).clamp(min=1), torch.ones_like(rank))
    contribs = {"standard": precision, "trapezoidal": 0.5 * (before + precision)}

    num_rel_f = num_rel.to(dtype)
    valid = num_rel > 0
    nan = torch.full((n,), float("nan"), dtype=dtype, device=dist.device)
    ap_of = {name: torch.where(valid, torch.zeros(n, dtype=dtype, device=dist.device).index_add_(0, rows, contrib)
                               / num_rel_f.clamp(min=1), nan)
             for name, contrib in contribs.items()}
    ap = ap_of[ap_variant]
    ap_other = ap_of["trapezoidal" if ap_variant == "standard" else "standard"]

    first = hit == 1
    first_rank = torch.zeros(n, dtype=torch.int64, device=dist.device)
    first_rank[rows[first]] = pos[first] + 1
    last = hit == num_rel_f[rows]
    last_rank = torch.ones(n, dtype=dtype, device=dist.device)
    last_rank[rows[last]] = rank[last]
    inp = torch.where(valid, num_rel_f / last_rank, nan)

    return _QueryStats(
        ap=ap.cpu().double().numpy(),
        ap_other=ap_other.cpu().double().numpy(),
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
    # Only reachable with cross_camera=True: otherwise a shared identity always leaves a match. Two
    # causes can mix: identities absent from the gallery (no switch helps) and the same-camera rule.
    absent = ~np.isin(q_pids, g_pids)
    if absent.any():
        missing = np.unique(q_pids[absent])
        shown = ", ".join(str(p) for p in missing[:10]) + ("..." if missing.size > 10 else "")
        causes = (f"{int(absent.sum())} of them have an identity that appears nowhere in the gallery (ids {shown}: "
                  f"check that query and gallery come from the same test split), and for the other "
                  f"{int((~absent).sum())} every gallery image of the query's identity")
    else:
        causes = "every gallery image of a query's identity"
    single = " (the data has a single camera)" if cams.size == 1 else ""
    return EvaluationError(
        f"all {len(q_pids)} queries were skipped: {causes} was taken by "
        f"the query's own camera{single}, and the Market-1501 protocol removes same-identity same-camera "
        f"images (cameras seen: {', '.join(str(c) for c in cams[:10])}{'...' if cams.size > 10 else ''}). "
        + camera_advice(int(cams.size), int(np.setdiff1d(np.union1d(q_pids, g_pids), [0]).size))
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
    gallery: _GalleryIndex | None = None
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        dist = produce(start, stop)
        if tuple(dist.shape) != (stop - start, num_g):
            raise ValueError(f"distance chunk [{start}:{stop}] has shape {tuple(dist.shape)}, expected ({stop - start}, {num_g})")
        if labels is None:
            device = dist.device
            labels = (_as_labels(q_pids, "q_pids", device), _as_labels(q_camids, "q_camids", device),
                      _as_labels(g_pids, "g_pids", device), _as_labels(g_camids, "g_camids", device))
            gallery = _GalleryIndex.build(labels[2])
        qp, qc, gp, gc = labels
        stats.append(_chunk_stats(dist, qp[start:stop], qc[start:stop], gp, gc, cross_camera, ap_variant, gallery))

    ap = np.concatenate([s.ap for s in stats])
    ap_other = np.concatenate([s.ap_other for s in stats])
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
        mAP_by_variant={ap_variant: float(ap[valid].mean()),
                        ("trapezoidal" if ap_variant == "standard" else "standard"): float(ap_other[valid].mean())},
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
    masked, relevant = _mask_junk(_as_float(rows), qp, qc, gp, gc, cross_camera)
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
