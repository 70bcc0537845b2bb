"""``reid log-run``: send a run's local MLflow record to a tracking store (after the server was lost).

``reid train`` writes every MLflow call to ``<train.output_dir>/mlflow-record.jsonl`` before sending
it. When the tracking server died during the run, the training went on and its record holds what the
server missed; this command sends exactly that (a second call sends nothing). With
``--tracking-uri`` it publishes a run trained against a local store to another one, e.g. the lab's
server. The logic lives in :mod:`reid.tracking.replay`.

Exit codes: 0 done (notes, e.g. a deleted artifact file, are printed), 2 the record or the store
cannot be used (the message says which and how to fix it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reid.commands._common import clean_errors


def command(
    source: Annotated[Path, typer.Argument(help="The run's train.output_dir (holding mlflow-record.jsonl), or a record file.")],
    tracking_uri: Annotated[
        Optional[str],
        typer.Option("--tracking-uri", help="Store to log into (default: the one the run was recorded against)."),
    ] = None,
) -> None:
    """Log what a run's MLflow server missed (or the whole run into another store) from its local record."""
    with clean_errors():
        from reid.tracking.replay import replay_record

        reports = replay_record(source, tracking_uri)
    for report in reports:
        typer.echo(report.summary())
        for note in report.notes:
            typer.secho(f"  note: {note}", fg=typer.colors.YELLOW, err=True)
