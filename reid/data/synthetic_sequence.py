"""A synthetic video sequence in the MOT-challenge layout: the synthetic generator's people walking
across a background, meeting, hiding each other and turning back.

Why it exists: a tracker's use of a ReID model can only be shown on a video with ground truth, and no
video or detector weights can be fetched here. The people are crops drawn by
:func:`reid.data.synthetic.generate_synthetic` (each frame shows another picture of the same person: a
new pose, noise and lighting, as in a real video), pasted on a background scene. The motion is chosen
so that appearance matters: people walk towards each other in pairs, one hides the other while they
overlap, and both turn back while hidden or overlapping, so a constant-velocity motion model predicts
each one where the other is.

Layout (as MOT17/MOT20, what BoxMOT and motmetrics read):

* ``img1/000001.jpg`` ... (1-based frame numbers);
* ``gt/gt.txt``: ``frame,id,left,top,width,height,1,1,visibility`` for every person with at least
  ``min_visibility`` of its box not covered by a person in front;
* ``det/det.txt``: ``frame,-1,left,top,width,height,conf,-1,-1,-1``: the same boxes with a pixel of
  jitter and confidence 0.9 (an ideal detector that misses hidden people);
* ``seqinfo.ini``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reid.errors import ReidError


@dataclass(frozen=True)
class SequenceInfo:
    root: Path
    num_frames: int
    num_people: int
    frame_size: tuple[int, int]  # (height, width)


def _bounce_path(start: float, meet: float, num_frames: int, speed: float, pause: int, phase: int) -> np.ndarray:
    """x per frame: wait ``phase`` frames, walk from ``start`` to ``meet`` at ``speed`` pixels a frame,
    stay ``pause`` frames, walk back, stay two frames, and again."""
    steps = max(1, int(np.ceil(abs(meet - start) / speed)))
    cycle = [i / steps for i in range(steps)] + [1.0] * pause + [1.0 - i / steps for i in range(steps)] + [0.0] * 2
    share = [cycle[(t - phase) % len(cycle)] if t >= phase else 0.0 for t in range(num_frames)]
    return (start + (meet - start) * np.asarray(share)).astype(np.float32)


def generate_sequence(root: Path | str, num_pairs: int = 2, num_frames: int = 80, frame_size: tuple[int, int] = (300, 640),
                      person_size: tuple[int, int] = (128, 64), seed: int = 0, min_visibility: float = 0.5) -> SequenceInfo:
    """Write the sequence under ``root`` (new or empty) and return what it holds; see the module docstring."""
    from PIL import Image

    from reid.data.datasets import read_dataset
    from reid.data.synthetic import generate_synthetic

    height, width = int(frame_size[0]), int(frame_size[1])
    ph, pw = int(person_size[0]), int(person_size[1])
    if num_pairs < 1 or num_frames < 2:
        raise ReidError("a sequence needs num_pairs >= 1 and num_frames >= 2")
    if height < ph * num_pairs or width < pw * 4:
        raise ReidError(f"frame {height}x{width} is too small for {num_pairs} lanes of {ph}x{pw} people; "
                        "enlarge frame_size or shrink person_size")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ReidError(f"{root} is not empty; give a new folder for the sequence")
    rng = np.random.default_rng(seed)
    num_people = 2 * num_pairs
    pool = root / ".people"
    generate_synthetic(pool, num_train_ids=num_people, num_test_ids=1, num_cameras=2, images_per_id=8,
                       height=ph, width=pw, seed=seed)
    pictures: dict[int, list[np.ndarray]] = {}
    for sample in read_dataset("market1501", pool).train:
        pictures.setdefault(sample.pid, []).append(np.asarray(Image.open(sample.path).convert("RGB")))
    people = [pictures[pid] for pid in sorted(pictures)][:num_people]
    shutil.rmtree(pool)

    # Background: a smooth random scene (large-scale colour blobs) plus fine noise.
    coarse = rng.uniform(60, 200, (height // 40 + 2, width // 40 + 2, 3)).astype(np.float32)
    background = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR),
                            dtype=np.float32)

    lane_step = (height - ph) / max(num_pairs - 1, 1) if num_pairs > 1 else 0.0
    meet = width / 2 - pw / 2
    tracks = []  # (person index, xs, y)
    for pair in range(num_pairs):
        y = float(round(pair * lane_step)) if num_pairs > 1 else float((height - ph) // 2)
        phase = int(rng.integers(0, 6))
        speed = float(rng.uniform(5.0, 8.0))
        tracks.append((2 * pair, _bounce_path(4.0, meet - pw * 0.15, num_frames, speed, 6, phase), y))
        tracks.append((2 * pair + 1, _bounce_path(width - pw - 4.0, meet + pw * 0.15, num_frames, speed, 6, phase), y))

    for folder in ("img1", "gt", "det"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    gt_rows, det_rows = [], []
    for t in range(num_frames):
        frame = background + rng.normal(0, 3.0, background.shape).astype(np.float32)
        boxes = []
        for person, xs, y in tracks:  # later tracks are drawn in front
            x = int(round(float(xs[t])))
            picture = people[person][(t + person) % len(people[person])]
            frame[int(y):int(y) + ph, x:x + pw] = picture
            boxes.append((person, x, int(y)))
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(root / "img1" / f"{t + 1:06d}.jpg", quality=92)
        for k, (person, x, y) in enumerate(boxes):
            covered = np.zeros((ph, pw), dtype=bool)
            for _, x2, y2 in boxes[k + 1:]:
                x0, x1 = max(x, x2) - x, min(x + pw, x2 + pw) - x
                y0, y1 = max(y, y2) - y, min(y + ph, y2 + ph) - y
                if x1 > x0 and y1 > y0:
                    covered[y0:y1, x0:x1] = True
            visibility = 1.0 - float(covered.mean())
            if visibility < min_visibility:
                continue
            gt_rows.append(f"{t + 1},{person + 1},{x},{y},{pw},{ph},1,1,{visibility:.3f}")
            jx, jy = rng.integers(-1, 2, 2)
            det_rows.append(f"{t + 1},-1,{x + jx},{y + jy},{pw},{ph},0.9,-1,-1,-1")
    (root / "gt" / "gt.txt").write_text("\n".join(gt_rows) + "\n")
    (root / "det" / "det.txt").write_text("\n".join(det_rows) + "\n")
    (root / "seqinfo.ini").write_text(
        f"[Sequence]\nname={root.name}\nimDir=img1\nframeRate=30\nseqLength={num_frames}\n"
        f"imWidth={width}\nimHeight={height}\nimExt=.jpg\n")
    return SequenceInfo(root, num_frames, num_people, (height, width))
