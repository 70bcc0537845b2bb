"""A small per-epoch progress bar on stderr, written here to avoid a dependency for forty lines.

The bar is cheap by construction: :meth:`EpochProgress.update` takes the step counter (a Python int)
and, optionally, statistics that the trainer has *already* copied to the host at its log interval,
so drawing the bar never forces a GPU synchronisation. On a terminal the line is redrawn in place at
most every ``min_interval`` seconds; when stderr is a file or a pipe (DVC, CI, ``nohup``) a plain
line is written every ``log_every`` steps (``train.log_every_steps``) and at the end of the epoch, so
logs stay readable instead of filling with ``\\r`` frames, yet a long epoch is not minutes of silence.
"""

from __future__ import annotations

import sys
import time
from typing import Mapping, TextIO

BAR_WIDTH = 24


def format_stats(stats: Mapping[str, float]) -> str:
    """``{"loss": 1.23, "lr": 3.5e-4, "img/s": 812.4}`` -> ``loss 1.2300  lr 3.50e-04  img/s 812``."""
    parts = []
    for name, value in stats.items():
        if name == "lr":
            parts.append(f"lr {value:.2e}")
        elif name in ("img/s",):
            parts.append(f"{value:.0f} img/s")
        elif name.startswith("acc"):  # percent, like every accuracy a person reads (metrics files keep fractions)
            parts.append(f"{name} {100 * value:.1f}%")
        else:
            parts.append(f"{name} {value:.4f}")
    return "  ".join(parts)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EpochProgress:
    """Progress of one epoch: ``epoch 3/120 [#####.....] 41/202  loss 2.31  acc 41.0%  lr 3.50e-04  812 img/s``."""

    def __init__(self, epoch: int, epochs: int, total_steps: int, *, stream: TextIO | None = None,
                 enabled: bool = True, min_interval: float = 0.5, log_every: int | None = None) -> None:
        self.prefix = f"epoch {epoch}/{epochs}"
        self.total = max(int(total_steps), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interactive = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self.log_every = log_every
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._stats: Mapping[str, float] = {}

    def line(self, done: int) -> str:
        done = min(max(done, 0), self.total)
        filled = BAR_WIDTH * done // self.total
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        stats = format_stats(self._stats)
        elapsed = format_duration(time.perf_counter() - self.start)
        return f"{self.prefix} [{bar}] {done}/{self.total}  {stats}  {elapsed}".rstrip()

    def update(self, done: int, stats: Mapping[str, float] | None = None) -> None:
        """Record progress; redraw (terminal only, throttled). ``stats`` must already be host floats."""
        if stats is not None:
            self._stats = dict(stats)
        if not self.interactive:
            if self.enabled and self.log_every and done < self.total and done % self.log_every == 0:
                self.stream.write(self.line(done) + "\n")
                self.stream.flush()
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.min_interval or done >= self.total:
            self._last_draw = now
            self.stream.write("\r\x1b[2K" + self.line(done))
            self.stream.flush()

    def close(self, done: int, stats: Mapping[str, float] | None = None) -> str:
        """Write the final line of the epoch (always, terminal or not) and return it."""
        if stats is not None:
            self._stats = dict(stats)
        text = self.line(done)
        if self.enabled:
            self.stream.write(("\r\x1b[2K" if self.interactive else "") + text + "\n")
            self.stream.flush()
        return text
