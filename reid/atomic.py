"""Atomic file replacement: a reader (DVC, a resumed run, another process) sees the old file or the new one.

A run killed while writing its checkpoint, manifest or metrics must leave the previous file intact,
never half of a new one. Every writer of the project goes through :func:`atomic_target`.

A write that fails for want of space (``ENOSPC``, a quota) or another file-system reason (read-only,
permission, I/O error) becomes one :class:`~reid.errors.WriteError` naming the path, the free space
and roughly what was needed, instead of the writer's own error: ``torch.save`` on a full disk raises
``RuntimeError: basic_ios::clear: iostream error`` chained to a zip-writer assertion, which says
neither "no space" nor where. The temporary file is removed first, so the message reports the free
space as the user will find it, and the previous file is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from reid.errors import DiskFullError, ReidError, WriteError

#: errno values that mean "the file system has no room for this file".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: errno values of a write refused by the file system (the path is named; the fix is elsewhere).
WRITE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})
#: Below this much free space after a failed write, a writer's own error (torch's C++ stream writer
#: reports a full disk as a RuntimeError without errno) is taken for a full disk.
FULL_BELOW_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_target(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is synced and renamed over ``path``.

    The sibling lives in the same folder (so the rename is atomic on the same file system) and has a
    unique name (concurrent writers do not collide). On any failure, including KeyboardInterrupt, it is
    removed and ``path`` is left untouched. Parent folders are created. A failure of the file system
    (full disk, quota, read-only, permission) is raised as :class:`~reid.errors.WriteError` (for no
    space, its subclass :class:`~reid.errors.DiskFullError`) naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = write_error(path, exc)
        if error is None:
            raise
        raise error from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written, held = _size(tmp), _free_bytes(path)
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, ReidError):
            # A writer that still holds the unlinked file open (its frames live in the traceback)
            # keeps its blocks until it is collected: count them as free, as they will be.
            freed = (held or 0) + (written or 0) if held is not None else None
            error = write_error(path, exc, written=written, tmp=tmp, free=freed, free_at_failure=held)
            if error is not None:
                raise error from None
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_error(path: Path | str, exc: BaseException, *, written: int | None = None,
                tmp: Path | None = None, free: int | None = None,
                free_at_failure: int | None = None) -> WriteError | None:
    """The :class:`WriteError` that ``exc``, raised while writing ``path``, means; None when it is not a
    file-system failure of that write (a bug or a failed read goes on as it is).

    For writers that cannot go through :func:`atomic_target` (an append-only log, a copy made by a
    library such as MLflow's artifact store): ``written`` is how much of the new file existed, ``free``
    the free space to report (default: measured now), ``free_at_failure`` the free space measured
    before the partial file was removed (default: now).
    """
    path = Path(path)
    os_error = _os_error(exc)
    measured = _free_bytes(path)
    if free is None or (measured is not None and measured > free):
        free = measured
    if os_error is not None and os_error.errno in NO_SPACE_ERRNOS:
        return DiskFullError(_no_space_message(path, written, free, os_error.strerror or str(os_error)))
    if os_error is not None and os_error.errno in WRITE_ERRNOS and _about(os_error, path, tmp):
        return WriteError(f"cannot write {path}: {os_error.strerror or os_error} (errno {os_error.errno}). "
                          f"Make {path.parent} writable, or write the output to another folder")
    at_failure = free_at_failure if free_at_failure is not None else measured
    if os_error is None and isinstance(exc, RuntimeError) and at_failure is not None and at_failure < FULL_BELOW_BYTES:
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        return DiskFullError(_no_space_message(path, written, free, detail))
    return None


def _no_space_message(path: Path, written: int | None, free: int | None, detail: str) -> str:
    previous = _size(path)
    if written and written >= (previous or 0):
        need = f"more than {human_bytes(written)} needed (that much had been written when it ran out"
        need += f"; the previous {path.name} is {human_bytes(previous)})" if previous else ")"
    elif previous:
        need = f"about {human_bytes(previous)} needed (the size of the previous {path.name})"
    else:
        need = "an unknown amount needed"
    kept = (f"{path} is unchanged (the previous version)" if previous is not None
            else f"{path} was not written")
    return (f"no space left on the device to write {path}: {human_bytes(free)} free on {_mount_point(path)}, "
            f"{need}. {kept} and no temporary file is left. Free some space (or point the output to a larger "
            f"disk) and run the command again. Detail: {detail}")


def human_bytes(count: int | None) -> str:
    """``123.4 MB`` (decimal units, like ``df -H``); ``unknown`` for None."""
    if count is None:
        return "unknown"
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def _os_error(exc: BaseException) -> OSError | None:
    """``exc`` or the first OSError it was raised from or during (a library may wrap the errno)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _about(exc: OSError, path: Path, tmp: Path | None) -> bool:
    """True when ``exc`` concerns the written file (or names no file, as a failed ``write()`` does)."""
    names = {str(p) for p in (path, path.parent, tmp) if p is not None}
    return exc.filename is None or str(exc.filename) in names or str(exc.filename2 or "") in names


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing(Path(path).parent)).free
    except OSError:
        return None


def _mount_point(path: Path) -> Path:
    current = _existing(Path(path).parent).resolve()
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current
