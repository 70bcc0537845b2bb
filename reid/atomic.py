"""Atomic file replacement: a reader (DVC, a resumed run, another process) sees the old file or the new one.

A run killed while writing its checkpoint, manifest or metrics must leave the previous file intact,
never half of a new one. Every writer of the project goes through :func:`atomic_target`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_target(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is synced and renamed over ``path``.

    The sibling lives in the same folder (so the rename is atomic on the same file system) and has a
    unique name (concurrent writers do not collide). On any failure, including KeyboardInterrupt, it is
    removed and ``path`` is left untouched. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
