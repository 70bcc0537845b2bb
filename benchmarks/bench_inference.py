"""CPU inference throughput of the exported model: PyTorch vs ONNX Runtime, per backbone.

For each backbone the inference module (backbone + BN-neck, no classifier: what `reid export`
writes) is built with random weights (speed does not depend on the values), exported to ONNX by
:func:`reid.deploy.export.export_module` into a temporary folder, and timed on random normalised
input at ``--height`` x ``--width`` (256 x 128, the recipe's size):

* batch-1 latency: median milliseconds over ``--iters`` calls after ``--warmup`` untimed ones;
* batch-``--batch`` throughput: images per second over ``--batch-iters`` calls (after ``--batch-warmup``).

PyTorch runs the module in eval mode under ``torch.inference_mode`` with ``--threads`` threads;
ONNX Runtime runs the CPU provider with the same number of intra-op threads. The two outputs are also
compared (max |diff|) so a fast but wrong runtime shows. Results go to
``benchmarks/results/inference_cpu_<date>.json`` with the machine description.

Usage:
    .venv/bin/python benchmarks/bench_inference.py --threads 2
    .venv/bin/python benchmarks/bench_inference.py --backbones resnet18 --iters 5 --batch-iters 1
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
from reid.config import validate  # noqa: E402
from reid.deploy.contract import build_contract  # noqa: E402
from reid.models.inference import weights_hash  # noqa: E402
from reid.deploy.export import export_module  # noqa: E402
from reid.models.inference import InferenceModule  # noqa: E402
from reid.models.reid_model import build_model  # noqa: E402

DEFAULT_BACKBONES = ("resnet18", "resnet50", "resnet50_ibn_a")


def _time(fn: Any, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_backbone(args: argparse.Namespace, backbone: str, folder: Path) -> dict[str, Any]:
    import onnxruntime as ort

    cfg = validate({"data": {"height": args.height, "width": args.width},
                    "model": {"backbone": backbone, "pretrained": "none"}}, "benchmark config")
    torch.manual_seed(0)
    module = InferenceModule(build_model(cfg, 751)).eval()
    meta = build_contract(cfg, module.embedding_dim, data_hash=None, run_id=None, checkpoint=None,
                          weights=weights_hash(module))
    path = export_module(module, "onnx", folder / f"{backbone}.onnx", meta, (args.height, args.width))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    one = torch.randn(1, 3, args.height, args.width, generator=gen)
    many = torch.randn(args.batch, 3, args.height, args.width, generator=gen)

    def torch_run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return module(x).numpy()

    def ort_run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {"images": x.numpy()})[0]

    result: dict[str, Any] = {"backbone": backbone, "embedding_dim": module.embedding_dim,
                              "onnx_mib": round(path.stat().st_size / 2**20, 1)}
    for name, run in (("pytorch", torch_run), ("onnxruntime", ort_run)):
        lat = _time(lambda: run(one), args.warmup, args.iters)
        thr = _time(lambda: run(many), args.batch_warmup, args.batch_iters)
        result[name] = {"batch1_ms_median": round(1000 * statistics.median(lat), 2),
                        "batch1_ms_all": [round(1000 * t, 2) for t in lat],
                        f"batch{args.batch}_img_per_s": round(args.batch * len(thr) / sum(thr), 2),
                        f"batch{args.batch}_s_all": [round(t, 3) for t in thr]}
    result["max_abs_diff"] = float(np.abs(torch_run(many) - ort_run(many)).max())
    return result


def table(results: list[dict[str, Any]], batch: int) -> str:
    lines = [f"| backbone | PyTorch batch-1 ms | ORT batch-1 ms | PyTorch batch-{batch} img/s | ORT batch-{batch} img/s | max abs diff |",
             "|---|---|---|---|---|---|"]
    for r in results:
        p, o = r["pytorch"], r["onnxruntime"]
        lines.append(f"| {r['backbone']} | {p['batch1_ms_median']} | {o['batch1_ms_median']} | "
                     f"{p[f'batch{batch}_img_per_s']} | {o[f'batch{batch}_img_per_s']} | {r['max_abs_diff']:.2g} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--threads", type=int, default=2, help="torch threads and ORT intra-op threads")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10, help="timed batch-1 calls")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batch-1 calls first")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch-iters", type=int, default=3, help="timed batch calls")
    parser.add_argument("--batch-warmup", type=int, default=1, help="untimed batch calls first")
    parser.add_argument("--output", default=None, help="JSON path (default benchmarks/results/inference_cpu_<date>.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "inference", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
                              "machine": describe_machine("cpu"), "settings": vars(args), "results": []}
    import onnxruntime

    report["machine"]["onnxruntime"] = onnxruntime.__version__
    path = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"inference_cpu_{dt.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            result = bench_backbone(args, backbone, Path(tmp))
            report["results"].append(result)
            print(f"[{backbone}] {json.dumps(result)}", flush=True)
            # Written after every backbone: a run stopped early (shared CPU, timeout) keeps what it measured.
            path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report["results"], args.batch))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
