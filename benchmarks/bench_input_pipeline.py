"""Benchmark of the training input pipeline: images per second delivered to the training step.

Cases (each yields normalised float batches of P x K images at the input size on ``--device``):

* ``tensor``: the GPU-resident path. A Market-size uint8 store (12,936 x 3 x 128 x 64, random pixels:
  the content does not change the cost) lives on the device; a step is the ``PKSampler`` batch, one
  ``index_select``, the resize to the input size and the batch augmentation of
  :mod:`reid.data.transforms`, all on the device.
* ``cpu_loader``: our ``cpu`` pipeline, ``build_train_loader(..., input_pipeline="cpu")``: DataLoader
  workers decode the JPEGs to uint8, the batch is moved to the device and augmented there.
* ``reference_pil``: the classic strong-baseline pipeline for comparison: per-image PIL/torchvision
  transforms (resize, flip, pad, crop, to-tensor, normalise, random erasing) in DataLoader workers.
* ``store_build``: the one-off cost of decoding the JPEGs into an ``ImageStore`` with a thread pool.

The JPEG cases read the real Market-1501 ``bounding_box_train`` when it is found (``--market-root``,
else ``../shared/data``), otherwise a synthetic set of 128 x 64 JPEGs written to a temporary folder.
The same script runs unchanged on a CUDA machine (``--device auto`` picks it), where the tensor path
is the one that keeps the GPU fed.

Usage:
    .venv/bin/python benchmarks/bench_input_pipeline.py                       # all cases, writes JSON
    .venv/bin/python benchmarks/bench_input_pipeline.py --tensor-steps 50 --loader-steps 20 --workers 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine_info import describe_machine, synchronize  # noqa: E402
DEFAULT_MARKET = REPO.parent / "shared" / "data" / "Market-1501-v15.09.15"
MARKET_TRAIN = 12_936
MARKET_IDS = 751

from reid.config import validate  # noqa: E402
from reid.data.image_store import ImageStore  # noqa: E402
from reid.data.loaders import TrainLoader, build_train_loader  # noqa: E402
from reid.data.sampler import PKSampler  # noqa: E402
from reid.data.transforms import TrainAugment  # noqa: E402


def machine(device: torch.device) -> dict[str, Any]:
    """This machine and ``device`` (see benchmarks/machine_info.py)."""
    return describe_machine(device)


def market_like_labels(num_images: int, seed: int) -> list[int]:
    """Identity labels with Market-like imbalance and density (751 ids for 12,936 images, at least 2 each)."""
    num_ids = max(2, min(num_images // 2, round(num_images * MARKET_IDS / MARKET_TRAIN)))
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(num_ids, generator=g) ** 2 + 0.05
    counts = (weights / weights.sum() * (num_images - 2 * num_ids)).floor().long() + 2
    counts[: num_images - int(counts.sum())] += 1
    return torch.repeat_interleave(torch.arange(num_ids), counts).tolist()


def epochs(loader: Any) -> Iterator[Any]:
    """Batches of consecutive epochs, forever."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        elif hasattr(loader, "batch_sampler"):
            loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def timed(make_batches: Iterator[Any], steps: int, warmup: int, device: torch.device,
          to_device: Callable[[Any], Any] = lambda b: b) -> dict[str, Any]:
    for _ in range(warmup):
        to_device(next(make_batches))
    synchronize(device)
    start = time.perf_counter()
    images = 0
    for _ in range(steps):
        batch = to_device(next(make_batches))
        images += int(batch[0].shape[0])
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"steps": steps, "warmup_steps": warmup, "images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 1)}


def config_for(args: argparse.Namespace, pipeline: str) -> Any:
    return validate({
        "data": {"height": args.height, "width": args.width, "ids_per_batch": args.p, "instances_per_id": args.k,
                 "num_workers": args.workers, "input_pipeline": pipeline},
        "model": {"channels_last": True},
        "train": {"seed": 0},
    }, "benchmark config")


# -- cases ------------------------------------------------------------------------------------------
def bench_tensor(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    labels = market_like_labels(args.num_images, seed=0)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (args.num_images, 3, 128, 64), dtype=torch.uint8, generator=g)
    store = ImageStore(images, torch.tensor(labels), list(range(args.num_images))).to(device)
    cfg = config_for(args, "gpu")
    loader = TrainLoader(sampler=PKSampler(labels, args.p, args.k, seed=0), augment=TrainAugment(cfg.data),
                         device=device, seed=0, num_classes=len(set(labels)), pipeline="gpu", max_steps=None,
                         channels_last=device.type == "cuda", store=store)
    result = timed(epochs(loader), args.tensor_steps, args.warmup, device)
    result.update({"store_shape": list(images.shape), "store_mb": round(store.nbytes / 2**20, 1),
                   "output": f"{args.p * args.k}x3x{args.height}x{args.width} float32"})
    return result


def jpeg_source(args: argparse.Namespace, workdir: Path) -> tuple[SimpleNamespace, str]:
    """A manifest-like object over real Market-1501 train JPEGs, or over synthetic ones written here."""
    from reid.data.samples import Sample

    root = Path(args.market_root) if args.market_root else DEFAULT_MARKET
    if (root / "bounding_box_train").is_dir():
        from reid.data.datasets import read_dataset
        from reid.data.manifest import build_manifest

        manifest = build_manifest(read_dataset("market1501", root))
        n = min(args.num_images, len(manifest.train))
        samples, labels = manifest.train[:n], manifest.train_labels[:n]
        source = f"real Market-1501 bounding_box_train from {root} ({n} images)"
    else:
        from PIL import Image

        labels = market_like_labels(args.num_images, seed=0)
        g = torch.Generator().manual_seed(2)
        samples = []
        for i, label in enumerate(labels):
            base = torch.randint(0, 256, (3,), generator=g, dtype=torch.uint8)
            noise = torch.randint(0, 40, (128, 64, 3), generator=g, dtype=torch.uint8)
            pixels = (base.view(1, 1, 3) + noise).numpy()
            path = workdir / f"{label:04d}_c1s1_{i:06d}_00.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            samples.append(Sample(str(path), label, 1))
        source = f"synthetic 128x64 JPEGs ({len(samples)} images)"
    return SimpleNamespace(train=samples, train_labels=labels, num_classes=len(set(labels))), source


def bench_cpu_loader(args: argparse.Namespace, device: torch.device, manifest: SimpleNamespace) -> dict[str, Any]:
    loader = build_train_loader(manifest, config_for(args, "cpu"), device)
    result = timed(epochs(loader), args.loader_steps, args.warmup, device)
    result["workers"] = args.workers
    return result


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[Any], labels: list[int], transform: Callable[[Any], torch.Tensor]) -> None:
        self.samples, self.labels, self.transform = samples, labels, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.samples[i].path) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def bench_reference(args: argparse.Namespace, device: torch.device, manifest: SimpleNamespace) -> dict[str, Any]:
    import torchvision.transforms as T

    cfg = config_for(args, "cpu").data
    transform = T.Compose([
        T.Resize((args.height, args.width)), T.RandomHorizontalFlip(cfg.flip_prob), T.Pad(cfg.padding),
        T.RandomCrop((args.height, args.width)), T.ToTensor(), T.Normalize(cfg.mean, cfg.std),
        T.RandomErasing(cfg.random_erasing_prob, scale=(0.02, 0.4), ratio=(0.3, 3.33), value=list(cfg.mean)),
    ])
    sampler = PKSampler(manifest.train_labels, args.p, args.k, seed=0)
    loader = torch.utils.data.DataLoader(_PILDataset(manifest.train, manifest.train_labels, transform),
                                         batch_sampler=sampler, num_workers=args.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)

    def move(batch: Any) -> Any:
        return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)

    result = timed(epochs(loader), args.loader_steps, args.warmup, device, move)
    result["workers"] = args.workers
    return result


def bench_store_build(args: argparse.Namespace, manifest: SimpleNamespace) -> dict[str, Any]:
    start = time.perf_counter()
    store = ImageStore.build(manifest.train, manifest.train_labels, (args.height, args.width), "fail",
                             num_threads=max(1, args.workers))
    seconds = time.perf_counter() - start
    return {"images": len(store), "threads": max(1, args.workers), "seconds": round(seconds, 2),
            "images_per_s": round(len(store) / seconds, 1), "stored_size": list(store.image_size),
            "store_mb": round(store.nbytes / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--cases", default="tensor,cpu_loader,reference_pil,store_build")
    parser.add_argument("--num-images", type=int, default=MARKET_TRAIN)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--tensor-steps", type=int, default=100)
    parser.add_argument("--loader-steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process")
    parser.add_argument("--market-root", default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine(device),
        "settings": {"batch": f"P={args.p} x K={args.k}", "input": f"{args.height}x{args.width}",
                     "num_images": args.num_images},
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="reid-bench-") as tmp:
        manifest = None
        for case in cases:
            if case != "tensor" and manifest is None:
                manifest, report["jpeg_source"] = jpeg_source(args, Path(tmp))
            print(f"[{case}] running on {device} ...", flush=True)
            if case == "tensor":
                result = bench_tensor(args, device)
            elif case == "cpu_loader":
                result = bench_cpu_loader(args, device, manifest)
            elif case == "reference_pil":
                result = bench_reference(args, device, manifest)
            elif case == "store_build":
                result = bench_store_build(args, manifest)
            else:
                raise SystemExit(f"unknown case {case!r}; choose from tensor, cpu_loader, reference_pil, store_build")
            report["cases"][case] = result
            print(f"[{case}] {json.dumps(result)}", flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if device.type == "cuda" else device.type
    path = out_dir / f"input_pipeline_{tag}_{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
