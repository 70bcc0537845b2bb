"""What checking every training image before the first step costs: a full decode against a header check.

``reid train`` decodes every image of every split once before its first step
(``reid.data.images.check_split_images``), so that all corrupt files are named in one message instead of
one per failed run, mid-epoch. A header check (``PIL.Image.open``: size and format, no pixels) would be
cheaper but misses a truncated JPEG, which only a decode finds. This times both on a real dataset's
training split, with the decoder threads the trainer uses (``min(8, CPUs)``), and records the machine::

    python benchmarks/bench_train_image_check.py --root ../shared/data/Market-1501-v15.09.15 \\
        --output benchmarks/results/image_check_train_<date>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def header_check(paths: list[str], threads: int) -> int:
    """How many of ``paths`` fail ``PIL.Image.open`` (the header is parsed, no pixel is decoded)."""
    from PIL import Image

    def bad(path: str) -> bool:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - parsed from the header
        except Exception:  # noqa: BLE001 - any failure is a bad file
            return True
        return False

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(bad, paths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--format", default="market1501", help="dataset layout (data.format)")
    parser.add_argument("--threads", type=int, default=None, help="decoder threads (default: the trainer's)")
    parser.add_argument("--output", type=Path, help="results JSON to write")
    args = parser.parse_args()

    from machine_info import describe_machine

    from reid.data.datasets import read_dataset
    from reid.data.images import check_split_images

    splits = read_dataset(args.format, args.root)
    threads = args.threads or max(1, min(8, os.cpu_count() or 1))
    paths = [str(s.path) for s in splits.train]
    header_check(paths[:200], threads)  # warm the page cache alike for both (the decode reads first below)
    started = time.perf_counter()
    decoded = check_split_images(splits, "skip", ("train",), threads=threads)
    decode_s = time.perf_counter() - started
    started = time.perf_counter()
    header_bad = header_check(paths, threads)
    header_s = time.perf_counter() - started
    result = {
        "benchmark": "train_image_check",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_train_image_check.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "settings": {"format": args.format, "root": str(args.root), "threads": threads},
        "train_images": len(paths),
        "decode": {"seconds": round(decode_s, 2), "images_per_s": round(len(paths) / decode_s, 1),
                   "corrupt_images": decoded.total},
        "header": {"seconds": round(header_s, 2), "images_per_s": round(len(paths) / header_s, 1),
                   "corrupt_images": header_bad},
        "note": "the decode runs first on a cold or warm page cache as the machine has it; the header check "
                "then reads the same files from the page cache",
    }
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
