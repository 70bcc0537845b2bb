"""Joint training on several datasets (``data.sources``): one manifest with ids and cameras kept apart.

The multi-source domain-generalisation setting (torchreid's ``-s A B``) trains one model on the union
of several datasets. Their identity and camera numbers overlap (every dataset has a person 1 and a
camera 1), and merging them as they are would fuse different people into one class and make
different cameras "the same camera" for the evaluation's same-camera rule. So each source's numbers
are shifted past those of the sources before it:

* identity ``p > 0`` of source ``k`` becomes ``p + pid_offset[k]``, where ``pid_offset[k]`` is the
  sum of the largest identities of the sources before it; ``0`` (distractors, images of nobody) stays
  ``0`` in every source, it matches no query anyway;
* camera ``c`` becomes ``c + cam_offset[k]`` likewise; a dataset without camera ids keeps
  :data:`~reid.data.samples.NO_CAMERA` (and the merged data then has no usable cameras).

The three splits are merged the same way, so the manifest's own query/gallery evaluation scores the
sources' test sets together (no query can match another source's image). A note per source records
its offsets, which ``reid prepare`` prints.
"""

from __future__ import annotations

from typing import Callable, Sequence

from reid.data.samples import SPLIT_NAMES, DatasetSplits, Sample
from reid.errors import DatasetError


def merge_sources(named: Sequence[tuple[str, DatasetSplits]]) -> DatasetSplits:
    """One :class:`DatasetSplits` holding every source, identities and cameras offset per source."""
    if not named:
        raise DatasetError("data.sources is empty: list at least one {name, format, root}")
    merged: dict[str, list[Sample]] = {split: [] for split in SPLIT_NAMES}
    notes: list[str] = []
    warnings: list[str] = []
    pid_offset = cam_offset = 0
    has_cameras = True
    for name, splits in named:
        samples = [s for split in SPLIT_NAMES for s in splits.split(split)]
        negative = [s for s in samples if s.pid < 0]
        if negative:
            raise DatasetError(f"data.sources[{name}]: {negative[0].path} has identity {negative[0].pid}; "
                               f"junk images must be dropped by the reader")
        max_pid = max((s.pid for s in samples), default=0)
        max_cam = max((s.camid for s in samples if s.camid > 0), default=0)
        source_has_cameras = getattr(splits, "has_cameras", True)
        has_cameras = has_cameras and source_has_cameras
        for split in SPLIT_NAMES:
            merged[split].extend(
                Sample(s.path, s.pid + pid_offset if s.pid > 0 else 0, s.camid + cam_offset if s.camid > 0 else s.camid)
                for s in splits.split(split))
        notes.append(f"source {name} ({splits.format or 'custom'}, {splits.root}): identities 1..{max_pid} -> "
                     f"{pid_offset + 1}..{pid_offset + max_pid}, cameras 1..{max_cam} -> "
                     f"{cam_offset + 1}..{cam_offset + max_cam}")
        notes.extend(f"{name}: {note}" for note in splits.notes)
        warnings.extend(f"{name}: {warning}" for warning in getattr(splits, "warnings", []))
        pid_offset += max_pid
        cam_offset += max_cam
    if not has_cameras:
        notes.append("a source has no camera ids: the merged data is evaluated without the same-camera rule")
    out = DatasetSplits(name="+".join(name for name, _ in named), train=merged["train"], query=merged["query"],
                        gallery=merged["gallery"], format="sources", root="", notes=notes)
    # Fields another part of the data layer may add (warnings, has_cameras) are set only when they exist.
    if hasattr(out, "warnings"):
        out.warnings = warnings
    if hasattr(out, "has_cameras"):
        out.has_cameras = has_cameras
    return out


def read_sources(sources: Sequence[object], read: Callable[[str, str], DatasetSplits],
                 resolve_root: Callable[[object], object] = lambda root: root) -> DatasetSplits:
    """Read every ``{name, format, root}`` of ``data.sources`` with ``read(format, root)`` and merge them.

    A source that cannot be read is an error naming it (``data.sources[<name>]``), before anything is
    written.
    """
    named: list[tuple[str, DatasetSplits]] = []
    for source in sources:
        name, fmt, root = getattr(source, "name"), getattr(source, "format"), resolve_root(getattr(source, "root"))
        try:
            named.append((name, read(fmt, root)))
        except DatasetError as exc:
            raise DatasetError(f"data.sources[{name}] ({fmt} at {root}): {exc}") from None
    return merge_sources(named)
