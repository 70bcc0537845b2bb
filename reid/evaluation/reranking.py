"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), vectorised in torch and bounded in memory.

Definitions, on the set of all N = Q + G images (queries and gallery together):

* ``d``: the configured distance (cosine, or squared Euclidean; see :mod:`reid.evaluation.distance`),
  divided by its row maximum so that every row lies in [0, 1] (as the authors' code does).
* ``N(p, k)``: the k+1 nearest images of p (p itself included, as in the authors' code).
* ``R(p, k) = {g in N(p, k) : p in N(g, k)}``: the k-reciprocal neighbours.
* ``R*(p, k)``: R(p, k1) plus, for every candidate c in it, all of ``R(c, round(k1/2))`` when
  ``|R(c, k1/2) & R(p, k1)| > 2/3 |R(c, k1/2)|``. The paper writes ">="; the authors' released code,
  which produced the published numbers, uses ">" and so does this module. ``round`` is Python's
  (half to even), as ``np.around`` in the authors' code.
* ``V_p``: sparse vector over the N images, ``exp(-d(p, g))`` on R*(p, k1), normalised to sum 1.
* Local query expansion: ``V_p <- mean of V_g over g in the k2 nearest images of p`` (skipped when
  k2 = 1, as in the authors' code).
* Jaccard distance ``d_J(p, g) = 1 - sum(min(V_p, V_g)) / sum(max(V_p, V_g))``; every V row sums to 1,
  so ``sum(max) = 2 - sum(min)``.
* Final distance ``(1 - lambda) d_J + lambda d`` between queries and gallery.

How it stays fast and small: one pass over the N x N distances in row blocks keeps only the top
``max(k1+1, k2)`` neighbours and each row's maximum (never the N x N matrix); the reciprocal tests are
tensor comparisons on those neighbour lists; V is kept sparse (row, column, value); and the Jaccard
term is produced for a chunk of queries at a time by joining the chunk's V entries with the gallery's
V entries on their column (the ``sum(min)`` only has terms where both are non-zero). The re-ranked
distances are exposed as a producer of row slices, which :func:`reid.evaluation.metrics.evaluate_distances`
consumes chunk by chunk, so the Q x G matrix is never held either.
"""

from __future__ import annotations

import math

import torch

from reid.errors import EvaluationError
from reid.evaluation.distance import Metric, exact_fp32_matmul, prepare_features

# Budgets that bound the temporaries (elements), independent of dataset size.
_BLOCK_ELEMENTS = 1 << 25  # row block of the N x N pass: 32M floats = 128 MiB
_JOIN_ELEMENTS = 1 << 23  # Jaccard join entries processed at once (about 8M x ~40 bytes)
# Typical size of R*(p, k1) relative to k1+1, measured on structured data (it is bounded by
# (k1+1)(round(k1/2)+2) but is close to 1-2x (k1+1) in practice). Used only by the memory estimate.
_EXPANSION_FACTOR = 2.0


def _half(k1: int) -> int:
    return int(round(k1 / 2))


def estimate_rerank_memory(
    num_query: int,
    num_gallery: int,
    k1: int = 20,
    k2: int = 6,
    feature_dim: int = 2048,
    chunk_size: int = 512,
) -> int:
    """Estimated peak bytes of :class:`KReciprocalReranker` plus evaluating its output in chunks.

    Terms: two float32 copies of the features, one row block of the N x N pass (distances and the
    top-k values/indices), the neighbour lists, the sparse V before and after query expansion (entries
    of 8 + 8 + 4 bytes, with sort/unique temporaries), the Jaccard join budget, and a few
    ``chunk_size x G`` float32 matrices for one chunk of re-ranked distances.
    """
    n = num_query + num_gallery
    kk = max(k1 + 1, k2)
    features = 2 * n * feature_dim * 4
    block_rows = max(1, min(n, _BLOCK_ELEMENTS // max(n, 1)))
    block = block_rows * n * 4 * 3
    neighbours = n * kk * 8 * 2
    per_row = _EXPANSION_FACTOR * (k1 + 1)
    v_entries = n * per_row
    qe_entries = n * min(per_row * max(k2, 1), n)
    sparse = int(v_entries * 20 + qe_entries * 20 * 3)
    join = _JOIN_ELEMENTS * 48
    chunk = min(chunk_size, num_query) * num_gallery * 4 * 5
    return int(features + block + neighbours + sparse + join + chunk)


class KReciprocalReranker:
    """Re-ranked query x gallery distances; call :meth:`distances` for a slice of queries.

    The constructor does the N x N neighbour pass and builds the sparse V (the expensive part);
    ``distances(start, stop)`` then costs one Jaccard join and one matrix product per slice.
    Raises :class:`EvaluationError` before allocating anything when the memory estimate exceeds
    ``max_memory_gb``.
    """

    def __init__(
        self,
        qf: torch.Tensor,
        gf: torch.Tensor,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        metric: Metric = "cosine",
        normalize: bool = True,
        max_memory_gb: float = 8.0,
        chunk_size: int = 512,
    ) -> None:
        if k1 < 1 or k2 < 1:
            raise ValueError("k1 and k2 must be >= 1")
        if not 0.0 <= lambda_value <= 1.0:
            raise ValueError("lambda_value must be in [0, 1]")
        if qf.device != gf.device:
            raise ValueError(f"query features are on {qf.device} but gallery features on {gf.device}")
        num_q, num_g = qf.shape[0], gf.shape[0]
        estimate = estimate_rerank_memory(num_q, num_g, k1, k2, qf.shape[1], chunk_size)
        limit = max_memory_gb * 1024**3
        if estimate > limit:
            raise EvaluationError(
                f"k-reciprocal re-ranking of {num_q} queries x {num_g} gallery images needs about "
                f"{estimate / 1024**3:.1f} GiB, over the limit of {max_memory_gb:g} GiB "
                f"(eval.rerank_max_memory_gb). Raise it with -o eval.rerank_max_memory_gb="
                f"{math.ceil(estimate / 1024**3)} if the machine has the memory, or evaluate without "
                "re-ranking (--no-rerank / -o eval.rerank=false)"
            )
        self.num_query, self.num_gallery = num_q, num_g
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.metric = metric
        self.device = qf.device
        feats = torch.cat([prepare_features(qf, metric, normalize), prepare_features(gf, metric, normalize)])
        self._feats = feats
        self._sq = (feats * feats).sum(dim=1) if metric == "euclidean" else None
        n = feats.shape[0]
        kk = min(max(k1 + 1, k2), n)
        self._initial_rank, self._row_max = self._neighbour_pass(kk)
        rows, cols, vals = self._build_v()
        if k2 > 1:
            rows, cols, vals = self._query_expansion(rows, cols, vals)
        self._index_v(rows, cols, vals)

    # -- distances -------------------------------------------------------------------------------
    def _dist(self, rows: slice, cols: slice) -> torch.Tensor:
        """Raw distances between two contiguous ranges of the N images (views: no feature copies)."""
        fa, fb = self._feats[rows], self._feats[cols]
        with exact_fp32_matmul():  # no TF32 on CUDA, as for the plain distances
            if self.metric == "cosine":
                return torch.mm(fa, fb.T).neg_().add_(1.0)
            assert self._sq is not None
            dist = torch.addmm(self._sq[rows].unsqueeze(1) + self._sq[cols].unsqueeze(0), fa, fb.T, alpha=-2.0)
        return dist.clamp_(min=0.0)

    def _pair_dist(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Raw distances of the pairs (i[t], j[t]), gathered in blocks to bound memory."""
        out = torch.empty(i.numel(), dtype=self._feats.dtype, device=self.device)
        step = max(1, _BLOCK_ELEMENTS // (2 * self._feats.shape[1]))
        for s in range(0, i.numel(), step):
            fi, fj = self._feats[i[s : s + step]], self._feats[j[s : s + step]]
            dot = (fi * fj).sum(dim=1)
            if self.metric == "cosine":
                out[s : s + step] = 1.0 - dot
            else:
                assert self._sq is not None
                out[s : s + step] = (self._sq[i[s : s + step]] + self._sq[j[s : s + step]] - 2.0 * dot).clamp_(min=0.0)
        return out

    def _neighbour_pass(self, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-kk neighbours (ascending distance) and the maximum distance of every row."""
        n = self._feats.shape[0]
        rank = torch.empty((n, kk), dtype=torch.int64, device=self.device)
        row_max = torch.empty(n, dtype=self._feats.dtype, device=self.device)
        step = max(1, _BLOCK_ELEMENTS // n)
        for s in range(0, n, step):
            block = self._dist(slice(s, s + step), slice(0, n))
            row_max[s : s + step] = block.max(dim=1).values
            rank[s : s + step] = torch.topk(block, kk, dim=1, largest=False, sorted=True).indices
        # A row of identical images has maximum 0; keep the normalisation finite.
        return rank, row_max.clamp_(min=torch.finfo(row_max.dtype).tiny)

    # -- V -----------------------------------------------------------------------------------------
    def _reciprocal(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Neighbour lists N(p, width-1) [n, width] and the mask of the reciprocal ones."""
        nbrs = self._initial_rank[:, :width]
        n = nbrs.shape[0]
        mask = torch.empty_like(nbrs, dtype=torch.bool)
        step = max(1, (_BLOCK_ELEMENTS // 8) // (width * width))  # int64 [step, width, width] temporaries
        for s in range(0, n, step):
            block = nbrs[s : s + step]
            me = torch.arange(s, s + block.shape[0], device=self.device).view(-1, 1, 1)
            mask[s : s + step] = (nbrs[block] == me).any(dim=2)  # p in N(g, k) for each g in N(p, k)
        return nbrs, mask

    def _build_v(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sparse V (row, column, value), rows in ascending order, from the k-reciprocal expansion."""
        n = self._feats.shape[0]
        width, half_width = min(self.k1 + 1, n), min(_half(self.k1) + 1, n)
        cand, cand_ok = self._reciprocal(width)  # R(p, k1) = cand[p][cand_ok[p]]
        half, half_ok = self._reciprocal(half_width)  # R(c, k1/2) = half[c][half_ok[c]]
        keys: list[torch.Tensor] = []
        step = max(1, _BLOCK_ELEMENTS // (width * half_width * width))
        for s in range(0, n, step):
            c, ok = cand[s : s + step], cand_ok[s : s + step]  # [b, K]
            hc, hok = half[c], half_ok[c]  # [b, K, Kh]: R(c, k1/2) for every candidate c
            in_r = ((hc.unsqueeze(-1) == c.view(c.shape[0], 1, 1, -1)) & ok.view(c.shape[0], 1, 1, -1)).any(-1)
            inter = (hok & in_r).sum(-1)
            size = hok.sum(-1)
            accept = ok & (3 * inter > 2 * size)  # |R(c,k/2) & R(p,k)| > 2/3 |R(c,k/2)|, exactly in integers
            p = torch.arange(s, s + c.shape[0], device=self.device)
            rows = torch.cat([p.view(-1, 1).expand_as(c)[ok], p.view(-1, 1, 1).expand_as(hc)[accept.unsqueeze(-1) & hok]])
            members = torch.cat([c[ok], hc[accept.unsqueeze(-1) & hok]])
            keys.append(torch.unique(rows * n + members))  # sorted: rows ascending, then columns
        key = torch.cat(keys)
        rows, cols = key // n, key % n
        weight = torch.exp(-self._pair_dist(rows, cols) / self._row_max[rows])
        total = torch.zeros(n, dtype=weight.dtype, device=self.device).index_add_(0, rows, weight)
        return rows, cols, weight / total[rows]

    @staticmethod
    def _row_pointers(rows: torch.Tensor, n: int) -> torch.Tensor:
        counts = torch.bincount(rows, minlength=n)
        return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])

    def _query_expansion(
        self, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """V_p <- mean of V_g over the k2 nearest images g of p (sparse rows, in row blocks)."""
        n = self._feats.shape[0]
        k2 = min(self.k2, self._initial_rank.shape[1])
        ptr = self._row_pointers(rows, n)
        nnz = ptr[1:] - ptr[:-1]
        out_r, out_c, out_v = [], [], []
        per_row = max(1, int(nnz.float().mean().item() * k2))
        step = max(1, _JOIN_ELEMENTS // per_row)
        for s in range(0, n, step):
            p = torch.arange(s, min(s + step, n), device=self.device)
            nb = self._initial_rank[p, :k2].reshape(-1)  # the k2 neighbours of each p
            owner = p.repeat_interleave(k2)
            count = nnz[nb]
            src = _expand_ranges(ptr[nb], count)  # every V entry of every neighbour
            dest_row = owner.repeat_interleave(count)
            key, inverse = torch.unique(dest_row * n + cols[src], return_inverse=True)
            summed = torch.zeros(key.numel(), dtype=vals.dtype, device=self.device).index_add_(0, inverse, vals[src])
            out_r.append(key // n)
            out_c.append(key % n)
            out_v.append(summed / k2)
        return torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)

    def _index_v(self, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> None:
        """Keep the query rows of V by row, and the gallery rows of V grouped by column (for the join)."""
        n, nq = self._feats.shape[0], self.num_query
        is_q = rows < nq
        self._q_ptr = self._row_pointers(rows[is_q], nq)
        self._q_cols, self._q_vals = cols[is_q], vals[is_q]
        g_rows, g_cols, g_vals = rows[~is_q], cols[~is_q], vals[~is_q]
        order = torch.sort(g_cols, stable=True).indices
        self._g_rows = g_rows[order] - nq  # gallery index 0..G-1
        self._g_vals = g_vals[order]
        self._g_col_ptr = self._row_pointers(g_cols[order], n)

    # -- output ------------------------------------------------------------------------------------
    def jaccard(self, start: int, stop: int) -> torch.Tensor:
        """Jaccard distances ``[stop-start, G]`` of queries [start, stop) to the gallery."""
        num_g = self.num_gallery
        n_rows = stop - start
        overlap = torch.zeros(n_rows * num_g, dtype=self._q_vals.dtype, device=self.device)
        lo, hi = int(self._q_ptr[start]), int(self._q_ptr[stop])
        q_nnz = self._q_ptr[start + 1 : stop + 1] - self._q_ptr[start:stop]
        q_row = torch.arange(n_rows, device=self.device).repeat_interleave(q_nnz)
        q_col, q_val = self._q_cols[lo:hi], self._q_vals[lo:hi]
        g_ptr = self._g_col_ptr
        count = g_ptr[q_col + 1] - g_ptr[q_col]  # gallery entries sharing each query entry's column
        ends = torch.cumsum(count, 0)
        # Split the query entries so that each join holds at most _JOIN_ELEMENTS pairs.
        total = int(ends[-1]) if ends.numel() else 0
        marks = torch.arange(_JOIN_ELEMENTS, max(total, _JOIN_ELEMENTS), _JOIN_ELEMENTS, device=self.device)
        bounds = [0] + [int(c) for c in torch.searchsorted(ends, marks)] + [q_col.numel()]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b <= a:
                continue
            cnt = count[a:b]
            src = _expand_ranges(g_ptr[q_col[a:b]], cnt)
            rep = torch.arange(a, b, device=self.device).repeat_interleave(cnt)
            contrib = torch.minimum(q_val[rep], self._g_vals[src])
            overlap.index_add_(0, q_row[rep] * num_g + self._g_rows[src], contrib)
        overlap = overlap.view(n_rows, num_g)
        return 1.0 - overlap / (2.0 - overlap)

    def distances(self, start: int, stop: int) -> torch.Tensor:
        """Re-ranked distances ``[stop-start, G]``: (1 - lambda) Jaccard + lambda normalised distance."""
        if not 0 <= start <= stop <= self.num_query:
            raise IndexError(f"query slice [{start}:{stop}] outside 0..{self.num_query}")
        gallery = slice(self.num_query, self.num_query + self.num_gallery)
        original = self._dist(slice(start, stop), gallery) / self._row_max[start:stop].unsqueeze(1)
        if self.lambda_value == 1.0:
            return original
        return (1.0 - self.lambda_value) * self.jaccard(start, stop) + self.lambda_value * original


def _expand_ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenate ``arange(s, s + c)`` for every (s, c), without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return starts.new_zeros(0)
    offsets = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=starts.device) - offsets.repeat_interleave(counts)
    return starts.repeat_interleave(counts) + within


def rerank_distances(
    qf: torch.Tensor,
    gf: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: Metric = "cosine",
    normalize: bool = True,
    max_memory_gb: float = 8.0,
) -> torch.Tensor:
    """The full re-ranked ``[Q, G]`` matrix (for small sets and tests; evaluation uses the producer)."""
    reranker = KReciprocalReranker(qf, gf, k1, k2, lambda_value, metric, normalize, max_memory_gb)
    return reranker.distances(0, qf.shape[0])
