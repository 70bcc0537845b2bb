"""What one MLflow call costs when the tracking server is gone: MLflow's limits vs the tracker's.

A training run logs a few calls per logging interval; against a dead server each call waits for
MLflow's HTTP retries. This measures one ``log_metric`` against a port where nothing listens
(connection refused, the case of a killed or restarted server), once with MLflow's defaults
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 7, backoff factor 2, timeout 120 s) and once under
:func:`reid.tracking.connection.bounded_http` (what ``reid train``'s tracker uses). After its first
failed call the tracker stops calling a dead server (it only records), so the bounded figure is
about what a run loses to a dead server in total; MLflow's figure is per call.

Usage:
    .venv/bin/python benchmarks/bench_dead_server.py                 # about 4 minutes (MLflow's retries)
    .venv/bin/python benchmarks/bench_dead_server.py --skip-defaults # the bounded case only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import describe_machine  # noqa: E402

from reid.tracking.connection import HTTP_LIMITS, bounded_http  # noqa: E402


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_call_s() -> float:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{dead_port()}")
    started = time.monotonic()
    try:
        client.log_metric("0" * 32, "m", 1.0)
    except MlflowException:
        pass
    else:
        raise AssertionError("the call to a dead server succeeded")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-defaults", action="store_true", help="skip MLflow's defaults (about 4 minutes)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    for key in HTTP_LIMITS:
        os.environ.pop(key, None)
    results: dict[str, object] = {}
    with bounded_http():
        results["bounded_s"] = round(one_call_s(), 2)
    results["bounded_limits"] = dict(HTTP_LIMITS)
    if not args.skip_defaults:
        results["mlflow_defaults_s"] = round(one_call_s(), 2)
    print(json.dumps(results, indent=2))
    import mlflow

    record = {"benchmark": "dead_server", "date": dt.date.today().isoformat(), "command": " ".join(sys.argv),
              "mlflow": mlflow.__version__, "machine": describe_machine(), "results": results}
    output = args.output or Path(__file__).parent / "results" / f"mlflow_dead_server_{record['date']}.json"
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
