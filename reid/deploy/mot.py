"""Run one of BoxMOT's ReID trackers with an exported model over a MOT-challenge sequence, and score it.

A sequence folder is laid out as MOT17: ``img1/000001.jpg`` ..., ``det/det.txt`` (detections:
``frame,id,left,top,width,height,conf,...``, 1-based frames) and, for scoring, ``gt/gt.txt``. The
detections come from the file: nothing here runs a detector. The tracker gets each frame (BGR, as
OpenCV reads it) and that frame's detections, computes the ReID features itself with our file
(:mod:`reid.deploy.boxmot_compat`) and returns boxes with track ids; :func:`identity_metrics` compares
them with the ground truth using ``motmetrics`` (identity switches, MOTA, IDF1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from reid.errors import ReidError

TrackerName = Literal["botsort", "strongsort"]
TRACKERS: tuple[str, ...] = ("botsort", "strongsort")


@dataclass
class TrackingRun:
    """Track rows ``frame, id, left, top, width, height, conf`` (MOT results format) and per-frame ids."""

    rows: list[tuple[int, int, float, float, float, float, float]] = field(default_factory=list)
    ids_per_frame: dict[int, list[int]] = field(default_factory=dict)


def read_mot_boxes(path: Path | str) -> dict[int, np.ndarray]:
    """``frame -> float32 [N, 6]`` rows ``x1, y1, x2, y2, conf, id`` of a MOT ``det.txt`` / ``gt.txt``."""
    path = Path(path)
    if not path.is_file():
        raise ReidError(f"{path} does not exist: a sequence needs det/det.txt (MOT-challenge format: "
                        "frame,id,left,top,width,height,conf,...)")
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ReidError(f"{path} is not a MOT-challenge text file (comma-separated numbers): {exc}") from None
    if table.size and table.shape[1] < 7:
        raise ReidError(f"{path}: rows need at least 7 columns (frame,id,left,top,width,height,conf), got "
                        f"{table.shape[1]}")
    out: dict[int, np.ndarray] = {}
    for frame in np.unique(table[:, 0]).astype(int) if table.size else []:
        rows = table[table[:, 0] == frame]
        x, y, w, h = rows[:, 2], rows[:, 3], rows[:, 4], rows[:, 5]
        out[int(frame)] = np.stack([x, y, x + w, y + h, rows[:, 6], rows[:, 1]], axis=1).astype(np.float32)
    return out


def frame_paths(sequence: Path | str) -> list[Path]:
    frames = sorted((Path(sequence) / "img1").glob("*.jpg")) + sorted((Path(sequence) / "img1").glob("*.png"))
    if not frames:
        raise ReidError(f"{sequence}/img1 has no .jpg/.png frames (MOT-challenge layout: img1/000001.jpg ...)")
    return sorted(frames)


def build_tracker(name: str, model_file: Path | str, preprocess: str | None = None, device: str = "cpu",
                  options: dict[str, Any] | None = None) -> Any:
    """A BoxMOT tracker that computes its own ReID features with ``model_file`` (``reid export --for boxmot``);
    ``options``: the tracker's own keyword arguments (e.g. BoT-SORT's ``appearance_thresh``).

    Camera-motion compensation is off: the synthetic sequences come from a still camera.
    """
    from reid.deploy.boxmot_compat import import_boxmot, register_preprocess, sidecar_path

    if name not in TRACKERS:
        raise ReidError(f"unknown tracker {name!r}; use one of {', '.join(TRACKERS)}")
    model_file = Path(model_file)
    if not model_file.is_file():
        raise ReidError(f"model file {model_file} does not exist; make it with `reid export CHECKPOINT --for boxmot "
                        "--output model.onnx`")
    if not sidecar_path(model_file).is_file():
        raise ReidError(f"{model_file} has no {sidecar_path(model_file).name} beside it: export it with "
                        "`reid export ... --for boxmot` so BoxMOT knows its input size")
    boxmot = import_boxmot()
    if preprocess is not None and preprocess != "resize":
        register_preprocess()
    tracker_class = boxmot.BotSort if name == "botsort" else boxmot.StrongSort
    import_boxmot()  # importing the trackers reconfigures BoxMOT's logger: quiet it again
    common = {"reid_weights": model_file, "device": device, "half": False, "reid_preprocess": preprocess,
              **({"use_cmc": False} if name == "botsort" else {}), **(options or {})}
    try:
        return tracker_class(**common)
    except TypeError as exc:
        raise ReidError(f"{name}: {exc}; see the tracker's arguments in BoxMOT") from None


def run_tracker(sequence: Path | str, model_file: Path | str, tracker: str = "botsort", preprocess: str | None = None,
                device: str = "cpu", on_frame: Callable[[int, list[int]], None] | None = None,
                options: dict[str, Any] | None = None) -> TrackingRun:
    """Track ``sequence`` with its ``det/det.txt`` detections; ``on_frame(frame, ids)`` after each frame."""
    import cv2

    detections = read_mot_boxes(Path(sequence) / "det" / "det.txt")
    algo = build_tracker(tracker, model_file, preprocess, device, options)
    run = TrackingRun()
    for index, path in enumerate(frame_paths(sequence), start=1):
        image = cv2.imread(str(path))
        if image is None:
            raise ReidError(f"OpenCV cannot read the frame {path}")
        dets = detections.get(index, np.zeros((0, 6), dtype=np.float32))
        # BoxMOT's numpy layout: x1, y1, x2, y2, conf, class.
        out = algo.update(np.concatenate([dets[:, :5], np.zeros((len(dets), 1), np.float32)], axis=1), image)
        ids = []
        out = np.asarray(out, dtype=np.float64)
        for x1, y1, x2, y2, track_id, conf in (out[:, :6] if out.size else []):
            run.rows.append((index, int(track_id), float(x1), float(y1), float(x2 - x1), float(y2 - y1), float(conf)))
            ids.append(int(track_id))
        run.ids_per_frame[index] = sorted(ids)
        if on_frame is not None:
            on_frame(index, run.ids_per_frame[index])
    return run


def write_results(run: TrackingRun, path: Path | str) -> Path:
    """The tracks as a MOT-challenge results file (``frame,id,left,top,width,height,conf,-1,-1,-1``)."""
    from reid.atomic import write_text_atomic

    lines = [f"{f},{i},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{c:.4f},-1,-1,-1" for f, i, x, y, w, h, c in run.rows]
    return write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))


def iou_distances(a: np.ndarray, b: np.ndarray, max_distance: float = 0.5) -> np.ndarray:
    """``1 - IoU`` of ``[left, top, width, height]`` boxes, NaN (no match) above ``max_distance``.

    What ``motmetrics.distances.iou_matrix`` computes; motmetrics 1.4's own calls ``np.asfarray``,
    which NumPy 2 removed.
    """
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return np.empty((len(a), len(b)))
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, :2] + a[:, None, 2:], b[None, :, :2] + b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    union = np.prod(a[:, 2:], axis=1)[:, None] + np.prod(b[:, 2:], axis=1)[None, :] - inter
    distance = 1.0 - inter / np.maximum(union, 1e-12)
    return np.where(distance > max_distance, np.nan, distance)


def identity_metrics(gt_file: Path | str, run: TrackingRun) -> dict[str, float]:
    """``motmetrics`` on the run against ``gt_file``: identity switches, MOTA, IDF1 and their counts (IoU 0.5)."""
    try:
        import motmetrics as mm
    except ImportError:
        raise ReidError("scoring a tracking run needs motmetrics: pip install 'reid-toolkit[trackers]'") from None
    truth = read_mot_boxes(gt_file)
    hypotheses: dict[int, list[tuple]] = {}
    for f, i, x, y, w, h, _ in run.rows:
        hypotheses.setdefault(f, []).append((i, x, y, w, h))
    acc = mm.MOTAccumulator(auto_id=False)
    for frame in sorted(set(truth) | set(hypotheses)):
        gt = truth.get(frame, np.zeros((0, 6), np.float32))
        hyp = hypotheses.get(frame, [])
        gt_boxes = np.stack([gt[:, 0], gt[:, 1], gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]], axis=1) if len(gt) else np.zeros((0, 4))
        hyp_boxes = np.asarray([h[1:] for h in hyp], dtype=np.float64).reshape(-1, 4)
        distances = iou_distances(gt_boxes, hyp_boxes, max_distance=0.5)
        acc.update(gt[:, 5].astype(int).tolist(), [h[0] for h in hyp], distances, frameid=frame)
    summary = mm.metrics.create().compute(acc, metrics=["num_switches", "mota", "idf1", "num_frames",
                                                        "num_objects", "num_false_positives", "num_misses",
                                                        "num_unique_objects"], name="run")
    return {key: float(summary[key].iloc[0]) for key in summary.columns}
