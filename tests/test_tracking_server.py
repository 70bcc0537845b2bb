"""Several machines, one record: runs logged through a real `mlflow server`, and a server lost mid-run.

Every server here is a real ``mlflow server`` process started by the test on 127.0.0.1 (a free port,
its own backend and artifact folder, ``--serve-artifacts``, one worker, no job runner) and stopped by
the fixture's finaliser, also when the test fails. The backend is sqlite (one person), or a database
of a real throwaway PostgreSQL cluster (a team: many writers at once; tests/services.py starts it and
the test skips, saying why, where PostgreSQL is not installed). The record/replay tests at the end use
two sqlite stores and no server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from reid.config import TrackingConfig
from reid.evaluation.naming import EPOCH_EVAL_PREFIX, metric_key
from reid.tracking.mlflow_tracker import Tracker
from reid.tracking.record import RECORD_FILE, read_record
from reid.tracking.replay import REPLAYED_FROM, replay_record
from services import free_port

VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 90
# A metric per training step, and one per evaluation during training (the eval_epoch/* curve).
STEP_LOSS, EPOCH_MAP = "train_step/loss", metric_key("mAP", EPOCH_EVAL_PREFIX)


@dataclass
class MlflowServer:
    """One `mlflow server` process group (the CLI starts uvicorn as a child)."""

    root: Path
    port: int
    proc: subprocess.Popen
    backend: str

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash or an OOM kill would: nothing gets to clean up."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        try:  # a child left behind by a parent that died first
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_server(root: Path, port: int | None = None, backend: str | None = None) -> MlflowServer:
    """A server on ``backend`` (a database URI; default a sqlite file in ``root``), artifacts in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    backend = backend or f"sqlite:///{root / 'mlflow.db'}"
    log = open(root / f"server-{port}.log", "ab")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend, "--artifacts-destination", str(root / "artifacts"),
         "--serve-artifacts", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    server = MlflowServer(root, port, proc, backend)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"mlflow server exited ({proc.returncode}):\n"
                                 f"{(root / f'server-{port}.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    server.stop()
    raise AssertionError(f"mlflow server on port {port} did not answer within {STARTUP_TIMEOUT_S} s")


@pytest.fixture()
def mlflow_servers() -> Iterator[Callable[..., MlflowServer]]:
    """``start(root, port=None, backend=None)`` starts a server; every one started is stopped at the end."""
    started: list[MlflowServer] = []

    def start(root: Path, port: int | None = None, backend: str | None = None) -> MlflowServer:
        server = start_server(root, port, backend)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client_of(server: MlflowServer):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def server_files(server: MlflowServer) -> set[str]:
    return {p.name for p in server.artifacts.rglob("*") if p.is_file()}


def artifact_names(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_names(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def recorded_artifacts(output_dir: Path) -> set[str]:
    (run,) = read_record(output_dir / RECORD_FILE)
    return {f"{a}/{name}" if a else name for a, name in run.artifacts}


def assert_server_holds_the_record(client, run_id: str, output_dir: Path) -> None:
    """Every metric point of the run's record is in the server exactly once, every recorded artifact,
    parameter and tag is there, and the status is the recorded one."""
    (recorded,) = read_record(output_dir / RECORD_FILE)
    run = client.get_run(run_id)
    keys = {p.key for p in recorded.metrics}
    assert len(keys) >= 5 and STEP_LOSS in keys and EPOCH_MAP in keys, sorted(keys)
    for key in keys:
        stored = sorted((m.step, m.timestamp) for m in client.get_metric_history(run_id, key))
        assert stored == sorted((p.step, p.timestamp) for p in recorded.metrics if p.key == key), key
    assert recorded.params.items() <= run.data.params.items()
    assert recorded.tags.items() <= run.data.tags.items()
    assert recorded_artifacts(output_dir) <= artifact_names(client, run_id)
    assert run.info.status == recorded.status == "FINISHED"


def reid(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DVC_ROOT", None)
    proc = subprocess.run([str(VENV_BIN / "reid"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"reid {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def write_project(workdir: Path, tiny_config, synthetic_manifest, uri: str, experiment: str) -> Path:
    """A client machine's folder: params.yaml (the tiny config, tracking at ``uri``) and its manifest."""
    from reid.data.manifest import write_manifest

    workdir.mkdir(parents=True, exist_ok=True)
    tree = tiny_config.model_dump(mode="json")
    tree["data"]["manifest"] = "manifest.json"
    tree["train"].update({"output_dir": "run", "max_steps_per_epoch": 2})
    tree["tracking"] = {"enabled": True, "uri": uri, "experiment": experiment}
    (workdir / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    write_manifest(synthetic_manifest, workdir / "manifest.json")
    return workdir


# --- a pipeline run and two parallel trainings through one server ------------------------------------


@pytest.mark.slow
def test_train_evaluate_export_log_everything_through_the_server(
        tmp_path: Path, mlflow_servers, tiny_config, synthetic_manifest) -> None:
    server = mlflow_servers(tmp_path / "server")
    work = write_project(tmp_path / "client", tiny_config, synthetic_manifest, server.uri, "team")
    reid("train", "--params", "params.yaml", cwd=work)
    reid("evaluate", "run/last.pt", "--params", "params.yaml", "--output", "eval", cwd=work)
    reid("export", "run/last.pt", "--format", "onnx", "--output", "export/model.onnx", "--manifest", "manifest.json",
         "--num-images", "8", "--params", "params.yaml", "--name", "tiny", cwd=work)

    client = client_of(server)
    experiment = client.get_experiment_by_name("team")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    (run,) = client.search_runs([experiment.experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone"] == "resnet18" and run.data.params["train.max_steps_per_epoch"] == "2"
    assert run.data.tags["variant"] == "baseline"
    assert steps(client, run_id, STEP_LOSS) == [1, 2, 3, 4]
    assert steps(client, run_id, EPOCH_MAP) == [1, 2]
    assert_server_holds_the_record(client, run_id, work / "run")
    evaluated = json.loads((work / "eval" / "metrics.json").read_text())
    assert run.data.metrics["eval/mAP"] == pytest.approx(evaluated["mAP"])
    assert run.data.metrics["export/min_cosine"] >= 0.9999

    # Artifacts: listed by the server, stored in the server's folder, never in the client's.
    names = artifact_names(client, run_id)
    assert {"config.yaml", "metrics.json", "export/model.onnx", "evaluation/metrics.json"} <= names, names
    assert any(n.startswith("checkpoints/") and n.endswith(".pt") for n in names), names
    assert {"config.yaml", "model.onnx", "model.parity.json"} <= server_files(server)
    assert not (work / "mlruns").exists()
    downloaded = Path(client.download_artifacts(run_id, "export/model.onnx", str(tmp_path / "download")))
    assert downloaded.read_bytes() == (work / "export" / "model.onnx").read_bytes()

    (version,) = client.search_model_versions("name='team-tiny'")
    # The version is made from the run's logged ONNX model, whose files the server stores too.
    assert version.run_id == run_id and version.source.startswith("models:/"), version.source
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == run_id and logged.artifact_location.startswith("mlflow-artifacts:"), logged

    # The local record agrees with the server: replaying it sends nothing.
    (report,) = replay_record(work / "run")
    assert report.run_id == run_id and not report.sent_anything, report.summary()


@pytest.mark.slow
def test_two_trainings_at_once_both_log_completely(
        tmp_path: Path, mlflow_servers, tiny_config, synthetic_manifest) -> None:
    """Two machines (processes) start at the same moment against a server with no experiment yet."""
    server = mlflow_servers(tmp_path / "server")
    work = write_project(tmp_path / "client", tiny_config, synthetic_manifest, server.uri, "parallel")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {name: subprocess.Popen([str(VENV_BIN / "reid"), "train", "--params", "params.yaml", "--run-name", name,
                                     "-o", f"train.output_dir=run_{name}", "-o", f"train.seed={seed}"],
                                    cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed, name in enumerate(("a", "b"))}
    try:
        outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name]

    client = client_of(server)
    experiment = client.get_experiment_by_name("parallel")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["a", "b"]
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["train.output_dir"] == f"run_{name}"
        assert steps(client, run.info.run_id, STEP_LOSS) == [1, 2, 3, 4]
        assert steps(client, run.info.run_id, EPOCH_MAP) == [1, 2]
        assert_server_holds_the_record(client, run.info.run_id, work / f"run_{name}")
        (report,) = replay_record(work / f"run_{name}")
        assert not report.sent_anything, report.summary()


@pytest.mark.slow
def test_eight_trainings_at_once_through_a_postgresql_backed_server_log_completely(
        tmp_path: Path, postgres, mlflow_servers, tiny_config, synthetic_manifest) -> None:
    """A team's sweep: eight processes start together against one server on PostgreSQL (the backend for
    many writers) with no experiment yet; each run holds every metric point of its record exactly once,
    every artifact (stored in the server's folder), and the status FINISHED."""
    server = mlflow_servers(tmp_path / "server", backend=postgres.database("team"))
    work = write_project(tmp_path / "client", tiny_config, synthetic_manifest, server.uri, "sweep")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    names = [f"r{i}" for i in range(8)]
    procs = {name: subprocess.Popen([str(VENV_BIN / "reid"), "train", "--params", "params.yaml", "--run-name", name,
                                     "-o", f"train.output_dir=run_{name}", "-o", f"train.seed={seed}",
                                     "-o", "train.epochs=1", "-o", "train.eval_every=1"],
                                    cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed, name in enumerate(names)}
    try:
        outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name]

    client = client_of(server)
    experiment = client.get_experiment_by_name("sweep")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], max_results=100)}
    assert sorted(runs) == names
    for name, run in runs.items():
        assert run.data.params["train.output_dir"] == f"run_{name}"
        assert steps(client, run.info.run_id, STEP_LOSS) == [1, 2]
        assert steps(client, run.info.run_id, EPOCH_MAP) == [1]
        assert_server_holds_the_record(client, run.info.run_id, work / f"run_{name}")
        stored = artifact_names(client, run.info.run_id)
        assert {"config.yaml", "metrics.json"} <= stored, (name, stored)
        (report,) = replay_record(work / f"run_{name}")
        assert not report.sent_anything, report.summary()
    assert len([p for p in server.artifacts.rglob("config.yaml")]) == len(names)


# --- the server goes away ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """The server's database: None (a sqlite file beside its artifacts) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").database("mlflow")


@pytest.mark.slow
def test_server_killed_mid_run_training_goes_on_and_log_run_sends_the_rest(
        tmp_path: Path, mlflow_servers, backend, tiny_config, synthetic_manifest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server is SIGKILLed at global step 2 of 6: the training finishes with all its checkpoints in
    seconds (MLflow's own retries would stall each call for minutes), and `reid log-run` sends what the
    restarted server missed, exactly once. The database (sqlite file or PostgreSQL) outlives the server."""
    from reid.config import validate
    from reid.checkpoint import read_entry
    from reid.engine.trainer import train

    server = mlflow_servers(tmp_path / "server", backend=backend)
    tree = tiny_config.model_dump(mode="json")
    tree["tracking"] = {"enabled": True, "uri": server.uri, "experiment": "dies",
                        "artifact_root": str(tmp_path / "client-artifacts")}
    config = validate(tree, "server test")
    kill_step, killed_at = 2, []
    original = Tracker.log_metrics

    def log_metrics(self, metrics, step=None):  # the hook: the server dies before step 2 is logged
        if step == kill_step and STEP_LOSS in metrics and not killed_at:
            server.kill()
            killed_at.append(time.monotonic())
        original(self, metrics, step)

    monkeypatch.setattr(Tracker, "log_metrics", log_metrics)
    with pytest.warns(UserWarning, match="stopped answering") as caught:
        result = train(config, synthetic_manifest, progress=False)
    after_kill_s = time.monotonic() - killed_at[0]
    assert after_kill_s < 60, f"the run took {after_kill_s:.0f} s after its server died"
    assert any("reid log-run" in str(w.message) for w in caught)

    out = Path(config.train.output_dir)
    assert read_entry(out / "last.pt", "epoch") == 2 and result.epochs == 2
    assert (out / "last.pt").is_file() and (out / "metrics.json").is_file()
    assert not (tmp_path / "client-artifacts").exists()

    # The server comes back on the same database, port and artifact folder: it has what it got before.
    server = mlflow_servers(server.root, port=server.port, backend=backend)
    client = client_of(server)
    run_id = result.mlflow_run_id
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert steps(client, run_id, STEP_LOSS) == [1]
    assert EPOCH_MAP not in run.data.metrics
    before = artifact_names(client, run_id)
    assert "config.yaml" in before and "metrics.json" not in before
    assert not any(n.startswith("checkpoints/") for n in before), before

    logged = reid("log-run", str(out), cwd=tmp_path)
    assert f"run {run_id}: logged" in logged.stdout and "status FINISHED" in logged.stdout, logged.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    total_steps = config.train.epochs * config.train.max_steps_per_epoch
    assert steps(client, run_id, STEP_LOSS) == list(range(1, total_steps + 1))  # step 1 once, not twice
    assert steps(client, run_id, EPOCH_MAP) == [1, 2]
    assert run.data.metrics[EPOCH_MAP] == pytest.approx(result.metrics["mAP"])
    assert set(config.flat()) <= set(run.data.params)
    assert_server_holds_the_record(client, run_id, out)
    names = artifact_names(client, run_id)
    assert {"config.yaml", "metrics.json"} < names, names
    checkpoints = {n.split("/", 1)[1] for n in names if n.startswith("checkpoints/")}
    assert checkpoints and checkpoints <= {p.name for p in server.artifacts.rglob("*.pt")}

    again = reid("log-run", str(out), cwd=tmp_path)
    assert "already complete, nothing to log" in again.stdout, again.stdout


@pytest.mark.slow
def test_tracker_catches_up_when_its_server_comes_back(tmp_path: Path, mlflow_servers) -> None:
    server = mlflow_servers(tmp_path / "server")
    tracker = Tracker(TrackingConfig(uri=server.uri, experiment="comes-back"), base=tmp_path)
    tracker.keep_record(tmp_path / RECORD_FILE)
    tracker.reconnect_interval_s = 0.0
    with tracker.start(run_name="flaky"):
        tracker.log_params({"a": 1})
        tracker.log_metrics({"m": 1.0}, step=1)
        server.kill()
        started = time.monotonic()
        with pytest.warns(UserWarning, match="stopped answering"):
            tracker.log_metrics({"m": 2.0}, step=2)
        tracker.log_metrics({"m": 3.0}, step=3)  # offline: recorded, one refused health check
        assert tracker.offline and time.monotonic() - started < 30
        server = mlflow_servers(server.root, port=server.port)
        with pytest.warns(UserWarning, match="is back"):
            tracker.log_metrics({"m": 4.0}, step=4)
        assert not tracker.offline
        tracker.log_metrics({"m": 5.0}, step=5)
    client = client_of(server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1"}
    history = sorted(client.get_metric_history(tracker.run_id, "m"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(s, float(s)) for s in range(1, 6)]


# --- the record and its replay, without a server -------------------------------------------------------


def sqlite_tracker(tmp_path: Path, store: str, record: Path | None = None) -> Tracker:
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path / store / 'mlflow.db'}",
                                     artifact_root=tmp_path / store / "mlruns", experiment="local"))
    if record is not None:
        tracker.keep_record(record)
    return tracker


def sqlite_client(tmp_path: Path, store: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / store / 'mlflow.db'}")


def test_log_run_publishes_a_local_run_to_another_store_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: {backbone: resnet18}\n")
    (out / "best.pt").write_bytes(b"weights v1")
    tracker = sqlite_tracker(tmp_path, "laptop", out / RECORD_FILE)
    with tracker.start(run_name="local-run", tags={"variant": "sd"}):
        tracker.log_params({"optim.lr": 3.5e-4})
        for step in (1, 2, 3):
            tracker.log_metrics({"train/loss": 1.0 / step, "nan_metric": float("nan")}, step=step)
        tracker.log_artifact(out / "config.yaml")
        tracker.log_artifact(out / "best.pt", "checkpoints")
    target = f"sqlite:///{tmp_path / 'team' / 'mlflow.db'}"

    (first,) = replay_record(out, target)
    assert first.created and first.run_id != tracker.run_id
    assert (first.params, first.metrics, first.artifacts, first.status) == (1, 6, 2, "FINISHED")
    client = sqlite_client(tmp_path, "team")
    run = client.get_run(first.run_id)
    assert run.info.run_name == "local-run" and run.info.status == "FINISHED"
    assert run.data.tags["variant"] == "sd" and run.data.tags[REPLAYED_FROM] == tracker.run_id
    assert run.data.params == {"optim.lr": "0.00035"}
    source = sqlite_client(tmp_path, "laptop").get_run(tracker.run_id)
    assert run.info.start_time == source.info.start_time and run.info.end_time == source.info.end_time
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "train/loss")] == [
        (1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert artifact_names(client, first.run_id) == {"config.yaml", "checkpoints/best.pt"}

    (second,) = replay_record(out / RECORD_FILE, target)  # found again by its tag: nothing twice
    assert second.run_id == first.run_id and not second.sent_anything, second.summary()

    # A file that changed since it was logged is not passed off as the logged one.
    (out / "best.pt").write_bytes(b"weights v2, another run's")
    (third,) = replay_record(out, f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}")
    assert third.created and third.artifacts == 1
    assert any("best.pt" in note and "changed" in note for note in third.notes), third.notes


def test_new_run_in_the_folder_moves_the_previous_record_aside(tmp_path: Path) -> None:
    record = tmp_path / RECORD_FILE
    first = sqlite_tracker(tmp_path, "store", record)
    with first.start(run_name="first"):
        first.log_metrics({"m": 1.0}, step=1)
    resumed = sqlite_tracker(tmp_path, "store", record)  # --resume: same file, same run
    with resumed.start(run_id=first.run_id):
        resumed.log_metrics({"m": 2.0}, step=2)
    (run,) = read_record(record)
    assert run.run_id == first.run_id and [p.step for p in run.metrics] == [1, 2] and run.status == "FINISHED"

    second = Tracker(first.tracking)
    second.keep_record(record, new=True)
    with second.start(run_name="second"):
        pass
    assert [r.run_id for r in read_record(record)] == [second.run_id]
    assert [r.run_id for r in read_record(tmp_path / f"mlflow-record.{first.run_id}.jsonl")] == [first.run_id]


def test_torn_last_line_is_skipped_and_a_bad_line_is_a_clear_error(tmp_path: Path) -> None:
    from reid.errors import TrackingError

    record = tmp_path / RECORD_FILE
    tracker = sqlite_tracker(tmp_path, "store", record)
    with tracker.start(run_name="x"):
        tracker.log_metrics({"m": 1.0}, step=1)
    text = record.read_text()
    record.write_text(text + '{"event": "metrics", "run_id": "' + tracker.run_id + '", "st')
    with pytest.warns(UserWarning, match="incomplete"):
        (run,) = read_record(record)
    assert [p.step for p in run.metrics] == [1]
    record.write_text("not json\n" + text)
    with pytest.raises(TrackingError, match=r"line 1: not a reid MLflow record line"):
        read_record(record)
    (tmp_path / "untracked-run").mkdir()
    with pytest.raises(TrackingError, match="untracked-run has no mlflow-record.jsonl: give the train.output_dir"):
        replay_record(tmp_path / "untracked-run")


def test_bounded_http_limits_apply_only_during_the_call_and_yield_to_the_user(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.tracking.connection import HTTP_LIMITS, bounded_http

    for key in HTTP_LIMITS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")  # the user's slow proxy
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    with bounded_http():
        assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 300
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


def test_a_call_that_failed_while_the_store_answered_is_sent_when_the_run_ends(tmp_path: Path) -> None:
    """A single failed call (a proxy hiccup) is a warning during the run; the end of the run sends it."""
    tracker = sqlite_tracker(tmp_path, "store", tmp_path / RECORD_FILE)
    with tracker.start(run_name="hiccup"):
        tracker.log_metrics({"m": 1.0}, step=1)
        real = tracker._client.log_batch
        calls = []

        def fails_once(*args, **kwargs):
            calls.append(kwargs)
            if len(calls) == 1:
                raise ConnectionError("connection reset by the proxy")
            return real(*args, **kwargs)

        tracker._client.log_batch = fails_once
        with pytest.warns(UserWarning, match="could not log metrics of step 2"):
            tracker.log_metrics({"m": 2.0}, step=2)
        tracker.log_metrics({"m": 3.0}, step=3)
        assert not tracker.offline
        assert [m.step for m in sqlite_client(tmp_path, "store").get_metric_history(tracker.run_id, "m")] == [1, 3]
    history = sqlite_client(tmp_path, "store").get_metric_history(tracker.run_id, "m")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0)]
