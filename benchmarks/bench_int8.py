"""int8 vs fp32 on this CPU: ONNX Runtime throughput per backbone, and accuracy on a real checkpoint.

Two parts, each optional:

* **speed** (``--speed``): for each ``backbone@HxW`` of ``--models`` the inference module (backbone +
  BN-neck, what ``reid export`` writes) is built with random weights (speed does not depend on the
  values), exported to ONNX, and quantised as ``reid export --precision int8`` does
  (:func:`reid.deploy.quantize.quantize_file`: static QDQ, per-channel int8 weights) twice: uint8
  activations (U8S8) and int8 activations (S8S8). Calibration batches are ``--calibration-images``
  real training images of ``--manifest`` (seeded draw), preprocessed by the contract. Timed with ONNX
  Runtime's CPU provider and ``--threads`` intra-op threads: batch-1 latency (median ms over
  ``--iters`` calls after 2 untimed ones) and batch-``--batch`` throughput (img/s over ``--batch-iters``
  calls after one untimed one);
* **accuracy** (``--checkpoint``): :func:`reid.deploy.export.export_int8` on a trained checkpoint for
  each activation type: mAP/rank-1 of int8 and fp32 on the manifest's query/gallery, feature cosine,
  img/s (the report ``reid export --precision int8`` prints).

Results go to ``benchmarks/results/int8_cpu_<date>.json`` with the machine description, written after
every measurement so a run stopped early keeps what it measured.

Usage:
    nice -n 5 .venv/bin/python benchmarks/bench_int8.py --speed --manifest pipeline/data/manifest.json
    nice -n 5 .venv/bin/python benchmarks/bench_int8.py --checkpoint pipeline/models/baseline/last.pt \
        --manifest pipeline/data/manifest.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine  # noqa: E402


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _timed(fn: Any, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench_speed(args: argparse.Namespace, spec: str, folder: Path) -> dict[str, Any]:
    from reid.config import validate
    from reid.deploy.contract import build_contract
    from reid.models.inference import weights_hash
    from reid.deploy.embedder import load_model
    from reid.deploy.export import export_module
    from reid.models.inference import InferenceModule
    from reid.deploy.quantize import calibration_paths, feature_cosine, preprocessed_batches, quantize_file
    from reid.models.reid_model import build_model

    backbone, size = spec.split("@")
    height, width = (int(v) for v in size.split("x"))
    cfg = validate({"data": {"height": height, "width": width}, "model": {"backbone": backbone, "pretrained": "none"}},
                   "benchmark config")
    torch.manual_seed(0)
    module = InferenceModule(build_model(cfg, 751)).eval()
    meta = build_contract(cfg, module.embedding_dim, data_hash=None, run_id=None, checkpoint=None,
                          weights=weights_hash(module))
    fp32 = export_module(module, "onnx", folder / f"{backbone}_{size}.onnx", meta, (height, width))
    embedder = load_model(fp32, device="cpu", flip=False)
    if args.manifest:
        from reid.data.manifest import load_manifest

        train = [s.path for s in load_manifest(args.manifest).train]
        batches = preprocessed_batches(embedder, calibration_paths(train, args.calibration_images, 0))
        calibration = f"{args.calibration_images} Market-1501 training images (seed 0)"
    else:
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(32, 3, height, width, generator=gen).numpy()]
        calibration = "32 random normal inputs"
    files = {"fp32": fp32}
    for acts in ("uint8", "int8"):
        files[f"int8_{acts}"] = quantize_file(fp32, folder / f"{backbone}_{size}_{acts}.onnx", batches,
                                              {**embedder.metadata, "precision": "int8"}, acts)
    pool = np.concatenate(batches)
    one = pool[:1]
    many = pool[np.arange(args.batch) % pool.shape[0]]
    result: dict[str, Any] = {"model": spec, "embedding_dim": module.embedding_dim, "calibration": calibration,
                              "weights": "random (speed only)"}
    outputs = {}
    for name, path in files.items():
        session = _session(path, args.threads)
        run = lambda x, s=session: s.run(None, {"images": x})[0]  # noqa: E731
        lat = _timed(lambda: run(one), 2, args.iters)
        thr = _timed(lambda: run(many), 1, args.batch_iters)
        outputs[name] = run(many)
        result[name] = {"file_mib": round(path.stat().st_size / 2**20, 1),
                        "batch1_ms_median": round(1000 * statistics.median(lat), 2),
                        "batch1_img_per_s": round(1 / statistics.median(lat), 1),
                        f"batch{args.batch}_img_per_s": round(args.batch * len(thr) / sum(thr), 1),
                        "batch1_ms_all": [round(1000 * t, 2) for t in lat],
                        f"batch{args.batch}_s_all": [round(t, 3) for t in thr]}
        print(f"  {spec} {name}: {result[name]['batch1_ms_median']} ms batch 1, "
              f"{result[name][f'batch{args.batch}_img_per_s']} img/s batch {args.batch}", flush=True)
    for acts in ("uint8", "int8"):
        key = f"int8_{acts}"
        result[key]["speedup_batch1"] = round(result["fp32"]["batch1_ms_median"] / result[key]["batch1_ms_median"], 2)
        result[key][f"speedup_batch{args.batch}"] = round(
            result[key][f"batch{args.batch}_img_per_s"] / result["fp32"][f"batch{args.batch}_img_per_s"], 2)
        cos = feature_cosine(outputs[key], outputs["fp32"])
        result[key]["cosine_to_fp32_random_weights"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5)}
    return result


def bench_accuracy(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    from reid.deploy.export import export_int8

    out = []
    for acts in args.activations:
        started = time.perf_counter()
        _, _, parity, report, _ = export_int8(args.checkpoint, folder / f"model-int8-{acts}.onnx", manifest=args.manifest,
                                             calibration_images=args.calibration_images, seed=0, activations=acts,
                                             speed_batch=args.batch)
        row = {"checkpoint": str(args.checkpoint), "fp32_parity_min_cosine": parity.min_cosine, **report.to_dict(),
               "wall_s": round(time.perf_counter() - started, 1)}
        row.pop("file"), row.pop("fp32_file")
        print(report.summary(), flush=True)
        out.append(row)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", action="store_true", help="time random-weight models (--models)")
    parser.add_argument("--models", nargs="+", default=["resnet50@256x128", "resnet18@64x32"])
    parser.add_argument("--checkpoint", type=Path, default=None, help="score int8 vs fp32 of this checkpoint")
    parser.add_argument("--manifest", type=Path, default=None, help="calibration images (and query/gallery with --checkpoint)")
    parser.add_argument("--activations", nargs="+", default=["uint8", "int8"])
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch-iters", type=int, default=3)
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. the CPU was shared)")
    parser.add_argument("--output", default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime

    from reid.deploy.quantize import cpu_has_vnni

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "benchmark": "int8", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**describe_machine("cpu"), "onnxruntime": onnxruntime.__version__, "vnni": cpu_has_vnni()},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "note": args.note,
        "speed": [], "accuracy": []}
    path = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"int8_cpu_{dt.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.speed:
            for spec in args.models:
                report["speed"].append(bench_speed(args, spec, Path(tmp)))
                path.write_text(json.dumps(report, indent=2) + "\n")
        if args.checkpoint is not None:
            report["accuracy"] = bench_accuracy(args, Path(tmp))
            path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
