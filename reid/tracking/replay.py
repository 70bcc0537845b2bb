"""Bring an MLflow store up to date from a run's local record (``reid log-run``).

Used after a run whose tracking server went away (the record, :mod:`reid.tracking.record`, holds
what the server missed), and to publish a run trained against a local store to a team server
(``--tracking-uri``). What is sent, and why never twice: :mod:`reid.tracking.sync`.

When the store does not know the recorded run id (another server, or a reset one), the run is created
in the recorded experiment with the recorded name, tags and start time and tagged
``reid.replayed_from_run``; a later replay finds it by that tag instead of creating another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reid.errors import TrackingError
from reid.tracking.record import RecordedRun, find_record, read_record
from reid.tracking.sync import ReplayReport, sync_run

__all__ = ["REPLAYED_FROM", "ReplayReport", "replay_record", "sync_run", "target_run"]

REPLAYED_FROM = "reid.replayed_from_run"


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
