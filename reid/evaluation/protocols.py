"""Evaluation protocols other than the fixed query/gallery split: the VehicleID gallery draws.

VehicleID (Liu et al., CVPR 2016) has no query/gallery split and no camera ids. Its protocol: from
the test list, one randomly chosen image of every vehicle forms the gallery, all other images are
queries; repeat with ``num_draws`` random galleries (10 in the literature) and average mAP and CMC.
Every query therefore has exactly one relevant gallery image, and nothing is filtered by camera.

Each draw is scored by :func:`reid.evaluation.metrics.evaluate_distances` with ``cross_camera=False``
(the same exact, vectorised ranking as every other evaluation), so ties, ``max_rank`` and the AP
variant behave identically. The draws come from
:func:`reid.data.readers.one_per_identity_draws`, which also picked the manifest's stored split:
with the same seed, draw 0 here is that split.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from reid.data.readers import one_per_identity_draws
from reid.errors import EvaluationError
from reid.evaluation.metrics import EvalResult, evaluate_distances

# (query indices, gallery indices) -> distances of those queries to that gallery, [Q, G]
SubmatrixFn = Callable[[np.ndarray, np.ndarray], "torch.Tensor | np.ndarray | Callable"]


def evaluate_gallery_draws(
    distances: SubmatrixFn | torch.Tensor | np.ndarray,
    pids: Sequence[int] | np.ndarray,
    num_draws: int = 10,
    seed: int = 0,
    max_rank: int = 50,
    ap_variant: str = "standard",
    chunk_size: int = 512,
    ranks: Sequence[int] = (1, 5, 10, 20),
) -> tuple[EvalResult, list[tuple[np.ndarray, np.ndarray]]]:
    """The VehicleID protocol over the ``N`` test items with identities ``pids``.

    ``distances`` is the full ``[N, N]`` matrix, or a function ``(query_idx, gallery_idx)`` returning the
    distances of one draw (a matrix or a row producer, as :func:`evaluate_distances` takes), so that
    re-ranking can run per draw and nothing ``N x N`` has to be held. Returns the averaged result
    (``mAP``, CMC, ranks and mINP are means over draws; ``num_queries`` is per draw, the same for every
    draw; ``ap_per_query`` is draw 0's) and every draw's ``(query_idx, gallery_idx)``.
    """
    pids = np.asarray(pids, dtype=np.int64)
    if num_draws < 1:
        raise ValueError("num_draws must be >= 1")
    if pids.size == 0:
        raise EvaluationError("nothing to evaluate: the test set is empty")
    if isinstance(distances, np.ndarray):
        distances = torch.from_numpy(distances)
    if isinstance(distances, torch.Tensor):
        if tuple(distances.shape) != (pids.size, pids.size):
            raise ValueError(f"distance matrix has shape {tuple(distances.shape)}, expected ({pids.size}, {pids.size})")
        matrix = distances
        submatrix: SubmatrixFn = lambda q, g: matrix[torch.as_tensor(q)][:, torch.as_tensor(g)]  # noqa: E731
    else:
        submatrix = distances

    no_camera = np.zeros(pids.size, dtype=np.int64)
    results: list[EvalResult] = []
    draws: list[tuple[np.ndarray, np.ndarray]] = []
    for gallery in one_per_identity_draws(pids, num_draws, seed):
        is_gallery = np.zeros(pids.size, dtype=bool)
        is_gallery[gallery] = True
        query = np.flatnonzero(~is_gallery)
        if query.size == 0:
            raise EvaluationError("every identity of the test set has a single image: the VehicleID protocol "
                                  "(one gallery image per identity, the others queries) leaves no query")
        results.append(evaluate_distances(
            submatrix(query, gallery), pids[query], pids[gallery], no_camera[query], no_camera[gallery],
            max_rank=max_rank, ap_variant=ap_variant, cross_camera=False, chunk_size=chunk_size, ranks=ranks))
        draws.append((query, gallery))
    first = results[0]
    mean = EvalResult(
        mAP=float(np.mean([r.mAP for r in results])),
        cmc=np.mean(np.stack([r.cmc for r in results]), axis=0),
        ranks={k: float(np.mean([r.ranks[k] for r in results])) for k in first.ranks},
        mINP=float(np.mean([r.mINP for r in results])),
        num_queries=first.num_queries,
        num_valid_queries=int(round(np.mean([r.num_valid_queries for r in results]))),
        num_skipped_queries=int(round(np.mean([r.num_skipped_queries for r in results]))),
        ap_variant=first.ap_variant,
        cross_camera=False,
        ap_per_query=first.ap_per_query,
    )
    return mean, draws
