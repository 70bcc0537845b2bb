"""Send an MLflow run what it lacks of a local record: the difference, never a point twice.

Shared by the tracker (catching up when its server comes back, :mod:`reid.tracking.mlflow_tracker`)
and by ``reid log-run`` (:mod:`reid.tracking.replay`, which also finds or creates the target run).

Idempotent by construction: each item is compared with what the store already holds and only the
difference is sent. Params missing from the run are logged (a recorded value that differs from the
stored one cannot be changed, MLflow params are immutable, and is reported); tags are set; metric
points are matched on (key, step, timestamp, value), so a point that arrived before the server died
is not logged twice; an artifact is uploaded unless a file of the same name and size is there; the
recorded final status (and end time) is set. An artifact whose file changed since it was recorded
(its hash differs) or was deleted is not uploaded, and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid.tracking.record import MetricPoint, RecordedRun, file_sha256

BATCH = 100           # params / tags per log_batch (MLflow's limit)
METRIC_BATCH = 1000   # metrics per log_batch (MLflow's limit)


@dataclass
class ReplayReport:
    """What one replay sent for one recorded run."""

    recorded_run: str
    run_id: str
    created: bool = False
    params: int = 0
    tags: int = 0
    metrics: int = 0
    artifacts: int = 0
    status: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def sent_anything(self) -> bool:
        return bool(self.created or self.params or self.tags or self.metrics or self.artifacts or self.status)

    def summary(self) -> str:
        where = f"new run {self.run_id} (recorded as {self.recorded_run})" if self.created else f"run {self.run_id}"
        if not self.sent_anything:
            return f"{where}: already complete, nothing to log"
        parts = [f"{self.params} param(s)", f"{self.tags} tag(s)", f"{self.metrics} metric point(s)",
                 f"{self.artifacts} artifact(s)"]
        if self.status:
            parts.append(f"status {self.status}")
        return f"{where}: logged {', '.join(parts)}"


def sync_run(client: Any, recorded: RecordedRun, run_id: str) -> ReplayReport:
    """Send to ``run_id`` whatever of ``recorded`` the store behind ``client`` does not hold yet."""
    from mlflow.entities import Metric, Param, RunTag

    report = ReplayReport(recorded.run_id, run_id)
    run = client.get_run(run_id)
    stored_params = run.data.params
    params = []
    for key, value in recorded.params.items():
        if key not in stored_params:
            params.append(Param(key, value))
        elif stored_params[key] != value:
            report.notes.append(f"param {key}: the store has {stored_params[key]!r}, the record {value!r} (kept)")
    for i in range(0, len(params), BATCH):
        client.log_batch(run_id, params=params[i:i + BATCH])
    report.params = len(params)

    tags = [RunTag(k, v) for k, v in recorded.tags.items() if run.data.tags.get(k) != v]
    for i in range(0, len(tags), BATCH):
        client.log_batch(run_id, tags=tags[i:i + BATCH])
    report.tags = len(tags)

    stored = set()
    for key in {point.key for point in recorded.metrics}:
        for m in client.get_metric_history(run_id, key):
            stored.add(MetricPoint(m.key, m.value, m.timestamp, m.step).identity())
    missing, seen = [], set(stored)
    for point in recorded.metrics:
        identity = point.identity()
        if identity not in seen:
            seen.add(identity)
            missing.append(Metric(point.key, point.value, point.timestamp, point.step))
    for i in range(0, len(missing), METRIC_BATCH):
        client.log_batch(run_id, metrics=missing[i:i + METRIC_BATCH])
    report.metrics = len(missing)

    listed: dict[str | None, dict[str, int | None]] = {}
    for (artifact_path, name), entry in recorded.artifacts.items():
        if artifact_path not in listed:
            listed[artifact_path] = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, artifact_path)
                                     if not f.is_dir}
        where = f"{artifact_path}/{name}" if artifact_path else name
        if not entry.path.is_file():
            if name not in listed[artifact_path]:
                report.notes.append(f"artifact {where}: {entry.path} no longer exists; not logged")
            continue
        if name in listed[artifact_path] and listed[artifact_path][name] == entry.path.stat().st_size:
            continue
        if entry.sha256 and file_sha256(entry.path) != entry.sha256:
            report.notes.append(f"artifact {where}: {entry.path} changed since the run logged it; not logged")
            continue
        client.log_artifact(run_id, str(entry.path), entry.artifact_path)
        report.artifacts += 1

    if recorded.status and run.info.status != recorded.status:
        client.set_terminated(run_id, recorded.status, end_time=recorded.end_time)
        report.status = recorded.status
    elif not recorded.status:
        report.notes.append("the record has no end: the run is still going, or its process was killed "
                            "(continue it with `reid train --resume`)")
    return report
