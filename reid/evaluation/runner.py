"""Evaluate a model on a manifest's query/gallery split and write the results.

The pieces are separate so the trainer can evaluate every few epochs (``evaluate_model``, its metrics
sent through the run's sinks) while ``reid evaluate`` also writes files (``write_outputs``). Nothing
here talks to MLflow: both log through :class:`reid.tracking.Tracker` (``metrics_for_logging`` gives
the names).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from reid.errors import EvaluationError
from reid.evaluation.features import extract_features
from reid.evaluation.metrics import EvalResult, evaluate_distances, make_distance_producer, ranked_lists

METRICS_FILE = "metrics.json"
CMC_CSV = "cmc.csv"
CMC_PLOT = "cmc.png"
RANKED_PLOT = "ranked_lists.png"


def _labels(samples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    return (np.fromiter((s.pid for s in samples), dtype=np.int64, count=len(samples)),
            np.fromiter((s.camid for s in samples), dtype=np.int64, count=len(samples)))


def _pick_queries(ap_per_query: np.ndarray | None, count: int) -> list[int]:
    """``count`` valid queries spread evenly over the query list (deterministic, not cherry-picked)."""
    if ap_per_query is None or count <= 0:
        return []
    valid = np.flatnonzero(~np.isnan(ap_per_query))
    if valid.size == 0:
        return []
    picks = np.unique(np.linspace(0, valid.size - 1, min(count, valid.size)).round().astype(int))
    return [int(valid[i]) for i in picks]


def evaluate_sample_features(
    qf: torch.Tensor, gf: torch.Tensor, query: Sequence[Any], gallery: Sequence[Any], eval_cfg: Any,
    has_cameras: bool = True, protocol: str = "standard",
) -> EvalResult:
    """The protocol on features of ``Sample`` lists (pid, camid, path), with ranked lists attached.

    The distance producer (plain or re-ranked) is built once and shared by the metrics and by the
    ranked lists, so the pictures show exactly the ranking that was scored. ``has_cameras`` and
    ``protocol`` come from the manifest: data without camera ids is scored without the same-camera
    rule whatever ``eval.cross_camera`` says (there is nothing to compare), and ``vehicleid`` pools
    query and gallery and averages re-drawn galleries (:mod:`reid.evaluation.protocols`).
    """
    if qf.shape[0] != len(query) or gf.shape[0] != len(gallery):
        raise EvaluationError(
            f"got {qf.shape[0]} query / {gf.shape[0]} gallery features for {len(query)} / {len(gallery)} images: "
            "the test loader must yield every image once, in order (or report the images it left out)"
        )
    if protocol == "vehicleid":
        return _evaluate_gallery_draws(qf, gf, query, gallery, eval_cfg)
    cross_camera = bool(eval_cfg.cross_camera) and has_cameras
    q_pids, q_cams = _labels(query)
    g_pids, g_cams = _labels(gallery)
    produce = make_distance_producer(qf, gf, eval_cfg)
    result = evaluate_distances(
        produce, q_pids, g_pids, q_cams, g_cams, max_rank=eval_cfg.max_rank, ap_variant=eval_cfg.ap_variant,
        cross_camera=cross_camera, chunk_size=eval_cfg.chunk_size, ranks=eval_cfg.ranks,
    ).with_flags(rerank=bool(eval_cfg.rerank), distance=eval_cfg.distance)
    if result.ap_per_query is not None and result.num_skipped_queries:
        result = result.with_flags(skipped_queries=[str(query[i].path) for i in np.flatnonzero(np.isnan(result.ap_per_query))])
    return _with_ranked_lists(result, produce, query, gallery, eval_cfg, cross_camera)


def _with_ranked_lists(result: EvalResult, produce: Any, query: Sequence[Any], gallery: Sequence[Any],
                       eval_cfg: Any, cross_camera: bool) -> EvalResult:
    """``result`` with the ranked lists of a few evenly spread valid queries (``eval.num_ranked_lists``)."""
    picks = _pick_queries(result.ap_per_query, eval_cfg.num_ranked_lists)
    if not picks:
        return result
    q_pids, q_cams = _labels(query)
    g_pids, g_cams = _labels(gallery)
    lists = ranked_lists(produce, picks, q_pids, g_pids, q_cams, g_cams, eval_cfg.ranked_list_size, cross_camera)
    lists.query_paths = [str(query[i].path) for i in picks]
    lists.gallery_paths = [[str(gallery[j].path) if j >= 0 else None for j in row] for row in lists.gallery_index]
    return result.with_flags(ranked_lists=lists)


def _evaluate_gallery_draws(qf: torch.Tensor, gf: torch.Tensor, query: Sequence[Any], gallery: Sequence[Any],
                            eval_cfg: Any) -> EvalResult:
    """The VehicleID protocol: pool query and gallery, score ``eval.gallery_draws`` random galleries.

    The pooled images are sorted by path, the order the reader drew the manifest's split in, so draw 0
    of ``eval.gallery_seed=0`` is the stored split. The ranked lists show draw 0.
    """
    from reid.evaluation.protocols import evaluate_gallery_draws

    samples = list(query) + list(gallery)
    order = sorted(range(len(samples)), key=lambda i: str(samples[i].path))
    samples = [samples[i] for i in order]
    feats = torch.cat([qf, gf])[torch.as_tensor(order, dtype=torch.long, device=qf.device)]

    def submatrix(q: np.ndarray, g: np.ndarray) -> Any:
        rows, cols = (torch.as_tensor(i, dtype=torch.long, device=feats.device) for i in (q, g))
        return make_distance_producer(feats[rows], feats[cols], eval_cfg)

    pids, _ = _labels(samples)
    result, draws = evaluate_gallery_draws(
        submatrix, pids, num_draws=eval_cfg.gallery_draws, seed=eval_cfg.gallery_seed, max_rank=eval_cfg.max_rank,
        ap_variant=eval_cfg.ap_variant, chunk_size=eval_cfg.chunk_size, ranks=eval_cfg.ranks)
    result = result.with_flags(rerank=bool(eval_cfg.rerank), distance=eval_cfg.distance)
    q_idx, g_idx = draws[0]
    return _with_ranked_lists(result, submatrix(q_idx, g_idx), [samples[i] for i in q_idx],
                              [samples[i] for i in g_idx], eval_cfg, False)


def evaluate_model(model: nn.Module, manifest: Any, config: Any, device: torch.device | str,
                   on_features: Any = None) -> EvalResult:
    """Extract query and gallery features with ``config.data`` and score them with ``config.eval``.

    ``on_features(qf, gf, query, gallery)``, when given, also receives the features and their samples
    (e.g. :class:`reid.evaluation.threshold.ThresholdCollector`), so nothing is extracted twice.

    ``manifest`` has ``query`` and ``gallery`` lists of ``Sample``; the images are read by
    ``reid.data.loaders.build_test_loader(samples, config, device)`` (normalised batches, in order).
    """
    from reid.data.loaders import build_test_loader

    device = torch.device(device)
    if not manifest.query or not manifest.gallery:
        raise EvaluationError(
            f"the manifest has {len(manifest.query)} query and {len(manifest.gallery)} gallery images; "
            "evaluation needs both (rebuild it with `reid prepare`)"
        )
    flip = bool(config.eval.flip)

    def features(samples: Sequence[Any]) -> tuple[torch.Tensor, list[int]]:
        """Features of the images the loader could decode, and their positions in ``samples``.

        Under torchrun every rank embeds its own contiguous shard and the shards are gathered in
        order, so N GPUs extract N times faster and every rank ends with the same full matrix.
        """
        from reid.parallel import all_gather_objects, gather_shards, rank_and_world, shard_bounds

        rank, world = rank_and_world()
        sharded = world > 1 and len(samples) >= world
        start, stop = shard_bounds(len(samples), rank, world) if sharded else (0, len(samples))
        loader = build_test_loader(samples[start:stop], config, device)
        part = extract_features(model, loader, device, flip)
        kept = _kept_positions(loader, part.shape[0], stop - start)
        if not sharded:
            return part, kept
        full = part.new_zeros((stop - start, *part.shape[1:]))
        full[kept] = part
        everything = gather_shards(full, len(samples))
        positions = [shard_bounds(len(samples), r, world)[0] + i
                     for r, ks in enumerate(all_gather_objects(kept)) for i in ks]
        return everything[positions], positions

    (qf, q_kept), (gf, g_kept) = features(manifest.query), features(manifest.gallery)
    query, gallery = [manifest.query[i] for i in q_kept], [manifest.gallery[i] for i in g_kept]
    # data.corrupt_images=skip: an image that did not decode is dropped from the protocol (its features
    # do not exist), consistently for the labels, and named in the result.
    q_set, g_set = set(q_kept), set(g_kept)
    dropped = ([str(s.path) for i, s in enumerate(manifest.query) if i not in q_set]
               + [str(s.path) for i, s in enumerate(manifest.gallery) if i not in g_set])
    result = evaluate_sample_features(qf, gf, query, gallery, config.eval,
                                      has_cameras=getattr(manifest, "has_cameras", True),
                                      protocol=getattr(manifest, "protocol", "standard"))
    if on_features is not None:
        on_features(qf, gf, query, gallery)
    return result.with_flags(skipped_images=dropped) if dropped else result


def _kept_positions(loader: Any, rows: int, expected: int) -> list[int]:
    """Positions of the images a test loader yielded (all of them, unless it reports which it kept)."""
    kept = getattr(loader, "kept", None)
    if kept is not None and len(kept) == rows:
        return list(kept)
    if rows == expected:
        return list(range(expected))
    raise EvaluationError(f"the test loader yielded {rows} of {expected} images without saying which; "
                          "it must yield every image once, in order, or record the positions it kept")


def write_outputs(
    result: EvalResult, out_dir: Path | str, extra: dict[str, Any] | None = None, title: str | None = None
) -> dict[str, Path]:
    """Write ``metrics.json`` (plus ``extra`` keys), ``cmc.csv`` (for ``dvc plots``), ``cmc.png`` and,
    when the result carries them, ``ranked_lists.png``. Returns ``{name: path}`` of what was written.
    """
    from reid.atomic import atomic_target, write_text_atomic
    from reid.evaluation.plots import plot_cmc, ranked_list_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    metrics = {**result.to_dict(), **(extra or {})}
    paths["metrics"] = out / METRICS_FILE
    write_text_atomic(paths["metrics"], json.dumps(metrics, indent=2) + "\n")  # a full disk: reid.errors.DiskFullError
    paths["cmc_csv"] = out / CMC_CSV
    with atomic_target(paths["cmc_csv"]) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["rank", "cmc"])
        writer.writerows((k + 1, f"{v:.6f}") for k, v in enumerate(result.cmc))
    paths["cmc_plot"] = plot_cmc({title: result} if title else result, out / CMC_PLOT,
                                 title=f"CMC ({result.ap_variant} AP{', re-ranked' if result.rerank else ''})")
    lists = result.ranked_lists
    if lists is not None and lists.query_paths and lists.gallery_paths is not None and len(lists.query_index):
        paths["ranked_lists"] = ranked_list_figure(lists.query_paths, lists.gallery_paths, None, lists.matches,
                                                   out / RANKED_PLOT)
    return paths


def metrics_for_logging(result: EvalResult, prefix: str = "") -> dict[str, float]:
    """The numeric metrics, as MLflow receives them (``mAP``, ``rank1``..., ``mINP``, query counts).

    ``mAP_<ap_variant>`` is left out: it is ``mAP`` itself, and one quantity gets one name
    (:mod:`reid.evaluation.naming`); the other AP variant keeps its ``mAP_<variant>`` name.
    """
    same_as_map = f"mAP_{result.ap_variant}"
    return {f"{prefix}{k}": float(v) for k, v in result.to_dict().items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != same_as_map}
