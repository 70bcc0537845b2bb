"""Helpers shared by the commands: loading parameters and turning known errors into clean exits."""

from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path
from typing import Iterator

import typer

from reid.config import Config, ConfigError, load_config
from reid.errors import ReidError


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Print a user error (bad params, bad data, bad checkpoint) as one clear message, exit code 2."""
    try:
        yield
    except (ConfigError, ReidError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


def config_from_cli(params: Path, variant: str | None, overrides: list[str] | None) -> Config:
    """Parameters as every command reads them: params.yaml, then a variant, then ``-o key=value``."""
    return load_config(params, variant=variant, overrides=list(overrides or []))


def project_base(params: Path) -> Path:
    """Where relative tracking paths are anchored: ``DVC_ROOT`` inside a DVC stage, else the working
    directory, the rule of every relative path in the parameters (docs/PARAMETERS.md, "Relative paths").

    One rule: ``data.manifest``, ``train.output_dir``, checkpoints and evaluation outputs are relative
    to the working directory, so the MLflow store is too (anchoring it beside the params file put
    ``mlflow.db`` in ``configs/`` for ``--params configs/x.yaml`` while everything else landed in the
    working directory). ``DVC_ROOT`` keeps ``dvc exp run --temp`` stages writing to the main store.
    ``params`` is not consulted; the argument stays so that every command asks the same function.
    """
    root = os.environ.get("DVC_ROOT")
    return Path(root) if root else Path.cwd()


def command_line(command: str, params: Path | str, variant: str | None = None, overrides: list[str] | None = None,
                 run_name: str | None = None, *extra: str) -> str:
    """``reid <command>`` with the same parameters, shell-quoted, for a message to paste.

    The params file, variant, every ``-o`` override (in order: a later one wins) and the run name
    together are what makes a run *this* run; a hint that drops one of them continues or restarts
    another run (e.g. the default ``train.output_dir``). ``shlex.join`` quotes paths with spaces.
    """
    argv = ["reid", command, "--params", str(params)]
    if variant:
        argv += ["--variant", variant]
    for override in overrides or []:
        argv += ["-o", override]
    if run_name:
        argv += ["--run-name", run_name]
    return shlex.join([*argv, *extra])
