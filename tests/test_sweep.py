"""`reid sweep`: DVC experiments as SLURM jobs, through a real SLURM cluster on this machine.

The fast tests check the grid and the job script. The slow test starts munged, slurmctld and two
slurmd as two nodes (tests/services.py: a config it writes, stopped by pid afterwards), a throwaway PostgreSQL and an
`mlflow server` on it, and a project like tests/test_pipeline.py's (tiny sizes, synthetic data) with a
bare git remote and a local DVC remote in the test's folder. Two experiments go through the real
`sbatch`: one is `scancel`ed mid-run, reported by `reid sweep status` and resubmitted alone; a third
runs on both nodes of the cluster (srun + torchrun). Afterwards a fresh clone's `dvc exp pull` + `dvc
exp show` lists all three with their parameters and metrics, and the MLflow server holds one finished
run per experiment.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from reid.sweep import Experiment, Resources, Sweep, SweepError, expand_grid, job_script, split_choices
from test_pipeline import VENV_BIN, copy_project, dvc, git_init, run, tiny_params, tool_env
from test_tracking_server import client_of

# --- fast: planning -----------------------------------------------------------------------------------


def test_grid_is_every_combination_and_brackets_keep_their_commas() -> None:
    assert split_choices("[2,4],[6]") == ["[2,4]", "[6]"]
    assert split_choices("'a,b',c") == ["'a,b'", "c"]
    grid = expand_grid(["kd.feature_loss_coefficient=0.03,0.1", "train.seed=0,1,2", "optim.milestones=[2,4]"])
    assert len(grid) == 6
    assert grid[0] == ["kd.feature_loss_coefficient=0.03", "train.seed=0", "optim.milestones=[2,4]"]
    assert grid[-1] == ["kd.feature_loss_coefficient=0.1", "train.seed=2", "optim.milestones=[2,4]"]
    for bad, match in ((["train.seed"], "KEY=VALUE"), (["train.seed=0,,1"], "empty value"),
                       (["train.seed=0", "train.seed=1"], "twice"), ([], "at least one")):
        with pytest.raises(SweepError, match=match):
            expand_grid(bad)


def sweep_of(tmp_path: Path, nodes: int = 1) -> Sweep:
    return Sweep("fl", tmp_path, "/srv/git/reid.git", "0123abcd" * 5, "${TMPDIR:-/tmp}",
                 [Experiment("fl-01", ["kd.feature_loss_coefficient=0.03", "train.seed=0"])],
                 Resources(nodes=nodes, gpus_per_node=4 if nodes > 1 else 0, partition="gpu", time="01:00:00",
                           sbatch_args=["--account=lab"]))


def test_job_script_clones_runs_and_pushes_in_its_own_folder(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path)
    script = job_script(sweep, sweep.experiments[0])
    assert "#SBATCH --nodes=1" in script and "#SBATCH --partition=gpu" in script and "#SBATCH --account=lab" in script
    assert f"#SBATCH --output={tmp_path}/fl-01.%j.out" in script
    order = ["git clone -q /srv/git/reid.git", f"git checkout -q {sweep.rev}", "dvc pull",
             "dvc exp run -n fl-01 -S kd.feature_loss_coefficient=0.03 -S train.seed=0", "dvc exp push origin fl-01"]
    positions = [script.index(line) for line in order]
    assert positions == sorted(positions), script
    assert 'work=$(mktemp -d "${TMPDIR:-/tmp}/reid-fl-01-XXXXXX")' in script and "torch.distributed.run" not in script
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    sweep.save()
    assert Sweep.load(tmp_path) == sweep


def test_multi_node_job_trains_under_srun_and_torchrun(tmp_path: Path) -> None:
    sweep = sweep_of(tmp_path, nodes=2)
    script = job_script(sweep, sweep.experiments[0])
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=4" in script
    assert "srun --nodes=\"$SLURM_JOB_NUM_NODES\" --ntasks-per-node=1" in script
    assert "--nproc-per-node=4" in script and "--rdzv-backend=c10d" in script
    assert '--rdzv-endpoint="$REID_RDZV_HOST:$REID_RDZV_PORT"' in script
    assert "REID_RDZV_PORT=$((29400 + SLURM_JOB_ID % 1000))" in script
    assert script.index('export PATH="$work/bin:$PATH"') < script.index("dvc exp run")
    proc = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr


# --- slow: a real SLURM cluster ---------------------------------------------------------------------


def reid_sweep(*args: str, cwd: Path, env: dict, check: bool = True, timeout: float = 600):
    proc = subprocess.run([str(VENV_BIN / "reid"), "sweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"reid sweep {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def sweep_project(tmp_path: Path, synthetic_root: Path, tracking_uri: str) -> tuple[Path, Path]:
    """The shared checkout (``dev``) with its bare git remote and a local DVC remote: the baseline only,
    prepared, pushed (the jobs pull the manifest and skip the prepare stage)."""
    dev, origin = tmp_path / "dev", tmp_path / "origin.git"
    copy_project(dev)
    params = tiny_params(synthetic_root)
    params.update({"variants": {}, "evaluate": {**params["evaluate"], "models": ["baseline"]}})
    params["train"].update({"epochs": 1, "eval_every": 1, "seed": 0})
    params["tracking"] = {"enabled": True, "uri": tracking_uri, "experiment": "sweep"}
    (dev / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_init(dev)
    branch = run(["git", "symbolic-ref", "--short", "HEAD"], dev).stdout.strip()
    run(["git", "init", "-q", "--bare", f"--initial-branch={branch}", str(origin)], tmp_path)
    run(["git", "remote", "add", "origin", str(origin)], dev)
    dvc("remote", "add", "--default", "shared", str(tmp_path / "dvc-remote"), cwd=dev)
    dvc("repro", "prepare", cwd=dev)
    run(["git", "add", "-A"], dev)
    run(["git", "commit", "-qm", "a shared DVC remote; the prepared manifest"], dev)
    dvc("push", cwd=dev)
    run(["git", "push", "-q", "origin", branch], dev)
    run(["git", "fetch", "-q", "origin"], dev)
    return dev, origin


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_sweep_on_slurm_as_dvc_experiments(tmp_path: Path, slurm, postgres, synthetic_root: Path) -> None:
    from test_tracking_server import start_server

    server = start_server(tmp_path / "mlflow", backend=postgres.database("team"))
    try:
        dev, origin = sweep_project(tmp_path, synthetic_root, server.uri)
        head = run(["git", "rev-parse", "HEAD"], dev).stdout.strip()
        env = {**tool_env(), **{"SLURM_CONF": str(slurm.conf)}}
        folder = tmp_path / "sweeps" / "seeds"

        submitted = reid_sweep("submit", "-S", "train.seed=0,1", "--name", "seeds", "--dir", str(folder), cwd=dev,
                               env=env)
        assert "seeds-01: job" in submitted.stdout and "seeds-02: job" in submitted.stdout, submitted.stdout
        plan = json.loads((folder / "sweep.json").read_text())
        assert plan["rev"] == head and plan["repo"] == str(origin)
        assert [e["overrides"] for e in plan["experiments"]] == [["train.seed=0"], ["train.seed=1"]]

        # seeds-02 is cancelled once its job has started working in its clone, reported as such (and the
        # way to run it again) while seeds-01 goes on, and resubmitted alone.
        log_of = lambda: folder / f"seeds-02.{Sweep.load(folder).experiment('seeds-02').jobs[-1]}.out"  # noqa: E731
        wait_for(lambda: log_of().is_file() and "clone in" in log_of().read_text(), 120, "seeds-02 to start")
        reid_sweep("cancel", str(folder), "seeds-02", cwd=dev, env=env)
        status = lambda: reid_sweep("status", str(folder), cwd=dev, env=env, check=False)  # noqa: E731
        wait_for(lambda: "seeds-02: CANCELLED" in status().stdout, 60, "seeds-02 to be cancelled")
        reported = status()
        assert reported.returncode == 1, reported.stdout
        assert re.search(r"^seeds-01: (RUNNING|COMPLETED) ", reported.stdout, re.MULTILINE), reported.stdout
        assert f"reid sweep resubmit {folder} seeds-02" in reported.stderr, reported.stderr
        assert "CANCELLED AT" in reported.stderr  # the tail of the job's log
        again = reid_sweep("resubmit", str(folder), "seeds-02", cwd=dev, env=env)
        assert "seeds-02: job" in again.stdout
        with pytest.raises(AssertionError, match="only a failed or cancelled experiment"):
            reid_sweep("resubmit", str(folder), "seeds-01", cwd=dev, env=env)

        done = reid_sweep("wait", str(folder), "--timeout", "600", cwd=dev, env=env, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "seeds-01: COMPLETED" in done.stdout and "seeds-02: COMPLETED" in done.stdout, done.stdout
        assert "exit 0" in done.stdout, done.stdout
        assert len(Sweep.load(folder).experiment("seeds-02").jobs) == 2

        # One experiment on both nodes: `reid train` under srun + torchrun (c10d), one process per node.
        pair = reid_sweep("submit", "-S", "train.seed=5", "--name", "pair", "--nodes", "2", "--dir",
                          str(tmp_path / "sweeps" / "pair"), "--wait", cwd=dev, env=env, check=False)
        assert pair.returncode == 0, pair.stdout + pair.stderr
        assert "pair-01: COMPLETED" in pair.stdout, pair.stdout

        # The shared checkout was never touched: no experiment ran there.
        assert run(["git", "status", "--porcelain"], dev).stdout == ""
        assert not run(["git", "for-each-ref", "refs/exps"], dev).stdout.strip()

        # Any machine: a fresh clone pulls both experiments and shows their parameters and metrics.
        other = tmp_path / "other"
        run(["git", "clone", "-q", str(origin), str(other)], tmp_path)
        dvc("exp", "pull", "origin", "seeds-01", "seeds-02", "pair-01", cwd=other)
        shown = json.loads(dvc("exp", "show", "--json", cwd=other).stdout)
        exps = {exp["name"]: exp for commit in shown for group in (commit.get("experiments") or [])
                for exp in group["revs"]}
        assert {"seeds-01", "seeds-02", "pair-01"} <= set(exps), list(exps)
        for name, seed in (("seeds-01", 0), ("seeds-02", 1), ("pair-01", 5)):
            data = exps[name]["data"]
            assert data["params"]["params.yaml"]["data"]["train"]["seed"] == seed
            evaluated = data["metrics"]["pipeline/eval/baseline/metrics.json"]["data"]
            assert 0.0 <= evaluated["mAP"] <= 1.0
        # ...and the files the experiment produced, from the DVC remote.
        dvc("exp", "apply", "seeds-02", cwd=other)
        dvc("pull", cwd=other)
        assert (other / "pipeline/models/baseline/last.pt").stat().st_size > 0

        client = client_of(server)
        experiment = client.get_experiment_by_name("sweep")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        finished = {}
        for r in runs:
            if r.info.status == "FINISHED":
                finished.setdefault(r.data.tags.get("dvc_exp"), []).append(r)
        assert {k: len(v) for k, v in finished.items()} == {"seeds-01": 1, "seeds-02": 1, "pair-01": 1}, \
            [(r.data.tags.get("dvc_exp"), r.info.status) for r in runs]
        for name, seed, world in (("seeds-01", 0, "1"), ("seeds-02", 1, "1"), ("pair-01", 5, "2")):
            (r,) = finished[name]
            assert r.data.params["train.seed"] == str(seed)
            assert r.data.tags.get("world_size", "1") == world, (name, r.data.tags)
            assert "eval/mAP" in r.data.metrics and "train_step/loss" in r.data.metrics
    finally:
        server.stop()


def test_user_errors_name_the_fix(tmp_path: Path) -> None:
    """Exit 2 with the fix, before anything is submitted: an unpushed commit, an unknown sweep folder."""
    from typer.testing import CliRunner

    from reid.cli import app

    repo, origin = tmp_path / "repo", tmp_path / "origin.git"
    repo.mkdir()
    run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    run(["git", "init", "-q"], repo)
    run(["git", "remote", "add", "origin", str(origin)], repo)
    (repo / "params.yaml").write_text("train: {seed: 0}\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "unpushed"], repo)
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        result = runner.invoke(app, ["sweep", "submit", "-S", "train.seed=0,1", "--name", "s", "--dir",
                                     str(tmp_path / "sweep")])
    assert result.exit_code == 2, result.output
    assert "is not on the git remote 'origin'" in result.output and "git push origin" in result.output
    assert not (tmp_path / "sweep").exists()
    result = runner.invoke(app, ["sweep", "wait", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "sweep.json does not exist" in result.output, result.output
