"""Identity switches of BoxMOT's ReID trackers on a synthetic sequence: a trained model vs the same one untrained.

The sequence is :func:`reid.data.synthetic_sequence.generate_sequence` (people the model never saw, walking
in pairs, hiding each other and turning back, with ideal detections in ``det/det.txt``). The trained
model is ``--checkpoint``; the untrained one is the same architecture and config at its initial weights
(``torch.manual_seed(train.seed)``, no pretraining), saved as a checkpoint and exported the same way.
Both are exported with ``reid export --for boxmot`` and run in each tracker of ``--trackers`` with each
resize of ``--resizes`` (``contract``: BoxMOT told to resize as reid does; ``boxmot``: its own
``cv2.INTER_LINEAR``). Scores come from motmetrics (identity switches, MOTA, IDF1) against the
sequence's ground truth.

Usage (after scripts/track_example.sh, which trains the model):
    .venv/bin/python benchmarks/bench_tracking.py --checkpoint .track-example/pipeline/models/tracking/last.pt

Default output: ``benchmarks/results/tracking_synthetic_<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine  # noqa: E402


def untrained_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The checkpoint's architecture and config at its initial weights, as a ``reid train`` checkpoint."""
    from reid.config import validate
    from reid.checkpoint import read_entry, save_checkpoint
    from reid.models.reid_model import build_model

    config = validate(read_entry(checkpoint, "config"), str(checkpoint))
    num_classes = int(read_entry(checkpoint, "num_classes"))
    torch.manual_seed(int(config.train.seed))
    model = build_model(config, num_classes)
    return save_checkpoint({"config": config.model_dump(mode="json"), "num_classes": num_classes, "epoch": 0,
                            "global_step": 0, "model": model.state_dict(), "mlflow_run_id": None,
                            "data_hash": read_entry(checkpoint, "data_hash")}, out)


def parse_tracker(spec: str) -> tuple[str, dict[str, float]]:
    """``botsort`` or ``botsort:appearance_thresh=0.5,match_thresh=0.8`` -> (name, numeric options)."""
    name, _, rest = spec.partition(":")
    options = {k: float(v) for k, v in (item.split("=", 1) for item in rest.split(",") if item)}
    return name, options


def run(checkpoint: Path, trackers: Sequence[str], resizes: Sequence[str], num_pairs: int, num_frames: int,
        seed: int, work: Path) -> dict[str, Any]:
    from reid.data.synthetic_sequence import generate_sequence
    from reid.deploy.boxmot_compat import BOXMOT_DEFAULT_PREPROCESS, PREPROCESS_NAME
    from reid.deploy.export import export_checkpoint
    from reid.deploy.mot import identity_metrics, run_tracker

    info = generate_sequence(work / "sequence", num_pairs=num_pairs, num_frames=num_frames, seed=seed)
    frames = sorted((info.root / "img1").glob("*.jpg"))[:8]
    models = {"trained": checkpoint, "untrained": untrained_checkpoint(checkpoint, work / "untrained" / "last.pt")}
    exports = {}
    for name, ckpt in models.items():
        path, _, report, _ = export_checkpoint(ckpt, "onnx", work / f"{name}.onnx", images=frames, num_images=8,
                                               for_consumer="boxmot")
        exports[name] = {"file": path, "boxmot_check": report.consumer}
    results = []
    for spec in trackers:
        tracker, options = parse_tracker(spec)
        for resize in resizes:
            preprocess = PREPROCESS_NAME if resize == "contract" else BOXMOT_DEFAULT_PREPROCESS
            for name in models:
                scores = identity_metrics(info.root / "gt" / "gt.txt",
                                          run_tracker(info.root, exports[name]["file"], tracker, preprocess, options=options))
                results.append({"tracker": tracker, "options": options, "resize": resize, "model": name,
                                **{k: (int(v) if k.startswith("num_") else round(v, 4)) for k, v in scores.items()}})
                print(f"{spec:32s} {resize:8s} {name:9s} ID switches {int(scores['num_switches']):3d}  "
                      f"MOTA {scores['mota']:.3f}  IDF1 {scores['idf1']:.3f}", flush=True)
    return {
        "benchmark": "identity switches of BoxMOT trackers, trained vs untrained reid model, synthetic sequence",
        "date": dt.date.today().isoformat(),
        "command": " ".join(["benchmarks/bench_tracking.py", *sys.argv[1:]]),
        "checkpoint": str(checkpoint),
        "sequence": {"generator": "reid.data.synthetic_sequence.generate_sequence", "num_pairs": num_pairs,
                     "num_frames": num_frames, "seed": seed, "frame_size": list(info.frame_size),
                     "num_people": info.num_people},
        "boxmot_checks": {name: e["boxmot_check"] for name, e in exports.items()},
        "results": results,
        "machine": describe_machine(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained `reid train` checkpoint (last.pt)")
    parser.add_argument("--trackers", nargs="+", default=["botsort", "botsort:appearance_thresh=0.5", "strongsort"],
                        help="tracker names, each with optional BoxMOT arguments: botsort:appearance_thresh=0.5")
    parser.add_argument("--resizes", nargs="+", default=["contract", "boxmot"], choices=["contract", "boxmot"])
    parser.add_argument("--num-pairs", type=int, default=2)
    parser.add_argument("--num-frames", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reid-track-bench-") as tmp:
        result = run(args.checkpoint, args.trackers, args.resizes, args.num_pairs, args.num_frames, args.seed, Path(tmp))
    out = args.output or REPO / "benchmarks" / "results" / f"tracking_synthetic_{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
