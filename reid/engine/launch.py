"""Where ``reid train`` runs: which devices it takes, and whether it starts its own worker processes.

Why: a DVC stage runs one process, so without this ``dvc repro`` trains every model on ``cuda:0``
while the other GPUs idle, and ``dvc queue start -j 4`` puts four experiments on that same GPU.
:func:`place` decides, once, before any work:

* **How many processes** (``train.nproc``): ``auto`` = every free GPU this process may use (the most
  of them that split ``data.ids_per_batch`` into whole identities), 1 on a machine without a GPU;
  ``N`` = N GPUs, or N CPU processes (gloo) with ``train.device=cpu``. An explicit ``cuda:K`` is that
  one GPU.
* **Which GPUs**: the free ones, leased for the whole run (:mod:`reid.engine.gpu_lease`); when too
  few are free, ``train.gpu_busy`` says wait (one line says for what) or fail at once.
* **Who trains**: one process trains here; more start as workers through PyTorch's elastic launcher,
  the engine ``torchrun`` is built on, with torchrun's own ``--standalone`` settings
  (:func:`torch.distributed.run.config_from_args`). Each worker runs the same ``reid train`` command
  line, so it computes exactly what ``torchrun --standalone --nproc-per-node N -m reid.cli train ...``
  computes: the same ``LOCAL_RANK``/``RANK``/``WORLD_SIZE`` environment, sharding, SyncBN, rank-0
  checkpoint and MLflow run. The worker's GPU is the ``LOCAL_RANK``-th leased one
  (``REID_DEVICES``, read by :func:`reid.engine.device.resolve_device`).
* Under an outer launcher (``torchrun`` by hand, SLURM: ``WORLD_SIZE``/``RANK`` already set) nothing
  is launched: each rank trains where the launcher put it, and leases that GPU so that no queued run
  takes it.

Stopping: the elastic agent forwards a SIGTERM or Ctrl-C of this process to every worker, which
stops like ``reid train`` does (``last.pt`` keeps the last completed epoch; exit 143 / 130), and kills
what is left after its shutdown timeout. A SIGKILLed parent cannot forward anything, so each worker
asks the kernel for a SIGTERM when its parent dies (``PR_SET_PDEATHSIG``): no orphan keeps a GPU
whose lease was freed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from reid.engine.device import DEVICES_ENV
from reid.engine.gpu_lease import Lease, LeaseError, acquire, busy_summary, lease_dir, visible_gpus
from reid.errors import ReidError

LAUNCHER_PID_ENV = "REID_LAUNCHER_PID"  # set for the workers this process starts
REASON_ENV = "REID_DEVICES_REASON"  # why the parent chose the devices, for the workers' MLflow tag
OUTER_LAUNCHER_VARS = ("WORLD_SIZE", "RANK")


@dataclass
class Placement:
    """What :func:`place` decided. ``exit_code`` is set when workers ran the training (the caller is
    done and exits with it); otherwise this process trains, on ``devices[local rank]``."""

    devices: list[str]
    world_size: int
    reason: str
    launcher: str                       # "none", "reid train" (self-launched), "external"
    exit_code: int | None = None
    lease: Lease | None = field(default=None, repr=False)

    @property
    def tags(self) -> dict[str, str]:
        """MLflow tags: the devices of every rank and how they were chosen (``world_size`` and this
        rank's ``device`` are tagged by the trainer)."""
        tags = {"devices_reason": self.reason[:250], "launcher": self.launcher}
        if self.launcher != "external":  # there each rank knows only its own device (the trainer's tag)
            tags["devices"] = ",".join(self.devices)
        return tags


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _whole_split(ids_per_batch: int, n: int) -> int:
    """The most processes (at most ``n``) over which P splits into whole identities per process."""
    return max(k for k in range(1, n + 1) if ids_per_batch % k == 0)


def _check_split(ids_per_batch: int, n: int) -> None:
    if ids_per_batch % n:
        raise ReidError(
            f"data.ids_per_batch={ids_per_batch} cannot be split over train.nproc={n} processes (each trains on "
            f"P/N whole identities); set train.nproc to a divisor of {ids_per_batch} or data.ids_per_batch to a "
            f"multiple of {n}")


def place(config: Any, worker_args: Sequence[str], *, gpu_count: int | None = None,
          env: Mapping[str, str] | None = None, say: Callable[[str], None] | None = None,
          launch: Callable[[int, Sequence[str], Mapping[str, str]], int] | None = None) -> Placement:
    """Decide the devices of a ``reid train`` run (see the module docstring), lease them, and start the
    workers when there is more than one process.

    ``worker_args`` is the ``reid`` command line after the program name (``train --params ...``).
    ``gpu_count`` (default: torch's) and ``env`` (default: ``os.environ``) are parameters so that
    the decision can be tested without a GPU; ``launch`` (default :func:`launch_workers`) runs N
    workers and returns the exit code. Bad input (``train.nproc`` above the GPUs, a P that does not
    split, an unusable lease folder) raises a :class:`ReidError` before anything is created.
    """
    env = os.environ if env is None else env
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    train, p = config.train, config.data.ids_per_batch
    if any(env.get(name) for name in OUTER_LAUNCHER_VARS):
        return _inside_launcher(config, env, gpu_count, say)
    gpus = _gpu_count() if gpu_count is None else gpu_count
    device, nproc = train.device, train.nproc
    wait = train.gpu_busy == "wait"
    on_cuda = device.startswith("cuda") or (device == "auto" and gpus > 0)
    if not on_cuda:
        return _run(_cpu_placement(device, nproc, p), worker_args, say, launch, {})
    if gpus == 0:
        raise ReidError(f"train.device={device} but CUDA is not available here; use train.device=auto or cpu")
    names = visible_gpus(gpus, env)
    candidates, wanted, what, accept = _gpu_request(device, nproc, p, gpus, env)
    lease, busy = acquire(names, candidates, wanted, wait=wait, folder=lease_dir(env), what=what, accept=accept,
                          on_wait=say)
    n = len(lease.indices)
    reason = f"leased for {what}"
    if wanted is None:
        free = gpus - len(busy)
        reason += f", {n} of {gpus} GPU(s)" if n < gpus else f", every GPU ({n})"
        if n < free:
            reason += f"; {free} free but data.ids_per_batch={p} splits evenly over {n}"
    if busy:
        reason += f"; {busy_summary(busy)}"
    placement = Placement(lease.devices, n, reason, "reid train" if n > 1 else "none", lease=lease)
    if n == 1 and env is os.environ:  # this process trains (an injected env is a test: no real GPU to select)
        os.environ[DEVICES_ENV] = lease.devices[0]  # resolve_device reads the leased GPU from it
        _use_gpu(lease.indices[0])
    return _run(placement, worker_args, say, launch, {DEVICES_ENV: ",".join(lease.devices)})


def _cpu_placement(device: str, nproc: int | str, p: int) -> Placement:
    """No GPU: one process, or ``train.nproc`` CPU processes (gloo) with ``train.device=cpu``."""
    kind = "cpu" if device in ("cpu", "auto") else device
    n = 1 if nproc == "auto" else int(nproc)
    if n > 1 and device != "cpu":
        found = "no GPU is visible here" if device == "auto" else f"train.device={device} is one device"
        raise ReidError(f"train.nproc={n} but {found}; set train.device=cpu to train in {n} CPU processes "
                        "(gloo), or train.nproc=auto")
    _check_split(p, n)
    reason = (f"train.nproc={nproc}, train.device={device}" if n > 1 else
              f"train.device={device}" + (" found no GPU" if device == "auto" else ""))
    return Placement([kind] * n, n, reason, "reid train" if n > 1 else "none")


def _gpu_request(device: str, nproc: int | str, p: int, gpus: int, env: Mapping[str, str]
                 ) -> tuple[list[int], int | None, str, Callable[[int], int] | None]:
    """Which GPUs may be leased, how many (None: every free one), what asked for them, and for ``auto``
    how many of the free ones to take (the most that split P into whole identities)."""
    shown_visible = (f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})"
                     if env.get("CUDA_VISIBLE_DEVICES") is not None else "")
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if nproc not in ("auto", 1):
            raise ReidError(f"train.device={device} pins one GPU but train.nproc={nproc}; use train.device=cuda (or "
                            f"auto) to take {nproc} free GPUs, or train.nproc=1")
        if index >= gpus:
            raise ReidError(f"train.device={device} but this process sees {gpus} GPU(s){shown_visible}; "
                            f"use cuda:0 to cuda:{gpus - 1} or train.device=cuda")
        return [index], 1, f"train.device={device}", None
    if nproc == "auto":
        return list(range(gpus)), None, "train.nproc=auto", lambda free: _whole_split(p, free)
    if int(nproc) > gpus:
        raise ReidError(f"train.nproc={nproc} but this process sees {gpus} GPU(s){shown_visible}; set "
                        f"train.nproc to at most {gpus}, or auto for every free one")
    _check_split(p, int(nproc))
    return list(range(gpus)), int(nproc), f"train.nproc={nproc}", None


def _run(placement: Placement, worker_args: Sequence[str], say: Callable[[str], None],
         launch: Callable[[int, Sequence[str], Mapping[str, str]], int] | None, worker_env: dict[str, str]) -> Placement:
    shown = ",".join(placement.devices) if len(set(placement.devices)) > 1 or placement.world_size == 1 else \
        f"{placement.devices[0]} x{placement.world_size}"
    if placement.world_size == 1:
        say(f"device: {shown} ({placement.reason})")
        return placement
    say(f"devices: {shown} ({placement.reason}); starting {placement.world_size} worker processes "
        f"(torch elastic, as torchrun --standalone --nproc-per-node {placement.world_size})")
    worker_env = {**worker_env, DEVICES_ENV: ",".join(placement.devices), LAUNCHER_PID_ENV: str(os.getpid()),
                  REASON_ENV: placement.reason}
    placement.exit_code = (launch or launch_workers)(placement.world_size, worker_args, worker_env)
    return placement


def _use_gpu(index: int) -> None:
    """Make the leased GPU this process's current CUDA device, so that nothing that allocates on "the
    current device" (the loader's pin-memory thread, a library) opens a context on a GPU another run holds."""
    import torch

    torch.cuda.set_device(index)


def _inside_launcher(config: Any, env: Mapping[str, str], gpu_count: int | None,
                     say: Callable[[str], None]) -> Placement:
    """A rank of a distributed run someone else launched: this process's own worker, or torchrun/SLURM."""
    world = int(env.get("WORLD_SIZE") or 1)
    rank = int(env.get("RANK") or 0)
    if env.get(LAUNCHER_PID_ENV):
        die_with_parent(int(env[LAUNCHER_PID_ENV]))
        devices = [d for d in env.get(DEVICES_ENV, "").split(",") if d]
        return Placement(devices, world, env.get(REASON_ENV) or "started by reid train", "reid train")
    # torchrun by hand or SLURM: lease this rank's GPU so that no queued run takes it.
    train = config.train
    gpus = _gpu_count() if gpu_count is None else gpu_count
    local_rank = int(env.get("LOCAL_RANK") or 0)
    lease = None
    device = train.device
    if rank == 0 and train.nproc not in ("auto", world):
        say(f"train.nproc={train.nproc} is not used: the launcher started {world} processes")
    if gpus > 0 and (device == "auto" or device.startswith("cuda")):
        index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else local_rank
        if index < gpus:
            lease, busy = acquire(visible_gpus(gpus, env), [index], 1, wait=train.gpu_busy == "wait",
                                  folder=lease_dir(env), what=f"rank {rank} on cuda:{index}", on_wait=say)
            device = f"cuda:{index}"
    return Placement([device], world, "started by an outer launcher (WORLD_SIZE set)", "external", lease=lease)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM this worker when its parent dies (Linux), then check it is still there.

    Why: the elastic agent forwards SIGTERM and Ctrl-C to the workers, but a SIGKILLed parent forwards
    nothing; its GPU leases are then free while its workers would go on training on the GPUs.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        raise ReidError(f"the reid train process {parent} that started this worker has already exited")


def launch_workers(nproc: int, worker_args: Sequence[str], worker_env: Mapping[str, str]) -> int:
    """Run ``python -m reid.cli <worker_args>`` in ``nproc`` processes through PyTorch's elastic launcher
    with torchrun's ``--standalone`` configuration; the exit code of the run (0, or the first failed
    worker's; 128 + signal when a worker was killed or this process was signalled)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    os.environ.update(worker_env)
    # torchrun sets this too (with a banner) when it starts more than one process and it is unset.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "reid.cli", *worker_args])
    try:
        torchrun(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if code not in (2, 130, 143):  # those print their own message
            print(f"worker rank {rank} failed with exit code {failure.exitcode}", file=sys.stderr, flush=True)
        return code
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


__all__ = ["LAUNCHER_PID_ENV", "LeaseError", "Placement", "die_with_parent", "launch_workers", "place"]
