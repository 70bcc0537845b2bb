"""Does a same-identity threshold hold on identities it was not measured on? Two halves of one test set.

A threshold (:mod:`reid.evaluation.threshold`) is measured on held-out identities and then applied to
people nobody measured. This checks the step within one domain: the query/gallery identities of a
``reid extract`` feature pair are split at random into halves A and B (seeded); the thresholds at each
target FAR are measured on A exactly as ``reid evaluate`` measures them, then applied to B, whose own
achieved FAR and TAR are reported beside B's own thresholds. Distractors and junk images (pid <= 0)
stay in both halves' galleries as impostors, as in the evaluation's pairs. Several seeds give the spread.

Across domains (another dataset's cameras) the shift is larger and is measured with
``reid evaluate --target`` on the target itself; this record is the within-domain baseline of that.

Usage:
    .venv/bin/python benchmarks/threshold_transfer.py --query q.npz --gallery g.npz --seeds 0 1 2 \\
        --output benchmarks/results/threshold_transfer_market_<date>.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine  # noqa: E402


def half(q: Any, g: Any, ids: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the query and gallery that belong to the identities ``ids`` (gallery: plus pid <= 0)."""
    qrows = np.flatnonzero(np.isin(q.pids, list(ids)))
    grows = np.flatnonzero(np.isin(g.pids, list(ids)) | (g.pids <= 0))
    return qrows, grows


def rates_at(threshold: float, genuine: np.ndarray, impostor_smallest: np.ndarray, impostors: int) -> tuple[float, float]:
    """(FAR, TAR) of ``threshold`` from :func:`pair_distances`' output (exact while FAR < its max_far)."""
    accepted = int(np.searchsorted(impostor_smallest, threshold, side="right"))
    return accepted / impostors, float((genuine <= threshold).mean())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--query", type=Path, required=True)
    parser.add_argument("--gallery", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--note", default="")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    from reid.config import EvalConfig
    from reid.deploy.gallery import load_features
    from reid.evaluation.distance import distance_producer
    from reid.evaluation.threshold import DEFAULT_FARS, pair_distances, thresholds_from_features

    q, g = load_features(args.query), load_features(args.gallery)
    cfg = EvalConfig(distance="cosine" if q.normalized else "euclidean", normalize=bool(q.normalized))
    identities = np.unique(q.pids[q.pids > 0])
    report: dict[str, Any] = {
        "benchmark": "threshold_transfer", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "machine": describe_machine("cpu"), "note": args.note,
        "model": {k: g.metadata.get(k, "") for k in ("backbone", "weights_hash", "model_file")},
        "num_query": len(q.paths), "num_gallery": len(g.paths), "identities": int(len(identities)),
        "distance": cfg.distance, "splits": []}
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(identities)
        a, b = set(order[: len(order) // 2].tolist()), set(order[len(order) // 2:].tolist())
        (qa, ga), (qb, gb) = half(q, g, a), half(q, g, b)
        feats = lambda f, rows: torch.from_numpy(f.features[rows])  # noqa: E731
        measured = thresholds_from_features(feats(q, qa), feats(g, ga), q.pids[qa], g.pids[ga], q.camids[qa],
                                            g.camids[ga], cfg, cross_camera=True)
        own = thresholds_from_features(feats(q, qb), feats(g, gb), q.pids[qb], g.pids[gb], q.camids[qb],
                                       g.camids[gb], cfg, cross_camera=True)
        produce = distance_producer(feats(q, qb), feats(g, gb), cfg.distance, cfg.normalize)
        genuine, smallest, impostors = pair_distances(produce, q.pids[qb], g.pids[gb], q.camids[qb], g.camids[gb],
                                                      True, max(DEFAULT_FARS))
        rows = []
        for point, mine in zip(measured.points, own.points):
            far, tar = rates_at(point.threshold, genuine, smallest, impostors)
            rows.append({"target_far": point.target_far, "threshold_A": point.threshold, "tar_A": point.tar,
                         "far_on_B": far, "tar_on_B": tar, "far_on_B_over_target": far / point.target_far,
                         "threshold_B_own": mine.threshold, "tar_B_own": mine.tar})
            print(f"seed {seed} FAR {point.target_far:g}: A's threshold {point.threshold:.4f} gives FAR {far:.2e} "
                  f"({far / point.target_far:.2f}x) TAR {100 * tar:.1f}% on B; B's own {mine.threshold:.4f}", flush=True)
        report["splits"].append({"seed": seed, "identities_A": len(a), "identities_B": len(b),
                                 "genuine_pairs_B": int(genuine.size), "impostor_pairs_B": int(impostors),
                                 "points": rows})
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
