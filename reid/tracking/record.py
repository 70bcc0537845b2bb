"""The local record of a training run's MLflow logging: what was sent, kept beside the checkpoints.

Why: a tracking server may go away in the middle of a run (a restart, a full disk, a network cut).
The training must not stop for that, and nothing it logged may be lost. So the tracker of ``reid
train`` writes every call it makes (run opened, params, tags, metric points with their step and
timestamp, artifact files, final status) as one JSON line to ``<train.output_dir>/mlflow-record.jsonl``
*before* sending it. The file is then a complete account of the run whatever the server received, and
:mod:`reid.tracking.replay` (``reid log-run``) brings a server up to date from it; because every point
keeps its original step and timestamp, replaying twice, or replaying what did arrive, adds nothing.

Format: one object per line with ``event`` (``open``, ``params``, ``tags``, ``metrics``,
``artifact``, ``end``) and ``run_id``; a resumed run appends to the same file (a second ``open`` with
``resumed: true``). A new run in the same folder (``reid train`` without ``--resume``) moves the
previous record aside to ``mlflow-record.<its run id>.jsonl``: that run's checkpoints are being
replaced, and artifact hashes in the record tell a replay which of its files are no longer the ones
it logged.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid.errors import TrackingError

RECORD_FILE = "mlflow-record.jsonl"
EVENTS = ("open", "params", "tags", "metrics", "artifact", "end")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunRecord:
    """Append-only writer of the record (one JSON line per event, flushed at once).

    Each write opens, appends and closes the file: a process killed at any point leaves every
    earlier line intact (at worst a torn last line, which the reader skips).
    """

    def __init__(self, path: Path | str, new: bool = False) -> None:
        self.path = Path(path)
        if new and self.path.is_file():
            self.path.replace(self._archive_name())

    def _archive_name(self) -> Path:
        runs = [run.run_id for run in read_record(self.path)] or ["previous"]
        name = self.path.name.removesuffix(".jsonl")
        return self.path.with_name(f"{name}.{runs[-1]}.jsonl")

    def write(self, event: str, run_id: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown record event {event!r}")
        line = json.dumps({"event": event, "run_id": run_id, **fields}, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


@dataclass
class MetricPoint:
    key: str
    value: float
    timestamp: int
    step: int

    def identity(self) -> tuple[str, int, int, str]:
        """Equal for the same point logged twice (NaN compares equal to NaN here)."""
        value = "nan" if math.isnan(self.value) else repr(float(self.value))
        return self.key, int(self.step), int(self.timestamp), value


@dataclass
class ArtifactEntry:
    path: Path
    artifact_path: str | None
    sha256: str | None


@dataclass
class RecordedRun:
    """Everything the record holds about one MLflow run, in the order it was logged."""

    run_id: str
    uri: str = ""
    experiment: str = ""
    artifact_root: str = ""
    run_name: str | None = None
    start_time: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[MetricPoint] = field(default_factory=list)
    artifacts: dict[tuple[str | None, str], ArtifactEntry] = field(default_factory=dict)
    status: str | None = None
    end_time: int | None = None

    def add(self, entry: dict[str, Any]) -> None:
        event = entry["event"]
        if event == "open":
            for key in ("uri", "experiment", "artifact_root"):
                setattr(self, key, entry.get(key) or getattr(self, key))
            self.run_name = entry.get("run_name") or self.run_name
            if self.start_time is None:
                self.start_time = entry.get("time")
            self.tags.update({k: str(v) for k, v in (entry.get("tags") or {}).items()})
            self.status, self.end_time = None, None  # a resume reopens the run
        elif event == "params":
            self.params.update({k: str(v) for k, v in entry["params"].items()})
        elif event == "tags":
            self.tags.update({k: str(v) for k, v in entry["tags"].items()})
        elif event == "metrics":
            for key, value in entry["metrics"].items():
                self.metrics.append(MetricPoint(key, float(value), int(entry["timestamp"]), int(entry["step"])))
        elif event == "artifact":
            path = Path(entry["path"])
            self.artifacts[(entry.get("artifact_path"), path.name)] = ArtifactEntry(
                path, entry.get("artifact_path"), entry.get("sha256"))
        elif event == "end":
            self.status, self.end_time = entry["status"], entry.get("time")


def read_record(path: Path | str) -> list[RecordedRun]:
    """The runs of a record file in the order they were opened; a torn last line is skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TrackingError(f"cannot read the MLflow record {path}: {exc.strerror or exc}") from None
    runs: dict[str, RecordedRun] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if entry.get("event") not in EVENTS or not entry.get("run_id"):
                raise ValueError(f"unknown event {entry.get('event')!r}")
        except (ValueError, AttributeError) as exc:
            if number == len(lines):
                warnings.warn(f"{path}: the last line is incomplete (the process was killed while writing it); "
                              "skipped", stacklevel=2)
                continue
            raise TrackingError(f"{path}, line {number}: not a reid MLflow record line ({exc}); "
                                "was the file edited? Restore it or remove that line") from None
        runs.setdefault(entry["run_id"], RecordedRun(entry["run_id"])).add(entry)
    return list(runs.values())


def find_record(source: Path | str) -> Path:
    """The record of an output folder (``<folder>/mlflow-record.jsonl``) or a record file itself."""
    source = Path(source)
    path = source / RECORD_FILE if source.is_dir() else source
    if not path.is_file():
        where = f"{source} has no {RECORD_FILE}" if source.is_dir() else f"{source} does not exist"
        raise TrackingError(f"{where}: give the train.output_dir of a run trained with MLflow tracking on "
                            f"(it writes {RECORD_FILE} there), or the record file itself")
    return path

