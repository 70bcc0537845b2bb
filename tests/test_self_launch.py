"""``reid train`` with ``train.nproc=2`` on the CPU: it starts its own 2 workers (gloo), as a DVC stage too.

Checked through what a user sees, never through the trainer's internals: the checkpoint, the MLflow
record (``mlflow-record.jsonl``) and the exit code. The workers must compute what ``torchrun
--standalone --nproc-per-node 2 -m reid.cli train`` computes: same processes, same code, same sums,
so the per-step losses and the weights agree to tests/test_ddp.py's float64 tolerance (in practice
they are identical). A SIGTERM of the parent stops every worker (no orphan left, by ``pgrep``) and
leaves a ``last.pt`` that resumes; a SIGKILL of the parent takes the workers with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXACT = 1e-10  # tests/test_ddp.py's float64 tolerance; the same computation in the same processes
GIT_ID = {"GIT_AUTHOR_NAME": "reid-tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
          "GIT_COMMITTER_NAME": "reid-tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}


def child_env() -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **GIT_ID, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DVC_ROOT", None)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "REID_LAUNCHER_PID", "REID_DEVICES"):
        env.pop(name, None)
    return env


def params_tree(synthetic_root: Path, folder: Path, **train) -> dict:
    """Tiny run: resnet18 from scratch, 64 x 32, P=4 x K=4, plain SGD, deterministic, 2 steps an epoch."""
    return {
        "data": {"root": str(synthetic_root), "manifest": "manifest.json",
                 "height": 64, "width": 32, "padding": 4, "ids_per_batch": 4, "instances_per_id": 4,
                 "test_batch_size": 64, "num_workers": 0, "input_pipeline": "cpu"},
        "model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False},
        "optim": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.0, "warmup_epochs": 0},
        "train": {"epochs": 1, "device": "cpu", "amp": "off", "seed": 3, "deterministic": True,
                  "max_steps_per_epoch": 2, "log_every_steps": 1, "eval_every": 50, "nproc": 2,
                  "output_dir": "run", **train},
        "eval": {"num_ranked_lists": 0},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "artifact_root": str(folder / "mlruns"),
                     "experiment": "self-launch"},
    }


def step_losses(run_dir: Path) -> dict[int, float]:
    """``train_step/loss`` per global step, from the run's MLflow record."""
    out = {}
    for line in (run_dir / "mlflow-record.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry.get("event") == "metrics" and "train_step/loss" in entry.get("metrics", {}):
            out[int(entry["step"])] = float(entry["metrics"]["train_step/loss"])
    return out


def record_tags(run_dir: Path) -> dict[str, str]:
    first = json.loads((run_dir / "mlflow-record.jsonl").read_text().splitlines()[0])
    return first["tags"]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    worst = 0.0
    for name, value in b.items():
        if value.is_floating_point():
            scale = value.double().norm().item()
            diff = (a[name].double() - value.double()).norm().item()
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def workers_of(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker`` (zombies excluded)."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    alive = []
    for pid in map(int, found):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and pid != os.getpid():
            alive.append(pid)
    return alive


# -- dvc repro of a two-stage pipeline, and torchrun by hand on the same project ------------------
@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """prepare -> train (train.nproc=2) run by ``dvc repro``; then ``torchrun`` of the same command by hand
    into ``ref/`` for comparison."""
    project = tmp_path_factory.mktemp("dvc_self_launch")
    (project / "params.yaml").write_text(yaml.safe_dump(params_tree(synthetic_root, project)))
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": {"cmd": "reid prepare --params params.yaml", "params": ["data"], "outs": ["manifest.json"]},
        "train": {"cmd": "reid train --params params.yaml", "deps": ["manifest.json"],
                  "params": ["data", "model", "optim", "train"], "outs": ["run"]},
    }}))
    (project / ".gitignore").write_text("mlflow.db\nmlruns/\nref/\n")
    env = child_env()

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
        return proc

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    sh(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "two-stage pipeline")
    repro = sh(sys.executable, "-m", "dvc", "repro")
    (project / "repro.log").write_text(repro.stdout + repro.stderr)
    sh(str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "reid.cli", "train",
       "--params", "params.yaml", "-o", "train.output_dir=ref")
    return project


@pytest.mark.slow
def test_dvc_repro_trains_in_two_processes_and_its_lock_matches(dvc_project: Path) -> None:
    log = (dvc_project / "repro.log").read_text()
    assert "devices: cpu x2 (train.nproc=2, train.device=cpu); starting 2 worker processes" in log
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=dvc_project, env=child_env(),
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())["stages"]
    assert lock["train"]["cmd"] == "reid train --params params.yaml"  # no torchrun, no `dvc commit -f`
    assert lock["train"]["params"]["params.yaml"]["train"]["nproc"] == 2
    ckpt = load(dvc_project / "run" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["sampler_ranks"]) == 2
    tags = record_tags(dvc_project / "run")
    assert tags["world_size"] == "2" and tags["devices"] == "cpu,cpu" and tags["launcher"] == "reid train"


@pytest.mark.slow
def test_self_launched_workers_take_torchruns_steps(dvc_project: Path) -> None:
    """The same first steps as ``torchrun --nproc-per-node 2`` of today: per-step losses and weights."""
    ours, ref = step_losses(dvc_project / "run"), step_losses(dvc_project / "ref")
    assert sorted(ours) == sorted(ref) == [1, 2]
    for step, loss in ref.items():
        assert abs(ours[step] - loss) <= EXACT * abs(loss), (step, ours[step], loss)
    a, b = load(dvc_project / "run" / "last.pt"), load(dvc_project / "ref" / "last.pt")
    assert a["world_size"] == b["world_size"] == 2
    assert relative_error(a["model"], b["model"]) <= EXACT
    assert relative_error(a["objective"], b["objective"]) <= EXACT  # the centre loss's centres


# -- stopping ---------------------------------------------------------------------------------------
def start(project: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(VENV_BIN / "reid"), "train", "--params", str(project / "params.yaml"), *args],
                            cwd=project, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def setup_project(tmp_path: Path, synthetic_root: Path, synthetic_manifest, **train) -> Path:
    from reid.data.manifest import write_manifest

    write_manifest(synthetic_manifest, tmp_path / "manifest.json")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_tree(synthetic_root, tmp_path, **train)))
    return tmp_path


@pytest.mark.slow
def test_sigterm_stops_every_worker_and_leaves_a_checkpoint_that_resumes(tmp_path: Path, synthetic_root: Path,
                                                                         synthetic_manifest) -> None:
    project = setup_project(tmp_path, synthetic_root, synthetic_manifest, epochs=3)
    marker = str(project / "params.yaml")
    proc = start(project)
    last = project / "run" / "last.pt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert len(workers_of(marker)) == 3  # the parent and its 2 workers
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert workers_of(marker) == [], "orphan workers after SIGTERM"
    saved = load(last)
    assert 1 <= saved["epoch"] < 3 and saved["world_size"] == 2
    hint = [line for line in err.splitlines() if "Continue with:" in line]
    assert hint and hint[0].endswith("--resume"), err[-3000:]
    resumed = subprocess.run(hint[0].split("Continue with: ", 1)[1].split(), cwd=project, env=child_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = load(last)
    assert done["epoch"] == 3 and done["global_step"] == 6 and done["mlflow_run_id"] == saved["mlflow_run_id"]
    assert "resuming from" in resumed.stderr and "devices: cpu x2" in resumed.stderr


@pytest.mark.slow
def test_sigkill_of_the_parent_takes_the_workers_down(tmp_path: Path, synthetic_root: Path, synthetic_manifest) -> None:
    project = setup_project(tmp_path, synthetic_root, synthetic_manifest, epochs=50, max_steps_per_epoch=20)
    marker = str(project / "params.yaml")
    proc = start(project)
    deadline = time.time() + 300
    while len(workers_of(marker)) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and len(workers_of(marker)) == 3
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.time() + 60
    while workers_of(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert workers_of(marker) == [], "workers outlived their SIGKILLed parent"


# -- bad input, before any work -----------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["train.nproc=3"], "data.ids_per_batch=4 cannot be split over train.nproc=3"),
    (["train.device=auto", "train.nproc=2"], "train.nproc=2 but no GPU is visible here; set train.device=cpu"),
])
def test_bad_nproc_fails_before_anything_is_created(tmp_path: Path, synthetic_root: Path, overrides: list[str],
                                                    message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.cuda

    from reid.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_tree(synthetic_root, tmp_path)))
    monkeypatch.chdir(tmp_path)
    args = ["train", "--params", "params.yaml"] + [x for o in overrides for x in ("-o", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
