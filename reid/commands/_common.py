"""Helpers shared by the commands: loading parameters and turning known errors into clean exits."""

from __future__ import annotations

import contextlib
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
