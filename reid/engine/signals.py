"""SIGTERM as an exception, so an interrupted run takes the same path as Ctrl-C.

A scheduler (SLURM, ``dvc queue kill``, a container runtime) stops a job with SIGTERM. Python's default
ends the process at once: no MLflow status, no message saying what to resume. While
:func:`sigterm_as_interrupt` is active, SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so
``finally`` blocks run, the run is marked KILLED and ``reid train`` prints its resume hint (exit 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the run is marked KILLED and checkpoints stay intact.

    A subclass of ``KeyboardInterrupt`` so that ``except Exception`` blocks do not swallow it.
    """


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Terminated` (only possible in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"received signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
