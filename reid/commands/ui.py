"""``reid ui``: open the MLflow UI on the runs of this project, safely and cheaply.

Why a command instead of telling people to type ``mlflow ui``: the backend store must be the one the
pipeline writes (``tracking.uri`` in params.yaml, a relative sqlite path anchored at the working directory, or
``DVC_ROOT``, like every relative path of the parameters), the
server must listen on localhost only unless asked otherwise (MLflow has no authentication), and one
worker without the job runner starts in about 5 s with about 0.5 GB instead of several workers.
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
from reid.tracking.mlflow_tracker import resolve_artifact_root, resolve_store_uri

__all__ = ["command", "resolve_store_uri", "ui_command_line"]


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


def command(
    params: Annotated[Path, typer.Option("--params", "-p", help="params.yaml whose tracking.uri holds the runs.")] = Path(
        "params.yaml"
    ),
    host: Annotated[
        str, typer.Option(help="Interface to bind. 127.0.0.1 keeps it private; MLflow has no login.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the web UI.")] = 5000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the mlflow command instead of starting it.")] = False,
) -> None:
    """Start the MLflow UI on this project's runs (bound to 127.0.0.1 by default)."""
    with clean_errors():
        argv, env_add = ui_command_line(params, host, port)
    shown = " ".join(f"{k}={v}" for k, v in env_add.items()) + " " + shlex.join(argv)
    if dry_run:
        typer.echo(shown)
        return
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: binding to {host}: anyone who can reach this port can read and delete runs",
                    fg=typer.colors.YELLOW, err=True)
    typer.echo(f"MLflow UI on http://{'localhost' if host == '127.0.0.1' else host}:{port}  (Ctrl-C to stop)")
    typer.echo(shown, err=True)
    try:
        code = subprocess.call(argv, env={**os.environ, **env_add})
    except KeyboardInterrupt:  # pragma: no cover - interactive
        code = 0
    raise typer.Exit(code=code)
