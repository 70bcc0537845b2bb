"""Pack a dataset (Market-1501 by default) into one file that fits the GPU machine's transfer limit.

The GPU machine receives at most 64 MiB of the checkout per call, and Market-1501's train, query and
gallery JPEGs are about 71 MiB. This script reads the dataset exactly as ``reid prepare`` does
(:func:`reid.data.datasets.read_dataset`: junk ``-1`` dropped, distractors ``0000`` kept), re-encodes
every image (WebP quality 80 by default: about 0.68 of the JPEG bytes) into one
``.reidpack`` file (see :mod:`reid.data.pack`), and refuses to leave a pack larger than ``--max-mib``.
Train on it with ``data.format: pack`` and ``data.root: <the pack>``.

Usage:
    .venv/bin/python scripts/pack_market.py                       # ../shared/data/Market-1501-v15.09.15 -> pack/market1501.reidpack
    .venv/bin/python scripts/pack_market.py --root DIR --output pack/x.reidpack --quality 75 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reid.data.datasets import read_dataset  # noqa: E402
from reid.data.pack import CODECS, write_pack  # noqa: E402
from reid.errors import ReidError  # noqa: E402

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "Market-1501-v15.09.15"),
                        help="dataset folder")
    parser.add_argument("--format", default="market1501", choices=["market1501", "veri776", "folder"])
    parser.add_argument("--output", default=str(REPO / "pack" / "market1501.reidpack"))
    parser.add_argument("--codec", default="webp", choices=list(CODECS))
    parser.add_argument("--quality", type=int, default=80, help="encoder quality 1-100 (80: Market fits 56 MiB)")
    parser.add_argument("--max-mib", type=float, default=56.0, help="fail (and delete the pack) above this size")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be within 1..100")
    started = time.perf_counter()
    try:
        splits = read_dataset(args.format, args.root)
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if done == total or now - last[0] > 10:
                last[0] = now
                print(f"  encoded {done}/{total}", file=sys.stderr, flush=True)

        summary = write_pack(splits, args.output, codec=args.codec, quality=args.quality, threads=args.threads,
                             progress=progress)
    except ReidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["mib"] = round(summary["bytes"] / MIB, 2)
    summary["source_mib"] = round(summary["source_bytes"] / MIB, 2)
    print(json.dumps(summary, indent=1))
    if summary["bytes"] > args.max_mib * MIB:
        Path(args.output).unlink()
        print(f"error: the pack is {summary['mib']} MiB, over --max-mib {args.max_mib}; deleted it. "
              f"Lower --quality (now {args.quality}).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
