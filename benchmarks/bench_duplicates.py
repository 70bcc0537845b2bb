"""What looking for byte-identical copies across splits costs (``reid prepare``, ``reid evaluate``).

``reid.data.duplicates.find_identical`` compares file sizes first and hashes (sha256) only the files
whose size occurs in the other split. This times query vs gallery (what ``reid evaluate`` adds) and
the whole check of ``reid prepare`` (plus training vs test) on a real dataset, and records the machine::

    python benchmarks/bench_duplicates.py --root ../shared/data/Market-1501-v15.09.15 \\
        --output benchmarks/results/duplicates_<date>.json
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
    parser.add_argument("--output", type=Path, help="results JSON to write")
    args = parser.parse_args()

    from machine_info import describe_machine

    from reid.data.datasets import read_dataset
    from reid.data.duplicates import duplicate_warnings, find_identical

    splits = read_dataset(args.format, args.root)
    threads = max(1, min(8, os.cpu_count() or 1))
    started = time.perf_counter()
    pairs = find_identical(splits.query, splits.gallery, "query", "gallery", threads)
    test_s = time.perf_counter() - started
    started = time.perf_counter()
    warnings = duplicate_warnings(splits, threads)
    prepare_s = time.perf_counter() - started
    result = {
        "benchmark": "duplicates",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/bench_duplicates.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "settings": {"format": args.format, "root": str(args.root), "threads": threads},
        "images": {"train": len(splits.train), "query": len(splits.query), "gallery": len(splits.gallery)},
        "query_gallery": {"seconds": round(test_s, 2), "identical_pairs": len(pairs.pairs),
                          "cross_camera_pairs": len(pairs.cross_camera())},
        "prepare_check": {"seconds": round(prepare_s, 2), "warnings": warnings},
    }
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
