"""The manifest: a dataset frozen into one JSON file that training and evaluation read.

``reid prepare`` scans the dataset folder once and writes the manifest; every later stage reads it
and never rescans a folder. That gives the DVC pipeline one small, hashable artefact to depend on,
makes a run independent of files appearing in the folder later, and fixes the mapping from identity
to classifier label (``train_labels``: contiguous ``0..C-1`` in sorted-pid order) so that a resumed
run, a distillation student and its teacher all agree on it.

``content_hash`` identifies the data without reading pixels: a sha256 over each split's relative
paths, file sizes, identities and cameras. It changes when a file is added, removed, relabelled or
re-encoded to another size, and not when the dataset is moved to another folder; the trainer stores
it in checkpoints to refuse resuming on different data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from reid.atomic import write_text_atomic
from reid.data.datasets import statistics
from reid.data.pack import stored_size
from reid.data.samples import SPLIT_NAMES, DatasetSplits, Sample
from reid.errors import DatasetError

MANIFEST_VERSION = 1


class Manifest(BaseModel):
    """One dataset, resolved: absolute paths, raw ids/cameras, training labels, hash and statistics."""

    model_config = ConfigDict(extra="forbid")

    version: int = MANIFEST_VERSION
    format: str
    root: str
    name: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    train_labels: list[int]
    num_classes: int
    content_hash: str
    statistics: dict[str, dict[str, int]]
    # Added after version 1 with defaults, so older manifests load unchanged (and keep their hash):
    # False for data without (usable) camera ids, e.g. VehicleID (camid -1) or joint training with such a
    # source: evaluation then drops the same-camera rule. And the
    # protocol that scores query/gallery ("vehicleid": re-drawn galleries, see reid.evaluation.protocols).
    has_cameras: bool = True
    protocol: Literal["standard", "vehicleid"] = "standard"

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        # A hand-edited or stale manifest must fail here, not as a CUDA index error mid-epoch.
        if self.version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {self.version} is not supported (expected {MANIFEST_VERSION})")
        if len(self.train_labels) != len(self.train):
            raise ValueError(f"{len(self.train_labels)} train_labels for {len(self.train)} train samples")
        expected = train_labels_for(self.train)
        if self.train_labels != expected or self.num_classes != len(set(expected)):
            raise ValueError("train_labels / num_classes do not match the train identities "
                             "(labels must be 0..C-1 in sorted-pid order)")
        return self

    @property
    def label_of_pid(self) -> dict[int, int]:
        """Training identity -> classifier label."""
        return train_label_map(self.train)

    def splits(self) -> DatasetSplits:
        """The manifest's samples as :class:`DatasetSplits` (for tables and tools that take splits)."""
        return DatasetSplits(name=self.name, train=list(self.train), query=list(self.query),
                             gallery=list(self.gallery), format=self.format, root=self.root,
                             has_cameras=self.has_cameras, protocol=self.protocol)


def dataset_name(manifest: Manifest) -> str:
    """The dataset's name for people and MLflow tags: its root folder's name (``Market-1501-v15.09.15``),
    else its format. The one place that derives it (training tags, evaluation tags, comparisons)."""
    return Path(str(manifest.root)).name or str(manifest.format)


def train_label_map(train: list[Sample]) -> dict[int, int]:
    """``{pid: label}`` with labels ``0..C-1`` assigned in increasing pid order (deterministic)."""
    return {pid: label for label, pid in enumerate(sorted({s.pid for s in train}))}


def train_labels_for(train: list[Sample]) -> list[int]:
    """The classifier label of every training sample, aligned with ``train``."""
    mapping = train_label_map(train)
    return [mapping[s.pid] for s in train]


def _sample_line(sample: Sample, root: str) -> bytes:
    """One sample as hashed: path relative to ``root``, stored size, pid, camid."""
    try:
        size = stored_size(sample.path)  # a file's size, or a pack member's
    except OSError as exc:
        raise DatasetError(f"{sample.path}: cannot read the file's size ({exc.strerror or exc}); "
                           f"was the dataset changed while it was being read?") from None
    rel = Path(os.path.relpath(sample.path, root)).as_posix()
    return f"{rel}\t{size}\t{sample.pid}\t{sample.camid}\n".encode()


def content_hash(splits: DatasetSplits, root: str) -> str:
    """sha256 over (split, path relative to ``root``, size, pid, camid) of every sample, in order."""
    digest = hashlib.sha256(f"reid-manifest-v{MANIFEST_VERSION}\n".encode())
    for split in SPLIT_NAMES:
        digest.update(f"[{split}]\n".encode())
        for sample in splits.split(split):
            digest.update(_sample_line(sample, root))
    return digest.hexdigest()


def training_hash(train: list[Sample], root: str) -> str:
    """sha256 over the training samples alone (the same lines as :func:`content_hash`).

    What a checkpoint learned from: a manifest re-prepared with another query/gallery (a corrupt test
    image deleted, a target added) keeps this hash, so ``reid train --resume`` accepts it; one more,
    one fewer or one relabelled training image changes it. The stored size is read from disk now.
    """
    digest = hashlib.sha256(b"reid-train-v1\n")
    for sample in train:
        digest.update(_sample_line(sample, root))
    return digest.hexdigest()


def build_manifest(splits: DatasetSplits, format: str | None = None, root: Path | str | None = None) -> Manifest:
    """The manifest of ``splits``; ``format`` and ``root`` default to what :func:`read_dataset` recorded."""
    fmt = format or splits.format or "custom"
    if root is not None:
        root_str = os.path.abspath(str(root))
    elif splits.root:
        root_str = splits.root
    else:
        paths = [s.path for name in SPLIT_NAMES for s in splits.split(name)]
        root_str = os.path.commonpath(paths) if paths else os.getcwd()
    for name in SPLIT_NAMES:
        bad = [s.path for s in splits.split(name) if not os.path.isabs(s.path)]
        if bad:
            raise DatasetError(f"{name} sample path {bad[0]!r} is relative; manifests store absolute paths")
    labels = train_labels_for(splits.train)
    return Manifest(format=fmt, root=root_str, name=splits.name, train=list(splits.train), query=list(splits.query),
                    gallery=list(splits.gallery), train_labels=labels, num_classes=len(set(labels)),
                    content_hash=content_hash(splits, root_str), statistics=statistics(splits),
                    has_cameras=splits.has_cameras, protocol=splits.protocol)


def write_manifest(manifest: Manifest, path: Path | str) -> Path:
    """Write ``manifest`` as JSON atomically (a reader never sees half a file); creates parent folders."""
    return write_text_atomic(path, manifest.model_dump_json(indent=1) + "\n")


def load_manifest(path: Path | str, params: Path | str | None = None, variant: str | None = None) -> Manifest:
    """Read a manifest written by ``reid prepare``; a missing or malformed file is a :class:`DatasetError`.

    ``params`` / ``variant``: the parameter file the caller was given, so that the hint for a missing
    manifest is the command that writes *this* manifest.
    """
    path = Path(path)
    if not path.is_file():
        argv = ["reid", "prepare", "--params", str(params if params is not None else "params.yaml")]
        again = shlex.join(argv + (["--variant", variant] if variant else []))  # a path with a space stays one word
        raise DatasetError(f"manifest {path} not found: run `{again}` first "
                           f"(it reads data.root and writes data.manifest)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"manifest {path} is not readable JSON ({exc}); "
                           f"rerun `reid prepare` to rewrite it") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"manifest {path} must hold a JSON object, not {type(raw).__name__}; rerun `reid prepare`")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()[:5])
        raise DatasetError(f"manifest {path} is malformed ({problems}); rerun `reid prepare` to rewrite it") from None
