"""Checks of a dataset's labels that catch the mistakes custom datasets are made with, early.

``reid prepare`` prints these as warnings, and ``reid train`` refuses a configuration that could
not be evaluated, *before* the first step: a single-camera dataset under the cross-camera protocol
otherwise trains every epoch and only then fails in evaluation. Everything here reads the pids and
cameras of :class:`~reid.data.samples.Sample` lists (no pixels), so it costs milliseconds.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any, Sequence

from reid.data.samples import Sample

CAMERA_DOCS = "docs/DATASETS.md (`folder`: camera tokens)"
_CAMERA_LIKE = re.compile(r"\d")  # cam1, c3, 01: a token with a number may be a camera whatever else
# A camera-like token later in a file name (``..._cam1.jpg``, ``..._c3_...``): the camera is misplaced.
_CAMERA_TOKEN = re.compile(r"(?i)(?:^|[_.-])(?:cam(?:era)?[_-]?\d+|c\d{1,3})(?=[_.-]|$)")


def cross_camera_valid_queries(query: Sequence[Sample], gallery: Sequence[Sample]) -> int:
    """How many queries keep at least one match under the cross-camera protocol.

    A query is valid when the gallery holds its identity seen by *another* camera (the protocol
    removes same-identity same-camera images; see :mod:`reid.evaluation.metrics`).
    """
    cameras: dict[int, set[int]] = {}
    for s in gallery:
        cameras.setdefault(s.pid, set()).add(s.camid)
    return sum(1 for q in query if cameras.get(q.pid, set()) - {q.camid})


def camera_count_implausible(num_cameras: int, num_ids: int) -> bool:
    """True when there are as many cameras as identities: the camera was most likely parsed from the
    wrong part of the file name (e.g. the identity or a running number)."""
    return num_cameras > 1 and num_cameras >= num_ids


def camera_advice(num_cameras: int, num_ids: int) -> str:
    """The fix to suggest when the cross-camera protocol leaves no valid query, given the test data's
    camera and identity counts.

    ``eval.cross_camera=false`` is right for data that really comes from one camera, and wrong when
    the camera labels themselves are wrong; say both, and lead with the renaming when the labels
    look implausible.
    """
    rename = (f"if the camera ids are wrong (folder format: the camera is the text before the first `_` of each file name, "
              f"e.g. `car_0001_cam1.jpg` makes `car` the camera), rename the files so that the camera comes "
              f"first (`cam1_car_0001.jpg`) and rerun `reid prepare`; see {CAMERA_DOCS}")
    if camera_count_implausible(num_cameras, num_ids):
        return (f"The camera labels look wrong ({num_cameras} cameras for {num_ids} identities): {rename}. "
                "Only if every image really has its own camera, set -o eval.cross_camera=false")
    return (f"If the data really comes from a single camera per identity, set -o eval.cross_camera=false "
            f"(count same-camera matches); {rename}")


def folder_camera_warnings(entries: Sequence[tuple[str, str, str]], num_ids: int) -> list[str]:
    """Warnings about the camera labels of a ``folder`` dataset: ``entries`` are its ``(path, identity,
    camera)`` triples, the camera being the text before the first ``_`` of the file name.

    Any consistent token is a camera (``cam1``, ``c3``, ``camA``, ``left``, ``north``): public sets name
    their cameras freely. Only a real problem is flagged: a token without a camera number whose file
    names carry a camera-like token *after* it (``car_0001_cam1.jpg``: the camera is in the wrong place),
    and as many cameras as identities (the token is an identity or a running number).
    """
    out = []
    misplaced: dict[str, str] = {}
    for path, _, camera in entries:
        if camera in misplaced or _CAMERA_LIKE.search(camera):
            continue
        rest = os.path.basename(path).partition("_")[2]
        if _CAMERA_TOKEN.search(rest):
            misplaced[camera] = os.path.basename(path)
    if misplaced:
        odd = sorted(misplaced)
        shown = ", ".join(repr(c) for c in odd[:5]) + (" ..." if len(odd) > 5 else "")
        example = misplaced[odd[0]]
        out.append(f"camera label(s) {shown} do not look like cameras: the camera is the text before the first `_` "
                   f"of each file name, and names such as {example} carry a camera later; rename them so that the "
                   f"camera comes first (`car_0001_cam1.jpg` -> `cam1_car_0001.jpg`); see {CAMERA_DOCS}")
    cameras = {camera for _, _, camera in entries}
    if camera_count_implausible(len(cameras), num_ids):
        out.append(f"{len(cameras)} cameras for {num_ids} identities is implausible: check that the text "
                   f"before the first `_` of each file name is the camera; see {CAMERA_DOCS}")
    return out


def _advice(samples: Sequence[Sample]) -> str:
    return camera_advice(len({s.camid for s in samples}), len({s.pid for s in samples if s.pid > 0}))


def query_identities_absent_from_gallery(query: Sequence[Sample], gallery: Sequence[Sample]) -> set[int]:
    """The query identities with no gallery image at all: their queries can never be scored."""
    return {q.pid for q in query} - {g.pid for g in gallery}


def undersized_identities(train: Sequence[Sample], k: int) -> int:
    """How many training identities have fewer than ``k`` images (the P x K sampler draws those with
    replacement, so some images appear twice in a batch)."""
    return sum(1 for n in Counter(s.pid for s in train).values() if n < k)


def dataset_warnings(manifest: Any, instances_per_id: int) -> list[str]:
    """What ``reid prepare`` warns about, from a manifest (or anything with train/query/gallery lists)."""
    out = []
    query, gallery = list(manifest.query), list(manifest.gallery)
    test_cams = {s.camid for s in query} | {s.camid for s in gallery}
    if query and gallery and not {q.pid for q in query} & {g.pid for g in gallery}:
        out.append("no query identity appears in the gallery: evaluation will fail; check the test split")
    elif not getattr(manifest, "has_cameras", True):
        pass  # no camera ids: evaluation drops the same-camera rule, nothing to warn about
    elif query and gallery and cross_camera_valid_queries(query, gallery) == 0:
        single = " (query and gallery share a single camera)" if len(test_cams) == 1 else ""
        out.append(f"no query has a match from another camera{single}: the cross-camera protocol "
                   f"(eval.cross_camera=true) would skip every query; {_advice(query + gallery)}")
    elif len(test_cams) == 1:
        out.append("query and gallery share a single camera; the cross-camera protocol needs several")
    absent = query_identities_absent_from_gallery(query, gallery)
    if absent and len(absent) < len({q.pid for q in query}):
        queries = [q for q in query if q.pid in absent]
        out.append(f"{len(absent)} query identit{'y has' if len(absent) == 1 else 'ies have'} no image in the gallery "
                   f"({len(queries)} quer{'y' if len(queries) == 1 else 'ies'}, e.g. {queries[0].path}): evaluation "
                   "will skip these queries; add their gallery images, or move them out of the query split")
    few = undersized_identities(manifest.train, instances_per_id)
    if few:
        out.append(f"{few} training identit{'y has' if few == 1 else 'ies have'} fewer than "
                   f"K={instances_per_id} images (data.instances_per_id): the P x K sampler draws their images "
                   "with replacement, so the same image can appear twice in a batch")
    return out


def check_evaluable(manifest: Any, cross_camera: bool) -> None:
    """Raise before training when evaluation is bound to fail (no valid query under the protocol)."""
    from reid.errors import EvaluationError

    query, gallery = list(manifest.query), list(manifest.gallery)
    if not query or not gallery or not cross_camera:
        return
    if not {q.pid for q in query} & {g.pid for g in gallery}:
        raise EvaluationError("no query identity appears in the gallery, so no query can be evaluated; "
                              "check that query and gallery come from the same test split, and rerun `reid prepare`")
    if cross_camera_valid_queries(query, gallery) == 0:
        raise EvaluationError(
            f"no query of the manifest has a gallery match from another camera, so the cross-camera "
            f"protocol (eval.cross_camera=true) would skip all {len(query)} queries and evaluation would fail "
            f"after training. Nothing was trained: {_advice(query + gallery)}"
        )
