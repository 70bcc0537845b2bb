"""Bring an MLflow store up to date from a run's local record (``reid log-run``).

Used after a run whose tracking server went away (the record, :mod:`reid.tracking.record`, holds
what the server missed), by the tracker itself when the server comes back during the run, and to
publish a run trained against a local store to a team server (``--tracking-uri``).

Idempotent by construction: each item is compared with what the store already holds and only the
difference is sent. Params missing from the run are logged (a recorded value that differs from the
stored one cannot be changed, MLflow params are immutable, and is reported); tags are set; metric
points are matched on (key, step, timestamp, value), so a point that arrived before the server died
is not logged twice; an artifact is uploaded unless a file of the same name and size is there; the
recorded final status (and end time) is set. An artifact whose file changed since it was recorded
(its hash differs) or was deleted is not uploaded, and reported.

When the store does not know the recorded run id (another server, or a reset one), the run is created
in the recorded experiment with the recorded name, tags and start time and tagged
``reid.replayed_from_run``; a later replay finds it by that tag instead of creating another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid.errors import TrackingError
from reid.tracking.record import MetricPoint, RecordedRun, file_sha256, find_record, read_record

REPLAYED_FROM = "reid.replayed_from_run"
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


def target_run(client: Any, recorded: RecordedRun, uri: str) -> tuple[str, bool]:
    """``(run id, created)``: the recorded run in this store, its earlier replay, or a new run."""
    from mlflow.exceptions import MlflowException

    from reid.config import TrackingConfig
    from reid.tracking.mlflow_tracker import Tracker

    try:
        return client.get_run(recorded.run_id).info.run_id, False
    except MlflowException:
        pass
    tracking = TrackingConfig(uri=uri, experiment=recorded.experiment or "reid",
                              artifact_root=Path(recorded.artifact_root or "mlruns"))
    experiment_id = Tracker(tracking).experiment_id()
    earlier = client.search_runs([experiment_id], filter_string=f"tags.`{REPLAYED_FROM}` = '{recorded.run_id}'",
                                 max_results=1)
    if earlier:
        return earlier[0].info.run_id, False
    tags = {**recorded.tags, REPLAYED_FROM: recorded.run_id}
    run = client.create_run(experiment_id, start_time=recorded.start_time, tags=tags, run_name=recorded.run_name)
    return run.info.run_id, True


def replay_record(source: Path | str, uri: str | None = None) -> list[ReplayReport]:
    """Replay every run of the record of ``source`` (an output folder or a record file) into ``uri``
    (default: the store each run was recorded against)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from reid.tracking.connection import bounded_http
    from reid.tracking.mlflow_tracker import check_store

    path = find_record(source)
    runs = read_record(path)
    if not runs:
        raise TrackingError(f"{path} records no MLflow run")
    reports = []
    for recorded in runs:
        target = uri or recorded.uri
        if not target:
            raise TrackingError(f"{path}: run {recorded.run_id} has no recorded tracking URI; pass --tracking-uri")
        check_store(target)
        client = MlflowClient(tracking_uri=target, registry_uri=target)
        try:
            with bounded_http():
                run_id, created = target_run(client, recorded, target)
                report = sync_run(client, recorded, run_id)
        except MlflowException as exc:
            raise TrackingError(f"replaying run {recorded.run_id} of {path} into {target} failed: {exc}. "
                                "Nothing is lost: the record is unchanged; run the command again") from exc
        report.created = created
        reports.append(report)
    return reports
