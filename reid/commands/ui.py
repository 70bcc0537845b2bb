"""``reid ui``: open the MLflow UI on the runs of this project, safely and cheaply, at the comparison.

Why a command instead of telling people to type ``mlflow ui``: the backend store must be the one the
pipeline writes (``tracking.uri`` in params.yaml, a relative sqlite path anchored at the working directory, or
``DVC_ROOT``, like every relative path of the parameters), the
server must listen on localhost only unless asked otherwise (MLflow has no authentication), and one
worker without the job runner starts in about 5 s with about 0.5 GB instead of several workers. And
the page worth opening is not the experiment's default one (a GenAI traces overview): the command
publishes a view of the latest runs side by side, sorted by mAP, and prints its URL
(:mod:`reid.tracking.ui_view`); ``--open`` also opens it in a browser.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from reid.commands._common import clean_errors, project_base
from reid.config import read_params, resolve_tree, validate
# Re-exported: `reid train`/`reid evaluate` anchor the store exactly like the UI opens it.
from reid.tracking.mlflow_tracker import SQLITE_PREFIX, resolve_artifact_root, resolve_store_uri

__all__ = ["command", "comparison_page", "resolve_store_uri", "ui_command_line", "wait_for_server"]


def ui_command_line(params: Path, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow ui`` argv and the environment additions for the project's tracking store."""
    tracking = validate(resolve_tree(read_params(params)), str(params)).tracking
    base = project_base(params)
    store = resolve_store_uri(tracking.uri, base)
    artifacts = resolve_artifact_root(tracking.artifact_root, base)
    argv = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", store,
        # Only used for experiments created from the UI; the pipeline's own experiments already carry
        # an absolute artifact location.
        "--default-artifact-root", str(artifacts),
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]
    return argv, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def comparison_page(params: Path, base_url: str) -> tuple[str | None, str]:
    """Publish the comparison view of the project's latest runs; returns ``(url or None, what to say)``.

    The view (:mod:`reid.tracking.ui_view`) is written into the store before the server starts. A
    missing store or experiment is not an error (the UI still opens), but the message says where
    ``reid ui`` looked, since a store anchored at the wrong folder is the usual reason.
    """
    tracking = validate(resolve_tree(read_params(params)), str(params)).tracking
    store = resolve_store_uri(tracking.uri, project_base(params))
    where = (f"tracking.uri of {params} ({store}), relative to the working directory; run `reid ui` where the "
             "pipeline ran (the quickstart's runs: cd .quickstart && reid ui)")
    if store.startswith(SQLITE_PREFIX) and not Path(store[len(SQLITE_PREFIX):]).is_file():
        return None, f"no MLflow store yet at {store[len(SQLITE_PREFIX):]}: nothing to compare. The UI opens " + where
    from mlflow.tracking import MlflowClient

    from reid.errors import TrackingError
    from reid.tracking.ui_view import comparison_url, publish_comparison_view

    try:
        view = publish_comparison_view(MlflowClient(tracking_uri=store), tracking.experiment)
    except TrackingError as exc:
        return None, f"{exc}. The UI opens {where}"
    url = comparison_url(base_url, view)
    runs = ", ".join(view.names) or "none yet"
    return url, f"comparison of the latest runs of {tracking.experiment!r} ({runs}), sorted by mAP:\n  {url}"


def command(
    params: Annotated[Path, typer.Option("--params", "-p", help="params.yaml whose tracking.uri holds the runs.")] = Path(
        "params.yaml"
    ),
    host: Annotated[
        str, typer.Option(help="Interface to bind. 127.0.0.1 keeps it private; MLflow has no login.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the web UI.")] = 5000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the mlflow command instead of starting it.")] = False,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the comparison page in a web browser "
                                               "once the server answers.")] = False,
) -> None:
    """Start the MLflow UI on this project's runs and print the page comparing the latest models."""
    with clean_errors():
        argv, env_add = ui_command_line(params, host, port)
        if not dry_run:
            browse_host = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
            url, message = comparison_page(params, f"http://{browse_host}:{port}")
    shown = " ".join(f"{k}={v}" for k, v in env_add.items()) + " " + shlex.join(argv)
    if dry_run:
        typer.echo(shown)
        return
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: binding to {host}: anyone who can reach this port can read and delete runs",
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(f"MLflow UI on http://{browse_host}:{port}  (Ctrl-C to stop)")
    typer.echo(message)
    typer.echo(shown, err=True)
    from reid.engine.signals import sigterm_as_interrupt

    server = subprocess.Popen(argv, env={**os.environ, **env_add})
    # Ctrl-C reaches the server too (same process group); SIGTERM, to this process alone, must not
    # leave the server running without its parent.
    try:
        with sigterm_as_interrupt():
            if open_browser and url is not None and wait_for_server(f"http://{browse_host}:{port}", server):
                import webbrowser

                webbrowser.open(url)
            code = server.wait()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        server.terminate()
        server.wait(timeout=30)
        code = 0
    raise typer.Exit(code=code)


def wait_for_server(base_url: str, server: "subprocess.Popen[bytes]", timeout_s: float = 60.0) -> bool:
    """True once ``base_url``/health answers; False if the server exits or ``timeout_s`` passes."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(base_url + "/health", timeout=2):  # noqa: S310 - our own server
                return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False
