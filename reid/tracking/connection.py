"""How long one MLflow call may wait for a tracking server: seconds, not minutes.

MLflow's HTTP client retries a failed request 7 times with a backoff factor of 2 and waits up to
120 s for each answer (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR`` / ``_TIMEOUT``),
which is right for a rate-limited hosted service and wrong for a training loop: against a server that
went away, every metric call would stall the run for about four minutes. :func:`bounded_http` sets
tighter limits around the tracker's own calls: a refused connection costs about 3-5 s (2 retries,
waits of 1 s and 2 s plus jitter), a server that accepts but never answers 3 x 15 s once, after
which the tracker stops calling it (see :mod:`reid.tracking.mlflow_tracker`). A value the user set in
the environment wins, so a slow proxy can still be given more time.

The limits are set only for the duration of the call and removed afterwards, so the rest of the
process (a notebook, another library using MLflow) keeps MLflow's defaults. They are environment
variables because that is the only interface MLflow reads them from (at each request).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

HTTP_LIMITS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def is_server_uri(uri: str) -> bool:
    """An ``http(s)://`` tracking URI: a server this machine talks to over the network."""
    return uri.startswith(("http://", "https://"))


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """While active, MLflow HTTP requests use :data:`HTTP_LIMITS` unless the environment sets them."""
    added = {key: value for key, value in HTTP_LIMITS.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
