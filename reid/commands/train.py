"""``reid train``: train the strong baseline (or a variant) with checkpoints, resume and MLflow tracking.

Relative tracking paths (``sqlite:///mlflow.db``, ``mlruns``) are anchored at ``DVC_ROOT`` inside a
DVC stage, else at the working directory, like every relative path of the parameters and like
``reid ui`` and ``reid evaluate`` (docs/PARAMETERS.md, "Relative paths").

Exit codes: 0 done, 2 a user error (bad params, data, checkpoint, tracking store, non-finite loss,
an output that cannot be written: a full disk names the path, the free space and the resume command),
1 a distributed run lost one of its processes (another node or worker died), 130 interrupted
(Ctrl-C) and 143 terminated (SIGTERM); in these three ``last.pt`` holds the last completed epoch
and ``reid train --resume`` continues the same MLflow run (interrupted in the first epoch, there is
no ``last.pt`` of this run, and the message says so).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from reid.commands._common import clean_errors, command_line, config_from_cli

if TYPE_CHECKING:
    from reid.config import Config


def interrupted_message(reason: str, last: Path, params: Path, variant: str | None, resume: bool,
                        started: float, overrides: list[str] | None = None, run_name: str | None = None) -> str:
    """What to tell the user after Ctrl-C / SIGTERM: only claim ``last.pt`` holds an epoch when it does.

    ``last.pt`` belongs to this run when it was resumed from or written after ``started`` (less the
    file system's timestamp grain); a file older than that is a previous run's (it is overwritten at
    the end of this run's first epoch). The command to run again carries every ``-o`` override and the
    run name, so that, pasted, it continues this run and not the one in the default folder.
    """
    from reid.commands._common import command_line
    from reid.checkpoint import read_entry

    again = command_line("train", params, variant, overrides, run_name)
    ours = last.is_file() and (resume or last.stat().st_mtime >= started - MTIME_GRAIN_S)
    epoch = read_entry(last, "epoch") if ours else None
    if epoch is None:
        older = f" ({last} is from an earlier run)" if last.is_file() else ""
        return (f"interrupted ({reason}) before the first epoch was completed: no checkpoint of this run was "
                f"written{older}, so there is nothing to resume. Start again with: {again}")
    return f"interrupted ({reason}); {last} holds epoch {epoch}. Continue with: {again} --resume"


MTIME_GRAIN_S = 0.05  # file modification times lag time.time() by up to a kernel tick


def identity_tags(params: Path, variant: str | None, overrides: list[str], run_name: str | None,
             config: "Config") -> dict[str, str]:
    """MLflow tags that say what the run is when its ``-o`` overrides make it another model.

    The ``variant`` tag names the params variant (``baseline`` for the base) only while the run *is*
    that configuration: overrides of evaluation, tracking, paths or the device keep it
    (:func:`reid.engine.resume.recipe_differences`). Otherwise the tag is the run name (``--run-name``
    or ``tracking.run_name``), else ``<variant>+<key>=<value>,...``, and ``reid.overrides`` lists the
    changes: ``reid compare`` finds a model's run by this tag, and an untrained reference run or an
    exploration with ten epochs must not pass for the pipeline's model.
    """
    from reid.commands._common import config_from_cli
    from reid.engine.resume import recipe_differences

    if not overrides:
        return {}
    base = config_from_cli(params, variant, None)
    changed = recipe_differences(base.model_dump(mode="json"), config.model_dump(mode="json"))
    if not changed:
        return {}
    name = variant or "baseline"
    given = run_name or config.tracking.run_name
    listed = ",".join(f"{key}={new}" for key, (_, new) in changed.items())
    label = given if given and given != name else f"{name}+{listed}"
    return {"variant": label[:250], "reid.based_on": name, "reid.overrides": listed}


def command(
    params: Annotated[Path, typer.Option("--params", "-p", help="Parameter file (params.yaml).")] = Path("params.yaml"),
    variant: Annotated[
        Optional[str], typer.Option("--variant", help="Named variant of params.yaml to merge over the base (e.g. sd_003).")
    ] = None,
    override: Annotated[
        Optional[list[str]], typer.Option("--override", "-o", help="key=value override, repeatable (e.g. -o optim.lr=0.001).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from <train.output_dir>/last.pt and its MLflow run.")
    ] = False,
    run_name: Annotated[
        Optional[str],
        typer.Option("--run-name", help="MLflow run name (default: tracking.run_name, else the variant, else the output folder)."),
    ] = None,
) -> None:
    """Train a ReID model: last.pt (the model of the last epoch; best.pt only with eval.val_ids), metrics.json and an MLflow run."""
    from reid.commands._common import project_base
    from reid.checkpoint import LAST_CHECKPOINT
    from reid.engine.signals import Terminated
    from reid.errors import DiskFullError, PeerLostError, WriteError

    with clean_errors():
        config = config_from_cli(params, variant, override)
        from reid.engine.launch import place

        # The devices: this process trains on one, or N workers ran this command (docs/GPU.md).
        again = command_line("train", params, variant, override, run_name, *(["--resume"] if resume else []))
        placement = place(config, shlex.split(again)[1:])
        if placement.exit_code is not None:
            raise typer.Exit(code=placement.exit_code)
        from reid.data.manifest import load_manifest
        from reid.engine.trainer import train

        # Loaded here so that a missing manifest names the params file this command was given.
        manifest = load_manifest(config.data.manifest, params, variant)
        overrides = list(override or [])
        tags = {**placement.tags, **identity_tags(params, variant, overrides, run_name, config)}
        started = time.time()
        try:
            result = train(config, manifest, resume=resume, variant=variant, run_name=run_name,
                           tracking_base=project_base(params), tags=tags,
                           resume_command=command_line("train", params, variant, overrides, run_name, "--resume"))
        except KeyboardInterrupt as exc:
            code = 143 if isinstance(exc, Terminated) else 130
            last = Path(config.train.output_dir) / LAST_CHECKPOINT
            typer.secho(interrupted_message(str(exc) or "Ctrl-C", last, params, variant, resume, started,
                                            overrides, run_name),
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(code=code) from None
        except PeerLostError as exc:
            # Another node or worker died: this one cannot go on alone; last.pt holds the last epoch.
            last = Path(config.train.output_dir) / LAST_CHECKPOINT
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            typer.secho(interrupted_message("a process of the distributed run was lost", last, params, variant,
                                            resume, started, overrides, run_name),
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(code=1) from None
        except WriteError as exc:
            # A full disk (or a read-only output folder): the error names the path and the space; the
            # previous last.pt is intact, so say how to continue once space is freed, as after Ctrl-C.
            last = Path(config.train.output_dir) / LAST_CHECKPOINT
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            reason = "no space left on the device" if isinstance(exc, DiskFullError) else "an output could not be written"
            typer.secho(interrupted_message(reason, last, params, variant, resume, started, overrides, run_name),
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(code=2) from None

    metrics = result.metrics
    # Percent, as `reid evaluate` and the epoch lines print it (metrics.json keeps fractions).
    shown = "  ".join(f"{k} {100 * metrics[k]:.1f}" for k in ("mAP", "rank1", "rank5", "mINP")
                      if isinstance(metrics.get(k), float))
    typer.echo(f"finished {result.epochs} epoch(s), {result.global_step} steps: {shown} (percent)")
    typer.echo(f"model (last epoch): {result.last_checkpoint}")
    if result.best_checkpoint is not None:
        typer.echo(f"best validation mAP {100 * result.best_metric:.1f} at epoch {result.best_epoch} "
                   f"(eval.val_ids held-out identities): {result.best_checkpoint}")
    typer.echo(f"metrics: {result.metrics_path}   config: {result.config_path}")
    if result.mlflow_run_id:
        typer.echo(f"MLflow run: {result.mlflow_run_id} (experiment {config.tracking.experiment!r}); "
                   f"see it with: {command_line('ui', params)}")
    else:
        typer.echo("MLflow tracking is off (tracking.enabled=false)")
