"""Several nodes, one model: two torchrun launchers joined through the c10d rendezvous, as on two machines.

Each "node" is a launcher process of its own (``torch.distributed.run --nnodes 2 --nproc-per-node 1
--rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT``, one gloo worker on the CPU, ``reid train``), the
way ``srun`` starts one per node on a cluster. Compared through the run's public outputs only (the
checkpoint and the run's metric record), never the trainer's internals:

* the first epoch of two nodes x one process equals one node x two processes (same global batch,
  same ranks, same CPU and thread count, so the same operations in the same order: equal to the
  first-step tolerance of tests/test_ddp.py, in the checkpoint's weights and every step's loss);
* a node killed mid-run stops the other with reid's interruption message, within a bounded time, and
  the last checkpoint resumes on two nodes again to the planned end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from services import free_port
from test_ddp import EXACT, _child_env, first_step_tree, relative_error

PEER_LOST_TIMEOUT_S = 90  # the survivor's end after its peer died (an idle gloo socket errors at once)


def launcher(tmp_path: Path, params: Path, *, nodes: int, nproc: int, endpoint: str | None, log: Path,
             extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """One node's launcher (its own process group, so a test can kill the node whole)."""
    rendezvous = (["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "reid-test"] if endpoint
                  else ["--standalone"])
    args = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(nproc),
            *rendezvous, "--max-restarts", "0", "-m", "reid.cli", "train", "--params", str(params), *extra]
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=tmp_path, env={**_child_env(), "PYTHONUNBUFFERED": "1"}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> None:
    try:
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=timeout) == 0, log.read_text()[-4000:]
    finally:
        kill_all(procs)


def kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def two_nodes(tmp_path: Path, params: Path, name: str, extra: tuple[str, ...] = ()):
    endpoint = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"{name}.node{i}.log" for i in range(2)]
    return [launcher(tmp_path, params, nodes=2, nproc=1, endpoint=endpoint, log=log, extra=extra)
            for log in logs], logs


def write_params(tmp_path: Path, synthetic_root: Path, name: str, **train) -> Path:
    tree = first_step_tree(synthetic_root, tmp_path)
    tree["train"].update({"output_dir": str(tmp_path / name), "log_every_steps": 1, "eval_every": 100, **train})
    tree["eval"] = {"num_ranked_lists": 0}
    # A store per run: the runs of a test start at the same moment, and sqlite tables are created once.
    tree["tracking"] = {"uri": f"sqlite:///{tmp_path / name}.db", "artifact_root": str(tmp_path / f"{name}-mlruns"),
                        "experiment": "multinode"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def step_losses(output_dir: Path) -> dict[int, float]:
    from reid.tracking.record import RECORD_FILE, read_record

    (run,) = read_record(output_dir / RECORD_FILE)
    return {p.step: p.value for p in run.metrics if p.key == "train_step/loss"}


@pytest.fixture()
def manifest(tmp_path: Path, synthetic_manifest) -> Path:
    from reid.data.manifest import write_manifest

    write_manifest(synthetic_manifest, tmp_path / "manifest.json")
    return tmp_path / "manifest.json"


@pytest.mark.slow
def test_two_nodes_train_as_one_node_stop_when_one_dies_and_resume(
        tmp_path: Path, synthetic_root: Path, manifest: Path) -> None:
    """One node x two processes trains epoch 1 while two nodes x one process train the same recipe; a
    node is killed as soon as epoch 1's checkpoint is written. The two checkpoints of epoch 1 agree
    and so do the first steps' losses; the survivor stops with reid's message naming the checkpoint and
    ``--resume``, which then finishes the run on two nodes."""
    epochs, steps = 3, 6
    one = write_params(tmp_path, synthetic_root, "one_node", epochs=1, max_steps_per_epoch=steps)
    params = write_params(tmp_path, synthetic_root, "run", epochs=epochs, max_steps_per_epoch=steps)
    procs, logs = two_nodes(tmp_path, params, "first")
    reference = launcher(tmp_path, one, nodes=1, nproc=2, endpoint=None, log=tmp_path / "one.log")
    try:
        deadline = time.monotonic() + 600
        # Killed as soon as epoch 1's checkpoint is there (rank 0 writes it before epoch 2's first step).
        last = tmp_path / "run" / "last.pt"
        while not last.is_file():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                "\n".join(log.read_text()[-3000:] for log in logs)
            time.sleep(0.02)
        os.killpg(procs[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0].wait(timeout=PEER_LOST_TIMEOUT_S + 30)
        waited = time.monotonic() - killed
    finally:
        kill_all(procs)
    survivor = logs[0].read_text(errors="replace")
    assert code != 0, survivor[-3000:]
    assert waited < PEER_LOST_TIMEOUT_S, f"the surviving node stopped {waited:.0f} s after its peer died"
    assert f"{last} holds epoch 1" in survivor and "--resume" in survivor, survivor[-3000:]
    epoch1 = checkpoint(last)
    assert epoch1["epoch"] == 1 and epoch1["global_step"] == steps and epoch1["world_size"] == 2
    killed_losses = step_losses(tmp_path / "run")

    finish([reference], [tmp_path / "one.log"])
    single_node = checkpoint(tmp_path / "one_node" / "last.pt")
    assert single_node["world_size"] == 2 and single_node["global_step"] == steps
    weights = lambda c: {k: v.double() for k, v in c["model"].items() if v.is_floating_point()}  # noqa: E731
    assert len(weights(epoch1)) > 10
    assert relative_error(weights(epoch1), weights(single_node)) <= EXACT
    reference_losses = step_losses(tmp_path / "one_node")
    assert sorted(reference_losses) == list(range(1, steps + 1)) and all(0 < v < 100 for v in reference_losses.values())
    for step in range(1, steps + 1):
        assert killed_losses[step] == pytest.approx(reference_losses[step], rel=EXACT), step

    procs, logs = two_nodes(tmp_path, params, "resumed", extra=("--resume",))
    finish(procs, logs)
    done = checkpoint(last)
    assert done["epoch"] == epochs and done["global_step"] == epochs * steps and done["world_size"] == 2
    assert sorted(step_losses(tmp_path / "run")) == list(range(1, epochs * steps + 1))
