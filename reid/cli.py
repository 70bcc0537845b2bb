"""The ``reid`` command line: one typer app, one small module per command under ``reid.commands``.

Command modules import torch and MLflow inside their functions, so ``reid --help`` stays instant.
"""

from __future__ import annotations

import typer

from reid.commands import (compare, evaluate, export, extract, index, log_run, prepare, search, sweep, synth, train, ui,
                           weights)

app = typer.Typer(
    name="reid",
    help="Train, distil and evaluate re-identification models; every run tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("prepare")(prepare.command)
app.command("synth")(synth.command)
app.command("train")(train.command)
app.command("evaluate")(evaluate.command)
app.command("compare")(compare.command)
app.command("ui")(ui.command)
app.command("export")(export.command)
app.command("extract")(extract.command)
app.command("search")(search.command)
app.command("log-run")(log_run.command)
app.add_typer(weights.app, name="weights")
app.add_typer(sweep.app, name="sweep")
app.add_typer(index.app, name="index")


if __name__ == "__main__":  # pragma: no cover
    app()
