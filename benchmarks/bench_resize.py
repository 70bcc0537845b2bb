"""What a tracker's resize costs: one checkpoint evaluated twice on Market-1501, with the contract's resize
and with OpenCV's ``INTER_LINEAR`` (no antialiasing, what BoxMOT and most trackers do).

Both runs use reid's evaluation protocol on the dataset's query/gallery split (the manifest the reader
builds; the checkpoint's ``eval`` settings: distance, normalisation, flip, cross-camera rule; no
re-ranking) and differ only in how each image reaches the model's input size
(:mod:`reid.deploy.resize`). Recorded: mAP, rank-1/5/10 of both, their differences, and the cosine
between the two feature sets per image (mean and minimum), with the machine and the checkpoint.

Market-1501 crops are 128 x 64: at a 256 x 128 input both resizes *enlarge* and agree to uint8
rounding; at 64 x 32 (the CPU track) both *shrink* by 2 and antialiasing matters. Tracker crops from
video frames are often larger than the input, i.e. shrunk as well.

Usage:
    .venv/bin/python benchmarks/bench_resize.py --checkpoint pipeline/models/baseline/last.pt \\
        --root ../shared/data/Market-1501-v15.09.15 [--format market1501] [--output FILE]

Default output: ``benchmarks/results/resize_<dataset folder>_<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine  # noqa: E402

RANKS = (1, 5, 10)


def evaluate_with_resize(checkpoint: Path, splits: Any, resize: str, batch_size: int) -> tuple[dict[str, Any], np.ndarray]:
    """``(metrics, features)`` of ``checkpoint`` on ``splits`` with ``resize``; features are query then gallery."""
    from reid.deploy.embedder import load_model
    from reid.evaluation.runner import evaluate_sample_features
    from reid.models.inference import load_inference_model

    _, config = load_inference_model(checkpoint, "cpu")
    eval_cfg = config.eval.model_copy(update={"num_ranked_lists": 0, "rerank": False})
    embedder = load_model(checkpoint, device="cpu", flip=bool(config.eval.flip), resize=resize)
    started = time.perf_counter()
    query, _ = embedder.embed_paths([s.path for s in splits.query], batch_size=batch_size, normalize=False)
    gallery, _ = embedder.embed_paths([s.path for s in splits.gallery], batch_size=batch_size, normalize=False)
    seconds = time.perf_counter() - started
    result = evaluate_sample_features(torch.from_numpy(query), torch.from_numpy(gallery), splits.query, splits.gallery,
                                      eval_cfg, has_cameras=splits.has_cameras, protocol=splits.protocol)
    cmc = np.asarray(result.cmc)
    metrics = {"resize": resize, "mAP": float(result.mAP), "mINP": float(result.mINP),
               **{f"rank{r}": float(cmc[r - 1]) for r in RANKS if len(cmc) >= r},
               "num_valid_queries": int(result.num_valid_queries), "extract_seconds": round(seconds, 1)}
    return metrics, np.concatenate([query, gallery])


def run(checkpoint: Path, root: Path, fmt: str = "market1501", batch_size: int = 128) -> dict[str, Any]:
    from reid.data.datasets import read_dataset
    from reid.models.inference import weights_hash
    from reid.deploy.module import load_checkpoint_module
    from reid.deploy.resize import CONTRACT_RESIZE, OPENCV_RESIZE

    splits = read_dataset(fmt, root)
    _, module, config, meta = load_checkpoint_module(checkpoint, "cpu")
    contract, a = evaluate_with_resize(checkpoint, splits, CONTRACT_RESIZE, batch_size)
    opencv, b = evaluate_with_resize(checkpoint, splits, OPENCV_RESIZE, batch_size)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {
        "benchmark": "resize cost: contract (antialiased bilinear) vs OpenCV INTER_LINEAR, same checkpoint",
        "date": dt.date.today().isoformat(),
        "command": " ".join(["benchmarks/bench_resize.py", *sys.argv[1:]]) if sys.argv[1:] else None,
        "checkpoint": str(checkpoint), "weights_hash": weights_hash(module), "backbone": config.model.backbone,
        "input_size": [int(config.data.height), int(config.data.width)], "dataset": fmt, "root": str(root),
        "num_query": len(splits.query), "num_gallery": len(splits.gallery),
        "eval": {"distance": config.eval.distance, "normalize": bool(config.eval.normalize), "flip": bool(config.eval.flip),
                 "cross_camera": bool(config.eval.cross_camera)},
        "contract_resize": contract, "opencv_linear": opencv,
        "delta_mAP": opencv["mAP"] - contract["mAP"], "delta_rank1": opencv.get("rank1", 0.0) - contract.get("rank1", 0.0),
        "feature_cosine": {"mean": float(cosine.mean()), "min": float(cosine.min()), "p05": float(np.percentile(cosine, 5))},
        "contract": {k: v for k, v in meta.items() if k.startswith("resize")},
        "machine": describe_machine(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a `reid train` checkpoint (e.g. .../last.pt)")
    parser.add_argument("--root", type=Path, required=True, help="dataset folder (Market-1501-v15.09.15)")
    parser.add_argument("--format", default="market1501")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--output", type=Path, help="results JSON (default benchmarks/results/resize_<root>_<date>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.checkpoint, args.root, args.format, args.batch_size)
    out = args.output or REPO / "benchmarks" / "results" / f"resize_{args.root.name.split('-')[0].lower()}_{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("contract_resize", "opencv_linear"):
        r = result[key]
        print(f"{key:16s} mAP {r['mAP']:.4f}  rank-1 {r.get('rank1', float('nan')):.4f}")
    print(f"delta (opencv - contract): mAP {result['delta_mAP']:+.4f}, rank-1 {result['delta_rank1']:+.4f}; "
          f"feature cosine mean {result['feature_cosine']['mean']:.4f} min {result['feature_cosine']['min']:.4f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
