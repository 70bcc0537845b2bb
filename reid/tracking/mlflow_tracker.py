"""MLflow tracking of a training run: one object the trainer talks to, a no-op when tracking is off.

Why a wrapper instead of calling ``mlflow.*`` in the trainer:

* **Where runs go is anchored once.** A relative ``sqlite:///mlflow.db`` and a relative
  ``tracking.artifact_root`` are anchored at ``DVC_ROOT`` inside a DVC stage (the main repository
  even under ``dvc exp run --temp``), else at ``base`` (the working directory by default, which is
  what the commands pass too: every relative path of the parameters is relative to it).
  Experiments are created with an absolute artifact location for the same reason.
* **Fail before training, not after it.** :meth:`Tracker.check` tests the store (an ``http(s)`` URI
  answers a short request; a sqlite file's folder is writable) and raises
  :class:`~reid.errors.TrackingError` at once, instead of letting MLflow's HTTP retries stall a
  run or an unwritable store lose three hours of metrics at the end.
* **Every run ends with a truthful status.** Used as a context manager, the run ends FINISHED on
  success, FAILED on an exception (with the error as the ``reid.error`` tag) and KILLED on Ctrl-C or
  SIGTERM (:func:`reid.engine.signals.sigterm_as_interrupt` turns SIGTERM into a ``KeyboardInterrupt``
  subclass so the same path runs). A SIGKILLed process cannot mark anything: its run stays RUNNING until
  ``reid train --resume`` reopens the same run id (set back to RUNNING) and ends it properly.
* **Logging never kills training.** After the run has started, a failed metric or artifact upload
  is a warning (counted in :attr:`Tracker.failures`); losing a point of a curve is better than
  losing the run. Opening the run and logging parameters do raise.
* **A tracking server that goes away costs seconds and loses nothing.** With a local record
  (:meth:`Tracker.keep_record`, which ``reid train`` sets to ``<output_dir>/mlflow-record.jsonl``)
  every call is written to the record before it is sent (:mod:`reid.tracking.record`). When a call
  to an ``http(s)`` server fails and the server no longer answers its health check, the tracker goes
  *offline*: training goes on, checkpoints are written as usual, calls are only recorded, and every
  :data:`RECONNECT_INTERVAL_S` one short health check asks whether the server is back; if it is, the
  tracker sends what the server missed (:func:`reid.tracking.sync.sync_run`) and goes on live.
  A call that failed while the server still answered is sent again from the record when the run
  ends. Whatever is still missing at the end is sent later by ``reid log-run <output_dir>``. Each call
  runs under :func:`reid.tracking.connection.bounded_http`, so a dead server costs a few seconds once
  instead of MLflow's minutes of retries per call.
* **Explicit run ids, no global state.** Everything goes through ``MlflowClient`` with this run's id,
  so nothing here starts, ends or switches the process's active fluent run.

Only rank 0 of a distributed run tracks (``rank != 0`` gives a disabled tracker).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

from reid.atomic import write_error
from reid.config import Config, TrackingConfig
from reid.errors import TrackingError
from reid.tracking.connection import bounded_http, is_server_uri
from reid.tracking.record import RunRecord, file_sha256, read_record

# MLflow's sqlite store trips a sqlalchemy deprecation (``noload``) on every query.
warnings.filterwarnings("ignore", message=r".*noload.*", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"sqlalchemy.*")

SQLITE_PREFIX = "sqlite:///"
PARAM_VALUE_MAX = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
TAG_VALUE_MAX = 5000
BATCH = 100  # params/tags per log_batch call (MLflow's limit)
CHECK_TIMEOUT_S = 5.0
RECONNECT_INTERVAL_S = 60.0  # how often an offline tracker asks whether its server is back
PROBE_TIMEOUT_S = 2.0


def tracking_base() -> Path:
    """Anchor of relative tracking paths: ``DVC_ROOT`` when set, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd())


def resolve_store_uri(uri: str, base: Path) -> str:
    """A relative ``sqlite:///x.db`` (or a plain relative path) becomes absolute against ``base``."""
    if uri.startswith(SQLITE_PREFIX):
        path = uri[len(SQLITE_PREFIX):]
        if path and path != ":memory:" and not path.startswith("/"):
            return SQLITE_PREFIX + str((base / path).resolve())
        return uri
    if "://" not in uri and not uri.startswith("file:") and not Path(uri).is_absolute():
        return str((base / uri).resolve())
    return uri


def resolve_artifact_root(root: Path, base: Path) -> Path:
    return (root if root.is_absolute() else base / root).resolve()


def check_store(uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` unless the store at ``uri`` looks reachable and writable.

    http(s): one ``GET /health`` with a short timeout; any HTTP answer (even 401/404) proves a
    server is there. sqlite/local paths: the folder can be created and written. Other schemes
    (postgresql, databricks, ...) are left to the client, which reports its own errors.
    """
    hint = "Fix tracking.uri, start the server, or disable tracking with -o tracking.enabled=false."
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 - the user's own server
                pass
        except urllib.error.HTTPError:
            return  # the server answered
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"MLflow tracking server {uri} is not reachable ({reason}). {hint}") from None
        return
    if uri.startswith(SQLITE_PREFIX):
        path = uri[len(SQLITE_PREFIX):]
        if not path or path == ":memory:":
            return
        _check_writable(Path(path), f"MLflow database {path}", hint)
        return
    if uri.startswith("file:") or "://" not in uri:
        folder = Path(uri.removeprefix("file://").removeprefix("file:"))
        _check_writable(folder / "meta.yaml", f"MLflow file store {folder}", hint)


def _check_writable(file: Path, what: str, hint: str) -> None:
    folder = file.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"{what}: cannot create folder {folder} ({exc.strerror or exc}). {hint}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TrackingError(f"{what}: folder {folder} is not writable. {hint}")
    if file.exists() and not os.access(file, os.R_OK | os.W_OK):
        raise TrackingError(f"{what}: {file} is not readable and writable. {hint}")


def git_commit(cwd: Path) -> str | None:
    """``git rev-parse HEAD`` in ``cwd``, or None outside a repository / without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def run_tags(config: Config, *, variant: str | None, dataset: str | None = None,
             base: Path | None = None, extra: Mapping[str, Any] | None = None, command: str = "train") -> dict[str, str]:
    """The tags every run of a ``reid`` command carries (command, dataset, backbone, kd mode, variant, git,
    DVC context); the one place they are built (``reid train``, and ``reid evaluate`` / ``reid export``
    when they open a run of their own).

    ``variant`` is the name of the params.yaml variant, ``baseline`` for the base configuration:
    ``reid compare`` finds a model's run by this tag (and by ``reid.command`` = ``train``).
    """
    tags: dict[str, Any] = {
        "reid.command": command,
        "variant": variant or "baseline",
        "backbone": config.model.backbone,
        "kd_mode": config.kd.mode,
        "dataset": dataset or Path(str(config.data.root)).name,
        "dataset_format": config.data.format,
    }
    commit = git_commit(base or tracking_base())
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    for env, tag in (("DVC_STAGE", "dvc_stage"), ("DVC_EXP_NAME", "dvc_exp"),
                     ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    tags.update(extra or {})
    return {k: str(v)[:TAG_VALUE_MAX] for k, v in tags.items() if v is not None}


def param_value(value: Any) -> str:
    """MLflow param values are strings of at most 6000 characters."""
    text = str(value)
    return text if len(text) <= PARAM_VALUE_MAX else text[: PARAM_VALUE_MAX - 3] + "..."


def _experiment_folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


class Tracker:
    """One MLflow run of the trainer; every method is a no-op when tracking is disabled (or rank != 0).

    Typical use::

        tracker = Tracker(config.tracking, rank=rank)
        tracker.check()                       # fail fast, before any training
        with sigterm_as_interrupt(), tracker.start(run_id=resume_id, run_name=name, tags=tags):
            tracker.log_params(config.active_flat())
            ...
    """

    def __init__(self, tracking: TrackingConfig, *, rank: int = 0, base: Path | None = None,
                 strict: bool = False) -> None:
        self.tracking = tracking
        # strict: a failed call raises TrackingError (``reid evaluate``, whose logging is its result);
        # otherwise it is a warning, since tracking must never end a training run.
        self.strict = strict
        self.attached = False            # logging into an existing run this tracker did not open
        self.enabled = bool(tracking.enabled) and rank == 0
        base = Path(os.environ["DVC_ROOT"]) if os.environ.get("DVC_ROOT") else (base or Path.cwd())
        self.uri = resolve_store_uri(tracking.uri, base)
        self.artifact_root = resolve_artifact_root(Path(tracking.artifact_root), base)
        self.run_id: str | None = None
        self.resumed = False
        self.failures = 0
        self._client: Any = None
        self.record: RunRecord | None = None
        self.offline = False             # the server stopped answering; calls are only recorded
        self.unsent = 0                  # calls recorded but not sent while offline
        self.reconnect_interval_s = RECONNECT_INTERVAL_S
        self._next_probe = 0.0
        self._missed = False             # a call failed: the record holds what the store lacks

    def keep_record(self, path: Path, new: bool = False) -> None:
        """Write every call to the record at ``path`` before sending it (``new``: a new run in this
        folder, the previous record is moved aside); see :mod:`reid.tracking.record`."""
        if self.enabled:
            self.record = RunRecord(path, new=new)

    # -- opening ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`TrackingError` now if the store or the artifact folder cannot be used."""
        if not self.enabled:
            return
        check_store(self.uri)
        if not is_server_uri(self.uri) and "://" not in str(self.artifact_root):
            _check_writable(self.artifact_root / ".probe", "MLflow artifact root", "Fix tracking.artifact_root.")

    def _mlflow_client(self) -> Any:
        if self._client is None:
            _quiet_mlflow_loggers()
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        """Id of ``tracking.experiment``, created with an absolute artifact location when missing."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client()
        name = self.tracking.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = self._artifact_location(name)
            try:
                return client.create_experiment(name, artifact_location=location)
            except MlflowException:
                # Another process (a parallel DVC stage) created it in the meantime.
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if is_server_uri(self.uri) and str(experiment.artifact_location).startswith("file:"):
            warnings.warn(f"MLflow experiment {name!r} on {self.uri} stores artifacts in a folder of the machine "
                          f"that logs them ({experiment.artifact_location}), not on the server; create a new "
                          "experiment (tracking.experiment) to keep artifacts on the server", stacklevel=2)
        if experiment.lifecycle_stage == "deleted":
            warnings.warn(f"MLflow experiment {name!r} was deleted; restoring it to log this run", stacklevel=2)
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _artifact_location(self, name: str) -> str | None:
        """Where a new experiment keeps artifacts: an absolute folder beside a local store; for a
        tracking server, the server's choice (``None``: its ``--serve-artifacts`` store or
        ``--default-artifact-root``). A client-side path would put a shared server's artifacts on
        whichever machine happened to create the experiment, out of reach of every other one."""
        if is_server_uri(self.uri):
            return None
        return (self.artifact_root / _experiment_folder(name)).as_uri()

    def start(self, run_id: str | None = None, run_name: str | None = None,
              tags: Mapping[str, str] | None = None) -> "Tracker":
        """Create a run, or reopen ``run_id`` (a resume) and set it back to RUNNING; returns self.

        A ``run_id`` that this store does not know (the store moved, or was reset) starts a new run
        tagged ``reid.resumed_from_run`` instead of failing the resume.
        """
        if not self.enabled:
            return self
        from mlflow.exceptions import MlflowException

        try:
            with bounded_http():
                self._open(run_id, run_name, tags)
        except MlflowException as exc:
            raise TrackingError(f"cannot open an MLflow run in {self.uri}: {exc}. "
                                "Disable tracking with -o tracking.enabled=false") from exc
        return self

    def attach(self, run_id: str) -> bool:
        """Log into the existing run ``run_id`` without changing its status (``reid evaluate`` adds the
        evaluation to the run that trained the model); False, doing nothing, when this store lacks it."""
        if not self.enabled:
            return False
        from mlflow.exceptions import MlflowException

        try:
            with bounded_http():
                self._mlflow_client().get_run(run_id)
        except MlflowException:
            return False
        self.run_id, self.attached = run_id, True
        return True

    def _open(self, run_id: str | None, run_name: str | None, tags: Mapping[str, str] | None) -> None:
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client()
        experiment_id = self.experiment_id()
        tags = dict(tags or {})
        if run_id is not None:
            try:
                client.get_run(run_id)
            except MlflowException:
                warnings.warn(f"MLflow run {run_id} of the checkpoint is not in {self.uri}; starting a new run",
                              stacklevel=3)
                tags["reid.resumed_from_run"] = run_id
                run_id = None
        if run_id is None:
            from mlflow.tracking.context.registry import resolve_tags

            resolved = resolve_tags(tags)
            run = client.create_run(experiment_id, run_name=run_name or self.tracking.run_name, tags=resolved)
            self.run_id = run.info.run_id
            self._record("open", resumed=False, run_name=run.info.run_name, time=run.info.start_time, tags=resolved,
                         **self._store_fields())
        else:
            client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            self.resumed = True
            self._record("open", resumed=True, time=int(time.time() * 1000), **self._store_fields())
            self.set_tags(tags, strict=True)

    def _store_fields(self) -> dict[str, str]:
        """Where the run lives, for the record: a replay finds (or recreates) it there."""
        return {"uri": self.uri, "experiment": self.tracking.experiment, "artifact_root": str(self.artifact_root)}

    # -- logging ---------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log every parameter (stringified, batched). On a resumed run, a value that changed since
        (e.g. ``train.epochs``) cannot be overwritten (MLflow params are immutable), so it is recorded
        as a ``reid.resume.changed.<key>`` tag ``old -> new`` instead."""
        if not self._active():
            return
        from mlflow.exceptions import MlflowException

        values = {k: param_value(v) for k, v in params.items()}
        try:
            self._send_params(values)
        except MlflowException as exc:
            raise TrackingError(f"cannot log parameters to MLflow run {self.run_id}: {exc}") from exc

    def _send_params(self, values: dict[str, str]) -> None:
        from mlflow.entities import Param

        with bounded_http():
            if self.resumed:
                existing = self._client.get_run(self.run_id).data.params
                changed = {k: v for k, v in values.items() if k in existing and existing[k] != v}
                self.set_tags({f"reid.resume.changed.{k}": f"{existing[k]} -> {v}" for k, v in changed.items()},
                              strict=True)
                values = {k: v for k, v in values.items() if k not in existing}
            self._record("params", params=values)
            items = [Param(k, v) for k, v in sorted(values.items())]
            for i in range(0, len(items), BATCH):
                self._client.log_batch(self.run_id, params=items[i:i + BATCH])

    def set_tags(self, tags: Mapping[str, Any], strict: bool = False) -> None:
        if not self._active() or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:TAG_VALUE_MAX]) for k, v in tags.items()]
        self._record("tags", tags={t.key: t.value for t in items})
        for i in range(0, len(items), BATCH):
            self._guard("tags", lambda: self._client.log_batch(self.run_id, tags=items[i:i + BATCH]), strict)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` in one call; a failure is a warning, never fatal."""
        if not self._active() or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        self._record("metrics", step=int(step or 0), timestamp=now, metrics={m.key: m.value for m in items})
        self._guard(f"metrics of step {int(step or 0)}", lambda: self._client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Upload one file to the run's artifacts (under ``artifact_path``); warns on failure."""
        if not self._active():
            return
        if self.record is not None:
            path = Path(path).resolve()
            self._record("artifact", path=str(path), artifact_path=artifact_path,
                         sha256=file_sha256(path) if path.is_file() else None)
        # A local artifact store on a full disk: the warning says so, with the folder and the free space.
        store = None if is_server_uri(self.uri) or "://" in str(self.artifact_root) else self.artifact_root
        self._guard(f"artifact {path}", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path),
                    target=store)

    def log_dataset(self, manifest: Any, context: str, name: str | None = None) -> None:
        """Record ``manifest`` as a dataset input of the run (:mod:`reid.tracking.datasets`); warns on failure."""
        if not self._active():
            return
        from reid.tracking.datasets import log_dataset

        self._guard("dataset input", lambda: log_dataset(self._client, self.run_id, manifest, context, name=name))

    # -- closing ---------------------------------------------------------------------------------
    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED / FAILED / KILLED (a failure to do so is a warning); an attached run keeps its status."""
        if not self._active() or self.attached:
            return
        now = int(time.time() * 1000)
        self._record("end", status=status, time=now)
        self._next_probe = 0.0  # offline: one last look for the server before the run ends
        self._guard(f"status {status}", lambda: self._client.set_terminated(self.run_id, status, end_time=now))
        if self._missed and not self.offline and self.record is not None:
            self._catch_up()  # calls that failed while the server answered: send them now

    def close_abandoned(self, run_id: str | None) -> bool:
        """Mark ``run_id`` KILLED if it is still RUNNING; True when it was.

        A process killed with SIGKILL (or by the OOM killer, or a power cut) cannot close its run, so
        MLflow would show it RUNNING forever. The trainer calls this with the run recorded in the
        ``last.pt`` that a new, non-resumed run is about to replace: nobody will continue that run.
        """
        if not self.enabled or not run_id:
            return False
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client()
        with bounded_http():
            try:
                if client.get_run(run_id).info.status != "RUNNING":
                    return False
                client.set_tag(run_id, "reid.error", "abandoned: its process ended without closing the run "
                               "(SIGKILL or a crash), and a new run replaced its checkpoint")
                client.set_terminated(run_id, "KILLED")
            except MlflowException:
                return False  # a run of another store, or already gone
        return True

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.set_tags({"reid.error": f"interrupted: {exc}" if str(exc) else "interrupted"})
            self.end("KILLED")
        else:
            self.set_tags({"reid.error": f"{exc_type.__name__}: {exc}"})
            self.end("FAILED")

    # -- helpers ---------------------------------------------------------------------------------
    def _active(self) -> bool:
        return self.enabled and self.run_id is not None

    def _record(self, event: str, **fields: Any) -> None:
        """Append one event to the local record; a record that cannot be written is a warning."""
        if self.record is None or self.run_id is None:
            return
        try:
            self.record.write(event, self.run_id, **fields)
        except OSError as exc:
            clear = write_error(self.record.path, exc)  # a full disk: the path, the free space
            warnings.warn(f"cannot write the MLflow record {self.record.path} ({clear or exc}); what the server misses "
                          "from now on cannot be replayed", stacklevel=3)
            self.record = None

    def _guard(self, what: str, action: Any, strict: bool = False, target: Path | None = None) -> None:
        strict = strict or self.strict
        if self.offline and not strict:
            self.unsent += 1
            self._reconnect()  # when the server is back, the record (which holds this call) is sent
            return
        try:
            with bounded_http():
                action()
        except Exception as exc:  # noqa: BLE001 - tracking must not end a training run
            if strict:
                raise TrackingError(f"MLflow run {self.run_id}: could not log {what}: {exc}") from exc
            self.failures += 1
            self._missed = self.record is not None
            if self.record is not None and is_server_uri(self.uri) and not _answers(self.uri):
                self._go_offline(what, exc)
                return
            clear = write_error(target, exc) if target is not None else None
            warnings.warn(f"MLflow: could not log {what} to run {self.run_id}: {clear or exc}", stacklevel=3)

    def _go_offline(self, what: str, exc: BaseException) -> None:
        self.offline = True
        self.unsent += 1
        self._next_probe = time.monotonic() + self.reconnect_interval_s
        assert self.record is not None
        warnings.warn(
            f"MLflow server {self.uri} stopped answering (could not log {what}: {type(exc).__name__}). "
            f"Training goes on and keeps its checkpoints; every call is kept in {self.record.path}, and the "
            f"tracker asks every {self.reconnect_interval_s:g} s whether the server is back. What it still misses "
            f"at the end is logged with: reid log-run {self.record.path.parent}", stacklevel=4)

    def _reconnect(self) -> bool:
        """While offline: at most every ``reconnect_interval_s``, a short health check; when the
        server answers, send it everything of this run's record that it lacks, and go on live."""
        if self.record is None or time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + self.reconnect_interval_s
        if not _answers(self.uri):
            return False
        return self._catch_up()

    def _catch_up(self) -> bool:
        """Send the store what it lacks of this run's record; True when it then holds all of it."""
        from reid.tracking.sync import sync_run

        assert self.record is not None
        try:
            recorded = next(r for r in read_record(self.record.path) if r.run_id == self.run_id)
            with bounded_http():
                report = sync_run(self._client, recorded, self.run_id)
        except Exception as exc:  # noqa: BLE001 - tracking must not end a training run; the record stays
            warnings.warn(f"MLflow {self.uri}: sending what run {self.run_id} missed failed ({exc}); it stays in "
                          f"{self.record.path} for `reid log-run {self.record.path.parent}`", stacklevel=4)
            return False
        was_offline = self.offline
        self.offline, self.unsent, self._missed = False, 0, False
        if was_offline:
            warnings.warn(f"MLflow server {self.uri} is back: {report.summary()}; logging live again", stacklevel=4)
        return True

    @property
    def run_url_hint(self) -> str:
        """How to look at the run (printed by ``reid train``)."""
        return f"run {self.run_id} in {self.uri} (experiment {self.tracking.experiment!r})"


def _answers(uri: str) -> bool:
    """Whether the tracking server at ``uri`` answers a short health check."""
    try:
        check_store(uri, timeout=PROBE_TIMEOUT_S)
    except TrackingError:
        return False
    return True


def _quiet_mlflow_loggers() -> None:
    """Alembic prints a dozen INFO lines when MLflow creates or migrates a sqlite store."""
    import logging

    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
