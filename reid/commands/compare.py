"""``reid compare``: the last stage of the pipeline, one table of every model's accuracy and cost."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reid.commands._common import clean_errors, command_line


def command(
    params: Annotated[Path, typer.Option("--params", "-p", help="params.yaml listing the baseline and its variants.")] = Path(
        "params.yaml"
    ),
    output: Annotated[
        Optional[Path], typer.Option("--output", help="Folder for comparison.md/.csv/.png [default: compare.output_dir].")
    ] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Look up each model's MLflow run.")] = True,
) -> None:
    """Compare every model of the pipeline: metrics, kd settings, parameters and GMACs."""
    from reid.commands._common import project_base
    from reid.compare import compare

    with clean_errors():
        result = compare(params, output, use_mlflow=mlflow, tracking_base=project_base(params))
    typer.echo(result.markdown)
    if result.spread:
        typer.echo(result.spread)
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)
    typer.echo("wrote " + ", ".join(str(p) for p in result.files))
    typer.echo(
        f"Open the MLflow UI to compare the runs: {command_line('ui', params)}\n"
        "  (or: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db "
        "--host 127.0.0.1 --workers 1), then http://localhost:5000"
    )
