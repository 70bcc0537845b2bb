#!/usr/bin/env python3
"""Track people in a frame sequence with one of BoxMOT's ReID trackers and a model exported by ``reid export --for boxmot``.

    python scripts/track_boxmot.py SEQUENCE --model model.onnx [--tracker botsort|strongsort]
                                   [--resize contract|boxmot] [--output results.txt]

SEQUENCE is a MOT-challenge folder: ``img1/000001.jpg`` ..., detections in ``det/det.txt``
(``frame,id,left,top,width,height,conf,...``; no detector runs here) and, optionally, ``gt/gt.txt``:
then the identity switches, MOTA and IDF1 are printed too (motmetrics). Prints the track ids of every
frame. A synthetic sequence to try it on: ``python -c "from reid.data.synthetic_sequence import
generate_sequence; generate_sequence('seq')"`` (scripts/track_example.sh runs the whole path).

``--resize contract`` (default) makes BoxMOT resize crops as reid does (features equal to
``reid.load_model(...).embed``); ``--resize boxmot`` keeps BoxMOT's own ``cv2.INTER_LINEAR``, what a
plain ``BotSort(reid_weights=...)`` does. Needs ``pip install 'reid-toolkit[trackers]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from reid.deploy.boxmot_compat import BOXMOT_DEFAULT_PREPROCESS, PREPROCESS_NAME
    from reid.deploy.mot import TRACKERS, identity_metrics, run_tracker, write_results
    from reid.errors import ReidError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sequence", type=Path, help="MOT-challenge sequence folder (img1/, det/det.txt, gt/gt.txt)")
    parser.add_argument("--model", type=Path, required=True, help="file written by `reid export --for boxmot`")
    parser.add_argument("--tracker", choices=TRACKERS, default="botsort")
    parser.add_argument("--resize", choices=("contract", "boxmot"), default="contract",
                        help="contract: reid's antialiased resize (default); boxmot: BoxMOT's cv2.INTER_LINEAR")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="write the tracks as a MOT results file")
    parser.add_argument("--metrics", type=Path, help="write the motmetrics scores as JSON (needs gt/gt.txt)")
    parser.add_argument("--quiet", action="store_true", help="do not print the ids of every frame")
    args = parser.parse_args(argv)
    preprocess = PREPROCESS_NAME if args.resize == "contract" else BOXMOT_DEFAULT_PREPROCESS

    def show(frame: int, ids: list[int]) -> None:
        if not args.quiet:
            print(f"frame {frame:4d}: ids {' '.join(map(str, ids)) or '-'}", flush=True)

    try:
        run = run_tracker(args.sequence, args.model, args.tracker, preprocess, args.device, on_frame=show)
        if args.output:
            print(f"tracks: {write_results(run, args.output)}")
        gt = args.sequence / "gt" / "gt.txt"
        if gt.is_file():
            scores = identity_metrics(gt, run)
            print(f"{args.tracker} with {args.model.name} ({args.resize} resize): "
                  f"{int(scores['num_switches'])} identity switches, MOTA {scores['mota']:.3f}, IDF1 {scores['idf1']:.3f}")
            if args.metrics:
                args.metrics.write_text(json.dumps(scores, indent=2) + "\n")
    except ReidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
