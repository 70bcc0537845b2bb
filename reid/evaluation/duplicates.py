"""``reid evaluate --duplicates``: what to do with byte-identical copies (:mod:`reid.data.duplicates`).

``warn`` (the default) scores the split as it is, so a published protocol stays as published, and
says how many copies could inflate the result. ``exclude`` leaves them out before scoring:

* a gallery image byte-identical to a query image under another camera is dropped from the gallery
  (it is that query's own picture, a rank-1 match at distance 0; same-camera copies are already
  removed by the cross-camera protocol and stay);
* a query or gallery image byte-identical to an image of the manifest's training split is dropped
  (the model was trained on it).

What was found and left out is returned for metrics.json (``duplicates``), so two scores of the same
model say whether they were measured with or without the copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from reid.data.duplicates import duplicate_warnings, find_identical

DuplicatePolicy = Literal["warn", "exclude"]
POLICIES: tuple[str, ...] = ("warn", "exclude")


@dataclass
class DuplicateCheck:
    """The split to score and what was found in it."""

    split: Any
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def apply_duplicate_policy(split: Any, policy: str, threads: int | None = None) -> DuplicateCheck:
    """Find the copies in ``split`` (a manifest) and, under ``exclude``, return it without them."""
    if policy not in POLICIES:
        from reid.errors import EvaluationError

        raise EvaluationError(f"--duplicates must be one of {', '.join(POLICIES)}, got {policy!r}")
    threads = threads or max(1, min(8, os.cpu_count() or 1))
    query, gallery, train = (list(getattr(split, s, []) or []) for s in ("query", "gallery", "train"))
    cameras = getattr(split, "has_cameras", True)
    test = find_identical(query, gallery, "query", "gallery", threads)
    crossing = test.cross_camera() if cameras else test.pairs
    leaked = find_identical(train, query + gallery, "train", "test", threads) if train else None
    leaked_paths = {str(b.path) for _, b in leaked.pairs} if leaked else set()
    summary: dict[str, Any] = {"policy": policy, "query_gallery_cross_camera": len(crossing),
                               "train_test": len(leaked_paths)}
    if policy == "warn":
        return DuplicateCheck(split, duplicate_warnings(split, threads) if crossing or leaked_paths else [], summary)
    drop_gallery = {str(b.path) for _, b in crossing} | leaked_paths
    kept_query = [q for q in query if str(q.path) not in leaked_paths]
    kept_gallery = [g for g in gallery if str(g.path) not in drop_gallery]
    summary.update({"excluded_query": len(query) - len(kept_query), "excluded_gallery": len(gallery) - len(kept_gallery)})
    notes = []
    if len(kept_query) < len(query) or len(kept_gallery) < len(gallery):
        notes.append(f"--duplicates exclude: left out {summary['excluded_query']} query and {summary['excluded_gallery']} "
                     f"gallery image(s) ({len(crossing)} gallery cop(ies) of a query under another camera, "
                     f"{len(leaked_paths)} test image(s) identical to a training image)")
        split = _with(split, kept_query, kept_gallery)
    return DuplicateCheck(split, notes, summary)


def _with(split: Any, query: list[Any], gallery: list[Any]) -> Any:
    if hasattr(split, "model_copy"):
        return split.model_copy(update={"query": query, "gallery": gallery})
    from dataclasses import replace

    return replace(split, query=query, gallery=gallery)
