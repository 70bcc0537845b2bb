"""Byte-identical images across splits: a query copied into the gallery, a test image also in training.

Why: under the cross-camera protocol a query's gallery copy under *another* camera id is a correct
match at distance 0, ranked first, so it inflates rank-1 and mAP without measuring anything (a copy
under the same camera is removed by the protocol and harmless). A test image that is also a training
image is leakage: the model has seen the answer. Public datasets and home-made folders both contain
such copies, so ``reid prepare`` looks for them and ``reid evaluate --duplicates exclude`` can leave
them out (:mod:`reid.evaluation.duplicates`).

How: files can only be identical when their sizes are, and the sizes are read anyway (the manifest's
content hash holds them), so only files whose size also occurs in the other split are read and hashed
(sha256 of the bytes, or of a pack member's bytes).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

from reid.data.samples import Sample

#: How many pairs a warning shows as examples (the count is complete).
EXAMPLES = 3


@dataclass
class DuplicatePairs:
    """Pairs ``(a, b)`` of byte-identical samples, ``a`` from the first list, ``b`` from the second."""

    first: str
    second: str
    pairs: list[tuple[Sample, Sample]] = field(default_factory=list)

    def cross_camera(self) -> list[tuple[Sample, Sample]]:
        """The pairs whose cameras differ: the ones the cross-camera protocol does not remove."""
        return [(a, b) for a, b in self.pairs if a.camid != b.camid]

    def describe(self, pairs: Sequence[tuple[Sample, Sample]] | None = None) -> str:
        pairs = self.pairs if pairs is None else pairs
        shown = "; ".join(f"{a.path} (id {a.pid}, camera {a.camid}) = {b.path} (id {b.pid}, camera {b.camid})"
                          for a, b in pairs[:EXAMPLES])
        return shown + (f"; ... and {len(pairs) - EXAMPLES} more" if len(pairs) > EXAMPLES else "")


def _size(path: str) -> int | None:
    from reid.data.pack import stored_size

    try:
        return stored_size(path)
    except OSError:
        return None


def file_digest(path: str) -> str | None:
    """sha256 of the image's bytes (a file, or a pack member); None when it cannot be read."""
    from reid.data.pack import image_source, is_pack_path

    try:
        source = image_source(path) if is_pack_path(path) else None
        if source is not None:
            return hashlib.sha256(source.read()).hexdigest()
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except Exception:  # noqa: BLE001 - an unreadable file is the corrupt-image check's to report
        return None


def find_identical(first: Sequence[Sample], second: Sequence[Sample], first_name: str = "first",
                   second_name: str = "second", threads: int = 4) -> DuplicatePairs:
    """Every pair of byte-identical files between ``first`` and ``second`` (a file is not its own copy)."""
    found = DuplicatePairs(first_name, second_name)
    sizes_a = {i: _size(str(s.path)) for i, s in enumerate(first)}
    sizes_b = {i: _size(str(s.path)) for i, s in enumerate(second)}
    shared = ({v for v in sizes_a.values() if v} & {v for v in sizes_b.values() if v})
    cand_a = [i for i, v in sizes_a.items() if v in shared]
    cand_b = [i for i, v in sizes_b.items() if v in shared]
    paths = sorted({str(first[i].path) for i in cand_a} | {str(second[i].path) for i in cand_b})
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="reid-hash") as pool:
        digests = dict(zip(paths, pool.map(file_digest, paths)))
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i in cand_b:
        digest = digests[str(second[i].path)]
        if digest is not None:
            by_digest[digest].append(i)
    for i in cand_a:
        a = first[i]
        for j in by_digest.get(digests[str(a.path)] or "", []):
            if str(second[j].path) != str(a.path):
                found.pairs.append((a, second[j]))
    return found


def duplicate_warnings(manifest: object, threads: int = 4) -> list[str]:
    """What ``reid prepare`` warns about: query/gallery copies under different cameras (they inflate the
    scores) and test images that are also training images (leakage)."""
    out = []
    query, gallery, train = (list(getattr(manifest, s)) for s in ("query", "gallery", "train"))
    test = find_identical(query, gallery, "query", "gallery", threads)
    crossing = test.cross_camera() if getattr(manifest, "has_cameras", True) else test.pairs
    if crossing:
        out.append(f"{len(crossing)} query image(s) have a byte-identical copy in the gallery under another camera "
                   f"(e.g. {test.describe(crossing)}): each is a rank-1 match at distance 0 that inflates mAP and "
                   "CMC. Remove the copies from the dataset, or evaluate with `reid evaluate --duplicates exclude`")
    if train:
        leaked = find_identical(train, query + gallery, "train", "test", threads)
        if leaked.pairs:
            out.append(f"{len(leaked.pairs)} training image(s) are byte-identical to a query/gallery image "
                       f"(e.g. {leaked.describe()}): the model sees test images in training (leakage). Remove them "
                       "from one side, or evaluate with `reid evaluate --duplicates exclude`")
    return out
