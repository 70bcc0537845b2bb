"""Where a run's metrics go: ``<train.output_dir>/metrics.jsonl`` always, MLflow when tracking is on.

Why a local file that is always written: a run with tracking off (a quick test, an offline node, the
GPU check) must still leave its curve, and a script that wants the numbers (benchmarks/gpu/check_tools.py,
a notebook) should read a file rather than scrape the progress bar. Every point the loop logs (per
``train.log_every_steps`` steps: ``train_step/*``; per epoch: ``train/*``; per evaluation:
``eval_epoch/*`` and ``val/*``) is one JSON line ``{"step": ..., "time": ..., "<name>": value, ...}``
with MLflow's names and steps, written before MLflow sees it. MLflow is another sink of the same
calls (:class:`reid.tracking.Tracker`, whose own ``mlflow-record.jsonl`` is its outbox for a lost server).

The file is appended to line by line (a killed run keeps every earlier line; a torn last line is
skipped by :func:`read_metrics_log`); a resumed run appends, so the replayed steps of an interrupted
epoch appear twice, as in MLflow; a new run in the same folder starts a new file.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

METRICS_LOG = "metrics.jsonl"


class MetricSink(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...


class MetricsLog:
    """Append-only JSON-lines metric file (see the module docstring)."""

    def __init__(self, path: Path | str, new: bool) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if new:
            self.path.write_text("", encoding="utf-8")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        line = json.dumps({"step": step, "time": round(time.time(), 3), **values})
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


class MetricSinks:
    """Sends every call to each sink in order (the local file first, so it holds what MLflow may miss)."""

    def __init__(self, sinks: Sequence[MetricSink]) -> None:
        self.sinks = list(sinks)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for sink in self.sinks:
            sink.log_metrics(metrics, step=step)


def read_metrics_log(path: Path | str, prefix: str = "") -> list[dict[str, Any]]:
    """The lines of a metrics log (only those with a metric starting with ``prefix``), in order.

    A torn last line (a run killed while writing it) is skipped; any other unreadable line is an error,
    since it means the file is not a metrics log.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number} is not a JSON line of a metrics log") from None
        if not prefix or any(key.startswith(prefix) for key in row if key not in ("step", "time")):
            rows.append(row)
    return rows
