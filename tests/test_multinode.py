"""Several nodes, one model: two torchrun launchers joined through the c10d rendezvous, as on two machines.

Each "node" is a launcher process of its own (``torch.distributed.run --nnodes 2 --nproc-per-node 1
--rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT``, one gloo worker on the CPU, ``reid train``), the
way ``srun`` starts one per node on a cluster. Compared through the run's public outputs only (the
checkpoint and the run's metric record), never the trainer's internals:

* the first epoch of two nodes x one process equals one node x two processes (same global batch,
  same ranks, same CPU and thread count, so the same operations in the same order: equal to the
  first-step tolerance of tests/test_ddp.py, in the checkpoint's weights and every step's loss);
* a node killed mid-run (launcher and workers) stops the other with reid's message naming ``last.pt``
  and ``--resume``, not a traceback, within a bounded time, and the last checkpoint resumes on two
  nodes again to the planned end.
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


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The parent pid is the 2nd field after the parenthesised command name.
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_node(proc: subprocess.Popen) -> None:
    """A node dies whole: its launcher and every worker. torchrun starts each worker in a session of
    its own, so killing the launcher's process group alone would leave the workers training (and
    the other node waiting for this one's launcher at torchrun's exit barrier, 300 s)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            kill_node(proc)
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


def test_a_lost_peer_is_told_apart_from_other_errors() -> None:
    """The transports' texts for a vanished peer become PeerLostError (reid train then names last.pt and
    --resume); the run's own errors, other exceptions and single-process runs are left as they are."""
    from reid.engine.distributed import DistContext, peer_lost
    from reid.errors import PeerLostError, ReidError

    two = DistContext(1, 2, 1, True)
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:65228: Connection reset by peer."
                        " This is typically caused by a remote worker hanging\nframe #0: ...")
    lost = peer_lost(gloo, two)
    assert isinstance(lost, PeerLostError)
    assert str(lost).startswith("rank 1 of 2 lost its connection") and "Connection reset by peer" in str(lost)
    assert "frame #0" not in str(lost)
    assert isinstance(peer_lost(torch.distributed.DistNetworkError("store: got 0 bytes"), two), PeerLostError)
    assert peer_lost(gloo, DistContext()) is None
    assert peer_lost(ReidError("Connection reset by peer while reading the dataset"), two) is None
    assert peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), two) is None
    assert peer_lost(ValueError("connection reset by peer"), two) is None


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
        kill_node(procs[1])
        killed = time.monotonic()
        code = procs[0].wait(timeout=PEER_LOST_TIMEOUT_S + 30)
        waited = time.monotonic() - killed
    finally:
        kill_all(procs)
    survivor = logs[0].read_text(errors="replace")
    assert code != 0, survivor[-3000:]
    assert waited < PEER_LOST_TIMEOUT_S, f"the surviving node stopped {waited:.0f} s after its peer died"
    assert f"{last} holds epoch 1" in survivor and "--resume" in survivor, survivor[-3000:]
    assert "]: Traceback" not in survivor, survivor[-3000:]  # the worker's message, not a raw traceback
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
