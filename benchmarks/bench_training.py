"""Benchmark of the training step: steady-state images per second of the real objective, per backbone.

For every backbone of ``--backbones`` the script builds what the trainer builds for the recipe
defaults of :class:`reid.config.Config` (last stride 1, BN-neck, label-smoothed ID loss + batch-hard
triplet loss, Adam; 751 classes like Market-1501; random weights: the cost does not depend on them)
and times the trainer's own step, :func:`reid.engine.step.train_step`, imported and called as the
training loop calls it, over the state :func:`reid.engine.state.build_state` builds: ``zero_grad``,
forward under the AMP policy's autocast, losses summed in float32, backward, the centre loss's own
SGD step (the recipe's default) and the main optimiser's step. Model and input are ``channels_last``
on CUDA when ``model.channels_last`` (the default), as in the trainer; ``--compile`` wraps the
objective in ``torch.compile`` as ``train.compile`` does (:func:`reid.engine.state.set_frozen`).

The input is a random P x K batch (default 16 x 4 = 64 images of 256 x 128) already on the device, so
the number is the model's training throughput with no input pipeline. ``--with-augment`` adds the
GPU-resident input pipeline inside the timed step: a ``TrainLoader`` over an ``ImageStore`` of random
uint8 images on the device (``PKSampler`` indices, one ``index_select``, the batch augmentation of
:class:`reid.data.transforms.TrainAugment`), i.e. the whole step of a ``gpu``-pipeline training run.
The store holds its images at Market-1501's native 128 x 64 (``--store-height``/``--store-width``), as
``ImageStore`` keeps them, so every batch is upsampled to the input size inside the step, as in training.

Numerics: ``--precision`` measures several in one process, each a row per backbone: ``bf16``/``fp16``
(autocast, TF32 for what stays float32, as the trainer), ``tf32`` (float32 with TF32 matmuls and
convolutions, the trainer's setting with ``train.amp: off`` on CUDA) and ``fp32`` (TF32 off). Without
it, ``--amp`` and ``--tf32/--no-tf32`` give one setting.

Timing: ``--warmup`` steps (default 3, 10 with ``--compile``: compilation and cuDNN autotuning happen
there), then ``--steps`` timed steps; the device is synchronised only at the two ends of the timed
window, so the host never waits inside it, as in training. ``--repeats N`` times N such windows and
reports the fastest (all are recorded): on a shared machine other jobs only ever slow a window down.
Reported per backbone: images/s, ms per step, seconds per Market-1501 epoch (12,936 // batch full
P x K steps), minutes for 120 epochs (the recipe), peak GPU memory in GiB
(``torch.cuda.max_memory_allocated``; None elsewhere), AMP mode and channels_last. The same script
runs unchanged on a CUDA machine; nothing is hard-coded to a device.

Usage:
    .venv/bin/python benchmarks/bench_training.py --device cuda --amp bf16                # 256x128, all backbones
    .venv/bin/python benchmarks/bench_training.py --device cuda --amp bf16 --compile --with-augment
    .venv/bin/python benchmarks/bench_training.py --device cuda --precision bf16 tf32 fp32 --backbones resnet50
    .venv/bin/python benchmarks/bench_training.py --device cpu --threads 2 --height 128 --width 64 --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine, synchronize  # noqa: E402
MARKET_TRAIN = 12_936
MARKET_IDS = 751
DEFAULT_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50_ibn_a", "resnet101_ibn_a")

from reid.config import Config, validate  # noqa: E402
from reid.engine.device import configure_backends, resolve_device  # noqa: E402
from reid.engine.distributed import init_from_env  # noqa: E402
from reid.engine.state import build_state, set_frozen  # noqa: E402
from reid.engine.step import train_step  # noqa: E402


def machine(device: torch.device) -> dict[str, Any]:
    """This machine and ``device`` (see benchmarks/machine_info.py)."""
    return describe_machine(device)


PRECISIONS = {"bf16": ("bf16", True), "fp16": ("fp16", True), "tf32": ("off", True), "fp32": ("off", False)}


def config_for(args: argparse.Namespace, backbone: str, amp: str | None = None) -> Config:
    """The recipe defaults with the benchmark's backbone, batch, input size and numerics."""
    return validate({
        "data": {"height": args.height, "width": args.width, "ids_per_batch": args.batch_p,
                 "instances_per_id": args.batch_k},
        "model": {"backbone": backbone, "pretrained": "none", "channels_last": args.channels_last is not False},
        "train": {"amp": amp or args.amp, "compile": args.compile, "seed": 0},
    }, "benchmark config")


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (``configure_backends`` turns it on)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if enabled else "highest")
        torch.backends.cudnn.allow_tf32 = enabled


def synthetic_batches(cfg: Config, device: torch.device,
                      channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One random normalised P x K batch on the device, yielded forever (no input pipeline)."""
    p, k = cfg.data.ids_per_batch, cfg.data.instances_per_id
    g = torch.Generator().manual_seed(0)
    images = torch.randn(p * k, 3, cfg.data.height, cfg.data.width, generator=g).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    ids = torch.randperm(MARKET_IDS, generator=g)[:p]
    labels = ids.repeat_interleave(k).to(device)
    while True:
        yield images, labels


def augmented_batches(cfg: Config, device: torch.device, channels_last: bool, store_images: int,
                      store_size: tuple[int, int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The ``gpu`` input pipeline: a ``TrainLoader`` over a device-resident uint8 store, epoch after epoch.

    The store is at ``store_size`` (Market's native 128 x 64 by default): the augmentation resizes each
    batch to the input size, exactly what training from a native-size store does.
    """
    from reid.data.image_store import ImageStore
    from reid.data.loaders import TrainLoader
    from reid.data.sampler import PKSampler
    from reid.data.transforms import TrainAugment

    p, k = cfg.data.ids_per_batch, cfg.data.instances_per_id
    num_ids = max(p, round(store_images * MARKET_IDS / MARKET_TRAIN))  # Market's density: ~17 images per id
    labels = [i % num_ids for i in range(store_images)]
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (store_images, 3, *store_size), dtype=torch.uint8, generator=g)
    store = ImageStore(pixels, torch.tensor(labels), list(range(store_images))).to(device)
    loader = TrainLoader(sampler=PKSampler(labels, p, k, seed=0), augment=TrainAugment(cfg.data), device=device,
                         seed=0, num_classes=num_ids, pipeline="gpu", max_steps=None, channels_last=channels_last,
                         store=store)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_backbone(args: argparse.Namespace, backbone: str, device: torch.device,
                   precision: str | None = None) -> dict[str, Any]:
    amp_name, tf32 = PRECISIONS[precision] if precision else (None, args.tf32 is not False)
    cfg = config_for(args, backbone, amp_name)
    state = build_state(cfg, MARKET_IDS, device, init_from_env(device), make_loader=None)
    set_tf32(device, tf32)  # after build_state, whose configure_backends sets the trainer's TF32 default
    channels_last = cfg.model.channels_last and (device.type == "cuda" or args.channels_last is True)
    if channels_last and not state.channels_last:  # --channels-last on the CPU
        state.model.to(memory_format=torch.channels_last)
        state.channels_last = True
    set_frozen(state, False)  # as the loop's first epoch: DDP (a no-op here) and torch.compile wrapping
    state.objective.train()
    amp = state.amp
    batch = cfg.data.batch_size
    params_m = sum(p.numel() for p in state.model.parameters()) / 1e6

    if args.with_augment:
        batches = augmented_batches(cfg, device, channels_last, args.store_images,
                                    (args.store_height, args.store_width))
    else:
        batches = synthetic_batches(cfg, device, channels_last)

    def step() -> torch.Tensor:
        images, labels = next(batches)
        return train_step(state, images, labels).total.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = args.warmup if args.warmup is not None else (10 if args.compile else 3)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - started

    windows = []
    total = None
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            total = step()
        synchronize(device)
        windows.append(time.perf_counter() - start)
    seconds = min(windows)  # the window least disturbed by other work on the machine

    loss = float(total) if total is not None else float("nan")
    s_per_step = seconds / args.steps
    epoch_steps = MARKET_TRAIN // batch
    epoch_s = epoch_steps * s_per_step
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "backbone": backbone,
        "params_m": round(params_m, 2),
        "batch": batch,
        "input": f"{cfg.data.height}x{cfg.data.width}",
        "precision": precision or amp.name,
        "amp": amp.name,
        "tf32": bool(tf32 and device.type == "cuda"),
        "channels_last": channels_last,
        "compile": bool(cfg.train.compile),
        "with_augment": bool(args.with_augment),
        "store": f"{args.store_height}x{args.store_width}" if args.with_augment else None,
        "warmup_steps": warmup,
        "warmup_s": round(warmup_s, 3),
        "steps": args.steps,
        "repeats": args.repeats,
        "window_seconds": [round(w, 4) for w in windows],
        "seconds": round(seconds, 4),
        "images_per_s": round(batch * args.steps / seconds, 2),
        "ms_per_step": round(1000 * s_per_step, 2),
        "market_epoch_steps": epoch_steps,
        "market_epoch_s": round(epoch_s, 1),
        "epochs": cfg.train.epochs,
        "projected_minutes": round(epoch_s * cfg.train.epochs / 60, 1),
        "peak_memory_gb": None if peak is None else round(peak, 2),
        "last_loss": loss if math.isfinite(loss) else None,
    }


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ["backbone", "img/s", "ms/step", "s/epoch", "min/120ep", "peak GB", "precision", "ch_last", "compile",
            "augment"]
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["backbone"], "error: " + r["error"][:60]] + [""] * (len(head) - 2))
            continue
        peak = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.2f}"
        lines.append([r["backbone"], f"{r['images_per_s']:.1f}", f"{r['ms_per_step']:.1f}",
                      f"{r['market_epoch_s']:.1f}", f"{r['projected_minutes']:.1f}", peak, r["precision"],
                      str(r["channels_last"]), str(r["compile"]), str(r["with_augment"])])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N")
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                        help="as train.amp: auto = bf16 (or fp16) on CUDA, off elsewhere")
    parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=None,
                        help="numerics to measure, one row each per backbone: bf16/fp16 (autocast), tf32 (float32, "
                             "TF32 matmuls and convolutions), fp32 (TF32 off); overrides --amp and --tf32")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                        help="TF32 for float32 matmuls/convolutions on CUDA (default: on, as the trainer)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the objective (as train.compile)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on CUDA only, as the trainer (model.channels_last)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed windows of --steps steps; the fastest is reported, all are recorded")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, 10 with --compile)")
    parser.add_argument("--batch-p", type=int, default=16, help="P: identities per batch")
    parser.add_argument("--batch-k", type=int, default=4, help="K: images per identity")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--with-augment", action="store_true",
                        help="include the gpu input pipeline (store index_select + TrainAugment) in the step")
    parser.add_argument("--store-images", type=int, default=2048, help="images of the store for --with-augment")
    parser.add_argument("--store-height", type=int, default=128,
                        help="height of the stored images for --with-augment (Market-1501's native 128)")
    parser.add_argument("--store-width", type=int, default=64,
                        help="width of the stored images for --with-augment (Market-1501's native 64)")
    parser.add_argument("--output", default=None,
                        help="JSON path (default benchmarks/results/training_<device type>_<date>.json)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write the JSON; returns the report."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configure_backends(device, deterministic=False)
    script = sys.argv[0] if argv is None else str(Path(__file__).relative_to(REPO))
    argv_list = list(sys.argv[1:] if argv is None else argv)
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, script, *argv_list]),
        "torch": torch.__version__,
        "device": str(device),
        "machine": machine(device),
        "settings": {
            "batch": f"P={args.batch_p} x K={args.batch_k}", "input": f"{args.height}x{args.width}",
            "amp": args.amp, "compile": args.compile, "channels_last": args.channels_last,
            "with_augment": args.with_augment, "precision": args.precision, "tf32": args.tf32,
            "store": f"{args.store_height}x{args.store_width}" if args.with_augment else None,
            "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
            "num_classes": MARKET_IDS, "market_train_images": MARKET_TRAIN,
            "recipe": "ID (label smoothing 0.1) + batch-hard triplet (margin 0.3), BN-neck, last stride 1, Adam 3.5e-4",
        },
        "results": [],
    }
    for backbone in args.backbones:
        for precision in args.precision or [None]:
            print(f"[{backbone}] {args.batch_p}x{args.batch_k} at {args.height}x{args.width} on {device}"
                  f"{f', {precision}' if precision else ''} ...", flush=True)
            try:
                result = bench_backbone(args, backbone, device, precision)
            except torch.cuda.OutOfMemoryError as exc:
                result = {"backbone": backbone, "precision": precision,
                          "error": f"out of memory: {str(exc).splitlines()[0]}"}
            report["results"].append(result)
            print(f"[{backbone}] {json.dumps(result)}", flush=True)
            release(device)

    if args.output:
        path = Path(args.output)
    else:
        path = REPO / "benchmarks" / "results" / f"training_{device.type}_{dt.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report["results"]))
    print(f"wrote {path}")
    report["output"] = str(path)
    return report


if __name__ == "__main__":
    main()
