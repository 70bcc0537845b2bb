"""GPU leases: concurrent ``reid train`` processes on one machine never train on the same GPU.

Why: a DVC stage, ``dvc queue start -j N`` and a second terminal all start ``reid train`` processes
that know nothing of each other; each would pick ``cuda:0``. Here every GPU has one lock file in a
folder every process on the machine sees (``REID_GPU_LEASE_DIR``, default ``/tmp/reid-gpu-leases``),
and a process trains only on GPUs whose file it holds an exclusive ``fcntl.flock`` on. The kernel
drops a flock when the last descriptor of it closes, i.e. when its holder exits in any way (a
SIGKILL, an out-of-memory kill, a crash): there is never a stale lease to clean up, and no daemon.

* A GPU is named by its entry in ``CUDA_VISIBLE_DEVICES`` (the index of the physical device, or its
  ``GPU-...`` UUID), else by its index: two processes that see the machine's GPUs through different
  ``CUDA_VISIBLE_DEVICES`` (two SLURM jobs, ``CUDA_VISIBLE_DEVICES=2,3 reid train``) still lease the
  same physical device under the same name. Within a process a GPU is ``cuda:<position>``, as torch
  numbers it.
* The holder writes its pid into the file, so a waiting process can say whom it waits for
  (``cuda:0-1 held by pid 4312``). The content means nothing once the lock is free.
* Taking several GPUs is all-or-nothing: a request for N GPUs takes none until N are free at once,
  so two jobs that each want 4 of 8 GPUs cannot each hold 3 and wait for ever.

Nothing here touches CUDA: the caller passes the names of the devices (:func:`visible_gpus` reads
them), so the logic runs, and is tested, with N slots on a machine without a GPU.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from reid.errors import ReidError

LEASE_DIR_ENV = "REID_GPU_LEASE_DIR"
DEFAULT_LEASE_DIR = Path("/tmp/reid-gpu-leases")
POLL_S = 1.0


class LeaseError(ReidError):
    """GPUs that cannot be leased: too few free (with ``train.gpu_busy=fail``) or an unusable lease folder."""


def lease_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder of the lock files: ``REID_GPU_LEASE_DIR``, else ``/tmp/reid-gpu-leases``.

    ``/tmp`` rather than a per-user runtime folder: on a shared lab machine the users' jobs must see
    each other's leases. The folder is created world-writable with the sticky bit, like ``/tmp``.
    """
    env = os.environ if env is None else env
    raw = env.get(LEASE_DIR_ENV)
    return Path(raw) if raw else DEFAULT_LEASE_DIR


def visible_gpus(count: int, env: Mapping[str, str] | None = None) -> list[str]:
    """The lease names of the ``count`` CUDA devices this process sees, in torch's order.

    ``count`` is torch's device count (the caller asks torch; it is a parameter so that tests can
    use N slots without a GPU). With ``CUDA_VISIBLE_DEVICES`` the names are its entries (CUDA stops
    at the first entry it cannot use, so only the first ``count`` are taken).
    """
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    names = entries[:count]
    return names + [f"visible{i}" for i in range(len(names), count)]  # defensive: more devices than entries


def _file_name(name: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock"


def check_lease_dir(folder: Path) -> None:
    """Create the lease folder if needed; an unusable one is a clear error before any work.

    Why here and not at the first lock: the error must name the folder, the environment variable and
    the fix, and come before a lease is waited for.
    """
    fix = (f"set {LEASE_DIR_ENV} to a folder that every reid process on this machine can write "
           f"(the default is {DEFAULT_LEASE_DIR})")
    try:
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            try:
                folder.chmod(0o1777)  # every user's jobs lease here; sticky: nobody deletes another's file
            except OSError:
                pass
    except OSError as exc:
        raise LeaseError(f"the GPU lease folder {folder} cannot be created ({exc.strerror or exc}); {fix}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LeaseError(f"the GPU lease folder {folder} is not writable; {fix}")


def _open(path: Path) -> int:
    """A descriptor on the lock file (created mode 0666 so that other users can lease the GPU too)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        return os.open(path, os.O_RDONLY)  # another user's file: flock needs no write access
    try:
        os.fchmod(fd, 0o666)
    except OSError:
        pass
    return fd


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on ``path`` (its descriptor), or None when another holder has it."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _write_pid(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # a read-only descriptor (another user's file): the lease holds, the pid is just not shown


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@dataclass
class Lease:
    """GPUs held by this process (``indices`` in torch's numbering); released by :meth:`release` or exit."""

    indices: tuple[int, ...]
    names: tuple[str, ...]
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def devices(self) -> list[str]:
        return [f"cuda:{i}" for i in self.indices]

    def release(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)  # closing the only descriptor drops the flock
            except OSError:
                pass
        self._fds.clear()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class Busy:
    """A GPU another process holds: its index here and the holder's pid (None if not readable)."""

    index: int
    pid: int | None


def busy_summary(busy: Sequence[Busy]) -> str:
    """``cuda:0-1 held by pid 4312, cuda:3 by pid 77``: consecutive GPUs of one holder as a range."""
    groups: list[tuple[int, int, int | None]] = []
    for b in sorted(busy, key=lambda b: b.index):
        if groups and groups[-1][1] == b.index - 1 and groups[-1][2] == b.pid:
            groups[-1] = (groups[-1][0], b.index, b.pid)
        else:
            groups.append((b.index, b.index, b.pid))
    parts = []
    for n, (first, last, pid) in enumerate(groups):
        where = f"cuda:{first}" if first == last else f"cuda:{first}-{last}"
        who = f"pid {pid}" if pid is not None else "another process"
        parts.append(f"{where} {'held by ' if n == 0 else 'by '}{who}")
    return ", ".join(parts)


def acquire(names: Sequence[str], candidates: Sequence[int], wanted: int | None, *, wait: bool,
            folder: Path | None = None, what: str = "", accept: Callable[[int], int] | None = None,
            on_wait: Callable[[str], None] | None = None, poll_s: float = POLL_S) -> tuple[Lease, list[Busy]]:
    """Lease GPUs among ``candidates`` (indices into ``names``); returns the lease and who held the rest.

    ``wanted=N`` takes N GPUs, all at once or none (see the module docstring); ``wanted=None`` takes
    every free candidate, at least one; ``accept(free)`` then says how many of ``free`` GPUs to keep
    (e.g. the most that split the batch evenly), the rest are released at once. When too few are
    free, ``wait=False`` raises :class:`LeaseError`; ``wait=True`` says once on ``on_wait`` what it
    waits for (``what`` names the setting that asked) and tries again every ``poll_s`` seconds.
    """
    folder = lease_dir() if folder is None else folder
    check_lease_dir(folder)
    need = 1 if wanted is None else wanted
    if need > len(candidates):
        raise LeaseError(f"{what or 'the run'} needs {need} GPU(s) but only {len(candidates)} can be used here")
    told = False
    while True:
        held: list[tuple[int, int]] = []
        busy: list[Busy] = []
        for index in candidates:
            if wanted is not None and len(held) == wanted:
                break
            path = folder / _file_name(names[index])
            fd = _try_lock(path)
            if fd is None:
                busy.append(Busy(index, _read_pid(path)))
            else:
                held.append((index, fd))
        keep = len(held) if wanted is not None else (accept(len(held)) if accept and held else len(held))
        if len(held) >= need and keep >= 1:
            for _, fd in held[keep:]:
                os.close(fd)
            held = held[:keep]
            for _, fd in held:
                _write_pid(fd)
            lease = Lease(tuple(i for i, _ in held), tuple(names[i] for i, _ in held), [fd for _, fd in held])
            return lease, busy
        for _, fd in held:
            os.close(fd)
        message = (f"{what + ': ' if what else ''}{len(held)} of the {need} GPU(s) needed are free "
                   f"({busy_summary(busy) or 'none held'})")
        if not wait:
            raise LeaseError(f"{message}; train.gpu_busy=fail stops here. Wait for them to finish, "
                             "ask for fewer (train.nproc), or set train.gpu_busy=wait to queue")
        if not told and on_wait is not None:
            on_wait(f"waiting for GPUs: {message}; it starts as soon as they are free (Ctrl-C to give up)")
            told = True
        try:
            time.sleep(poll_s)
        except KeyboardInterrupt:
            raise LeaseError(f"gave up waiting for GPUs (Ctrl-C): {message}; nothing was started") from None
