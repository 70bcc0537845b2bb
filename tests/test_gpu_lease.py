"""GPU leases with real processes and real locks, on a machine without a GPU.

The lease logic takes the device names as a parameter, so N "GPUs" are N lock files here; the
processes are real (tests/gpu_lease_holder.py), the locks are the kernel's ``flock``. What is checked
is what a queue of ``reid train`` runs relies on: a run waits while the GPUs are held, a SIGKILLed
holder frees its GPUs, no GPU is ever held by two processes at once, and ``reid train``'s placement
(``train.nproc``, ``train.device=cuda:K``, ``train.gpu_busy``) leases what it says.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reid.config import validate
from reid.engine.gpu_lease import LEASE_DIR_ENV, Busy, LeaseError, acquire, busy_summary, visible_gpus
from reid.engine.launch import place
from reid.errors import ReidError

REPO = Path(__file__).resolve().parents[1]
HOLDER = REPO / "tests" / "gpu_lease_holder.py"


def _env() -> dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath}


def holder(folder: Path, slots: int, wanted: int | str, hold_s: float | str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HOLDER), str(folder), str(slots), str(wanted), str(hold_s), str(log)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_acquired(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Block until the holder printed ``acquired`` (it holds its lease)."""
    deadline = time.time() + timeout
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == "acquired" and time.time() < deadline, (line, proc.stderr.read() if proc.poll() else "")


def intervals(log: Path, killed: dict[int, float] | None = None) -> list[tuple[int, int, float, float]]:
    """``(pid, slot, start, end)`` per slot a holder held; a killed holder's end is its kill time."""
    events: dict[int, dict[str, tuple[list[int], float]]] = {}
    for line in log.read_text().splitlines():
        pid, event, slots, when = line.split()
        events.setdefault(int(pid), {})[event] = ([int(s) for s in slots.split(",")], float(when))
    out = []
    for pid, seen in events.items():
        slots, start = seen["acquired"]
        end = seen["released"][1] if "released" in seen else (killed or {}).get(pid, float("inf"))
        out.extend((pid, slot, start, end) for slot in slots)
    return out


def assert_never_shared(spans: list[tuple[int, int, float, float]]) -> None:
    for i, (pid_a, slot_a, start_a, end_a) in enumerate(spans):
        for pid_b, slot_b, start_b, end_b in spans[i + 1:]:
            if slot_a == slot_b:
                assert end_a <= start_b or end_b <= start_a, f"slot {slot_a} held by {pid_a} and {pid_b} at once"


def test_two_slots_three_holders_the_third_waits_for_the_first_to_exit(tmp_path: Path) -> None:
    log = tmp_path / "log"
    first, second = holder(tmp_path / "leases", 2, 1, 2.0, log), holder(tmp_path / "leases", 2, 1, 2.0, log)
    wait_acquired(first)
    wait_acquired(second)
    third = holder(tmp_path / "leases", 2, 1, 0.2, log)
    third_out, third_err = third.communicate(timeout=60)
    first.wait(timeout=30)
    second.wait(timeout=30)
    assert third.returncode == 0 and third_out.strip() == "acquired", third_err
    # It said, once, what it waited for and whom it waited on.
    waiting = [line for line in third_err.splitlines() if line.startswith("waiting for GPUs")]
    assert len(waiting) == 1
    assert f"pid {first.pid}" in waiting[0] and f"pid {second.pid}" in waiting[0] and "0 of the 1" in waiting[0]
    spans = intervals(log)
    assert len(spans) == 3
    third_start = next(start for pid, _, start, _ in spans if pid == third.pid)
    first_release = min(end for pid, _, _, end in spans if pid != third.pid)
    assert third_start >= first_release
    assert_never_shared(spans)


def test_a_sigkilled_holder_frees_its_slots(tmp_path: Path) -> None:
    log = tmp_path / "log"
    greedy = holder(tmp_path / "leases", 2, "auto", "inf", log)  # every free slot, for ever
    wait_acquired(greedy)
    waiting = holder(tmp_path / "leases", 2, 2, 0.1, log)
    time.sleep(1.0)
    assert waiting.poll() is None  # still waiting: both slots are held
    greedy.send_signal(signal.SIGKILL)
    greedy.wait(timeout=30)
    killed_at = time.time()
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and out.strip() == "acquired", err
    spans = intervals(log, killed={greedy.pid: killed_at})
    assert sorted(slot for pid, slot, _, _ in spans if pid == waiting.pid) == [0, 1]
    assert_never_shared(spans)


def test_fail_at_once_names_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / "leases"
    other = holder(folder, 3, 2, "inf", tmp_path / "log")
    try:
        wait_acquired(other)
        with pytest.raises(LeaseError) as err:
            acquire(visible_gpus(3, {}), [0, 1, 2], 2, wait=False, folder=folder, what="train.nproc=2")
        message = str(err.value)
        assert f"cuda:0-1 held by pid {other.pid}" in message and "train.gpu_busy=wait" in message
        lease, busy = acquire(visible_gpus(3, {}), [0, 1, 2], 1, wait=False, folder=folder)
        assert lease.devices == ["cuda:2"] and [b.index for b in busy] == [0, 1]
        lease.release()
    finally:
        other.kill()
        other.wait()


def test_leases_follow_the_physical_gpu_through_cuda_visible_devices(tmp_path: Path) -> None:
    """A process started with CUDA_VISIBLE_DEVICES=2,3 sees physical GPU 3 as its cuda:1: same lease."""
    folder = tmp_path / "leases"
    whole_machine = visible_gpus(4, {})
    lease, _ = acquire(whole_machine, [3], 1, wait=False, folder=folder)
    try:
        narrowed = visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "2,3"})
        assert narrowed == ["2", "3"]
        with pytest.raises(LeaseError, match="cuda:1 held by pid"):
            acquire(narrowed, [1], 1, wait=False, folder=folder)
        other, _ = acquire(narrowed, [0], 1, wait=False, folder=folder)
        other.release()
    finally:
        lease.release()
    assert busy_summary([Busy(0, 7), Busy(1, 7), Busy(3, 9), Busy(4, None)]) == \
        "cuda:0-1 held by pid 7, cuda:3 by pid 9, cuda:4 by another process"


# -- reid train's placement, with N pretend GPUs -----------------------------------------------------
def gpu_config(**train) -> object:
    return validate({"data": {"ids_per_batch": 4}, "train": {"device": "cuda", **train}})


def recording_launch(calls: list):
    def launch(nproc, worker_args, worker_env):
        calls.append((nproc, list(worker_args), dict(worker_env)))
        return 0
    return launch


def test_auto_takes_the_free_gpus_that_split_the_batch(tmp_path: Path) -> None:
    folder = tmp_path / "leases"
    other = holder(folder, 4, 1, "inf", tmp_path / "log")  # holds GPU 0 of 4
    try:
        wait_acquired(other)
        calls: list = []
        said: list[str] = []
        placement = place(gpu_config(nproc="auto"), ["train", "--params", "p.yaml"], gpu_count=4,
                          env={LEASE_DIR_ENV: str(folder)}, say=said.append, launch=recording_launch(calls))
        # 3 GPUs free, P=4 splits over 2 of them: cuda:1 and cuda:2, in 2 workers that know them.
        assert placement.devices == ["cuda:1", "cuda:2"] and placement.world_size == 2 and placement.exit_code == 0
        assert calls[0][0] == 2 and calls[0][1] == ["train", "--params", "p.yaml"]
        assert calls[0][2]["REID_DEVICES"] == "cuda:1,cuda:2" and calls[0][2]["REID_LAUNCHER_PID"] == str(os.getpid())
        assert said[0].startswith("devices: cuda:1,cuda:2 (leased for train.nproc=auto")
        assert f"cuda:0 held by pid {other.pid}" in said[0] and "3 free but data.ids_per_batch=4" in said[0]
        assert placement.tags["devices"] == "cuda:1,cuda:2" and placement.tags["launcher"] == "reid train"
        placement.lease.release()
        # An explicit GPU is leased too: cuda:0 is held, so with gpu_busy=fail it is refused at once.
        with pytest.raises(LeaseError, match=f"cuda:0 held by pid {other.pid}"):
            place(gpu_config(device="cuda:0", gpu_busy="fail"), ["train"], gpu_count=4,
                  env={LEASE_DIR_ENV: str(folder)}, say=said.append, launch=recording_launch(calls))
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("train, message", [
    ({"nproc": 8}, "train.nproc=8 but this process sees 4 GPU(s)"),
    ({"nproc": 3}, "data.ids_per_batch=4 cannot be split over train.nproc=3"),
    ({"device": "cuda:1", "nproc": 2}, "train.device=cuda:1 pins one GPU but train.nproc=2"),
    ({"device": "cuda:7"}, "train.device=cuda:7 but this process sees 4 GPU(s)"),
])
def test_bad_gpu_requests_fail_before_anything_is_created(tmp_path: Path, train: dict, message: str) -> None:
    folder = tmp_path / "leases"
    with pytest.raises(ReidError, match=re.escape(message)):
        place(gpu_config(**train), ["train"], gpu_count=4, env={LEASE_DIR_ENV: str(folder)}, say=print,
              launch=recording_launch([]))
    assert not folder.exists()


def test_an_unusable_lease_folder_is_named_with_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(LeaseError) as err:
        place(gpu_config(nproc=2), ["train"], gpu_count=4, env={LEASE_DIR_ENV: str(blocker / "leases")}, say=print,
              launch=recording_launch([]))
    assert str(blocker / "leases") in str(err.value) and f"set {LEASE_DIR_ENV}" in str(err.value)
    assert blocker.read_text() == "" and not (blocker.parent / "leases").exists()


def test_one_gpu_run_trains_here_on_its_leased_gpu(tmp_path: Path) -> None:
    folder, said = tmp_path / "leases", []
    placement = place(gpu_config(device="cuda:1"), ["train"], gpu_count=2, env={LEASE_DIR_ENV: str(folder)},
                      say=said.append, launch=recording_launch([]))
    try:
        assert placement.exit_code is None and placement.devices == ["cuda:1"] and placement.world_size == 1
        assert said == ["device: cuda:1 (leased for train.device=cuda:1)"]
        with pytest.raises(LeaseError, match=f"cuda:1 held by pid {os.getpid()}"):  # held while this run trains
            acquire(visible_gpus(2, {}), [1], 1, wait=False, folder=folder)
    finally:
        placement.lease.release()


def test_under_an_outer_launcher_nothing_is_launched_and_the_ranks_gpu_is_leased(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.engine.launch as launch

    folder, calls, parents = tmp_path / "leases", [], []
    monkeypatch.setattr(launch, "die_with_parent", parents.append)  # not on pytest itself (real: test_self_launch)
    env = {LEASE_DIR_ENV: str(folder), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    placement = place(gpu_config(nproc="auto"), ["train"], gpu_count=2, env=env, say=print,
                      launch=recording_launch(calls))
    try:
        assert calls == [] and placement.exit_code is None and placement.launcher == "external"
        assert placement.lease is not None and placement.lease.devices == ["cuda:1"]
    finally:
        placement.lease.release()
    # A worker this process would have started: the devices come from its parent, nothing is leased again.
    worker = {**env, "REID_LAUNCHER_PID": str(os.getppid()), "REID_DEVICES": "cuda:2,cuda:3"}
    placement = place(gpu_config(nproc="auto"), ["train"], gpu_count=4, env=worker, say=print,
                      launch=recording_launch(calls))
    assert calls == [] and placement.devices == ["cuda:2", "cuda:3"] and placement.lease is None
    assert parents == [os.getppid()]


def test_resolve_device_takes_the_leased_gpu_of_the_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from reid.engine.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("REID_DEVICES", raising=False)
    assert resolve_device("cuda", 1) == torch.device("cuda", 1)  # torchrun's rule without a lease
    monkeypatch.setenv("REID_DEVICES", "cuda:2,cuda:3")
    assert resolve_device("auto", 0) == torch.device("cuda", 2)
    assert resolve_device("cuda", 1) == torch.device("cuda", 3)
    assert resolve_device("cuda:0", 1) == torch.device("cuda", 0)  # an explicit index is what it says
