"""How long ``reid train``'s check of the query/gallery images takes before the first step.

The trainer decodes every test image once (``reid.data.images.check_test_images``) so that a corrupt
one fails the run in seconds instead of after its last epoch. This measures that cost on a real
dataset, with the decoder threads the trainer uses (``min(8, CPUs)``), and records it with the machine::

    python benchmarks/bench_test_image_check.py --root ../shared/data/Market-1501-v15.09.15 \
        --output benchmarks/results/test_image_check_<date>.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="dataset folder")
    parser.add_argument("--format", default="market1501", help="dataset layout (data.format)")
    parser.add_argument("--threads", type=int, default=None, help="decoder threads (default: the trainer's)")
    parser.add_argument("--output", type=Path, help="results JSON to write")
    args = parser.parse_args()

    from machine_info import describe_machine

    from reid.data.datasets import read_dataset
    from reid.data.images import check_test_images

    splits = read_dataset(args.format, args.root)
    threads = args.threads or max(1, min(8, os.cpu_count() or 1))
    started = time.perf_counter()
    warnings = check_test_images(splits, "skip", threads=threads)
    seconds = time.perf_counter() - started
    result = {
        "benchmark": "test_image_check",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_test_image_check.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "settings": {"format": args.format, "root": str(args.root), "threads": threads},
        "query_images": len(splits.query), "gallery_images": len(splits.gallery),
        "corrupt_images": len(warnings), "seconds": round(seconds, 2),
        "images_per_s": round((len(splits.query) + len(splits.gallery)) / seconds, 1),
    }
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
