"""``reid sweep``: DVC experiments on a SLURM cluster, one ``sbatch`` job each (logic in :mod:`reid.sweep`).

    reid sweep submit -S 'kd.feature_loss_coefficient=0.03,0.1' -S 'train.seed=0,1' --name fl --wait
    reid sweep wait sweeps/fl            # the end of every job; failed and cancelled ones with their log
    reid sweep resubmit sweeps/fl fl-03  # one experiment again, the others untouched
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reid.commands._common import clean_errors

app = typer.Typer(help="A sweep of DVC experiments on SLURM: one job per experiment, each in its own clone.",
                  no_args_is_help=True)


def report(sweep, current) -> int:
    """Print one line per experiment (the log's tail for a bad end); 0 when all completed, 1 otherwise."""
    from reid.sweep import tail

    for s in current:
        code = "" if s.exit_code is None else f", exit {s.exit_code}"
        typer.echo(f"{s.name}: {s.state} (job {s.job}{code})")
    bad = [s for s in current if s.ended and not s.ok]
    for s in bad:
        typer.echo(f"--- {s.name}: {s.state}; last lines of {s.log}:\n{tail(s.log)}", err=True)
    if bad:
        names = " ".join(s.name for s in bad)
        typer.echo(f"{len(bad)} of {len(current)} experiments did not complete; to run them again: "
                   f"reid sweep resubmit {sweep.folder} {names}", err=True)
    running = [s for s in current if not s.ended]
    if running:
        typer.echo(f"{len(running)} still queued or running: reid sweep wait {sweep.folder}", err=True)
    return 0 if all(s.ok for s in current) else 1


@app.command("submit")
def submit(
    sets: Annotated[list[str], typer.Option("-S", "--set-param",
                                            help="KEY=V1,V2,... (repeatable): each is one axis of the grid, "
                                                 "passed to `dvc exp run -S`.")],
    name: Annotated[str, typer.Option("--name", help="Sweep name; experiments are NAME-01, NAME-02, ...")],
    folder: Annotated[Optional[Path], typer.Option("--dir", help="Sweep folder (plan, job scripts, logs) on a file "
                                                   "system the jobs see. Default: sweeps/NAME.")] = None,
    remote: Annotated[str, typer.Option("--git-remote", help="Git remote the jobs clone from and push to.")] = "origin",
    rev: Annotated[str, typer.Option("--rev", help="Commit the experiments start from (must be on the remote).")] = "HEAD",
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes per experiment; > 1 runs `reid train` as srun + "
                                       "torchrun (c10d rendezvous).")] = 1,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="GPUs per node (0: CPU).")] = 0,
    cpus_per_task: Annotated[int, typer.Option("--cpus-per-task", help="CPUs of each job's task.")] = 1,
    partition: Annotated[Optional[str], typer.Option("--partition", help="SLURM partition.")] = None,
    time_limit: Annotated[Optional[str], typer.Option("--time", help="SLURM time limit, e.g. 04:00:00.")] = None,
    sbatch_args: Annotated[Optional[list[str]], typer.Option("--sbatch-arg", help="Any other sbatch option, "
                                                             "e.g. --sbatch-arg=--account=lab (repeatable).")] = None,
    scratch: Annotated[Optional[str], typer.Option("--scratch", help="Where each job clones (expanded in the job). "
                                                   "Default: $TMPDIR on one node, the sweep folder on several.")] = None,
    wait_end: Annotated[bool, typer.Option("--wait", help="Wait for every job and report its end.")] = False,
) -> None:
    """Submit one SLURM job per combination of the -S values: clone, dvc pull, dvc exp run, dvc exp push."""
    with clean_errors():
        from reid.sweep import Resources, default_folder, plan, submit as submit_all, wait

        sweep = plan(name, folder or default_folder(name), sets, checkout=Path.cwd(), remote=remote, rev=rev,
                     scratch=scratch, resources=Resources(nodes, gpus_per_node, cpus_per_task, partition, time_limit,
                                                          list(sbatch_args or [])))
        jobs = submit_all(sweep)
        for exp, job in zip(sweep.experiments, jobs):
            typer.echo(f"{exp.name}: job {job}  {' '.join(exp.overrides)}")
        typer.echo(f"sweep {sweep.name}: {len(jobs)} jobs from {sweep.rev[:12]}; state in {sweep.folder}")
        if wait_end:
            raise typer.Exit(report(sweep, wait(sweep)))


@app.command("wait")
def wait_command(
    folder: Annotated[Path, typer.Argument(help="The sweep folder.")],
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Give up after this many seconds.")] = None,
) -> None:
    """Wait until every job of the sweep has ended; exit 1 when one failed, was cancelled or is still running."""
    with clean_errors():
        from reid.sweep import Sweep, wait

        sweep = Sweep.load(folder)
        raise typer.Exit(report(sweep, wait(sweep, timeout)))


@app.command("status")
def status(folder: Annotated[Path, typer.Argument(help="The sweep folder.")]) -> None:
    """Each experiment's current job and its state, now."""
    with clean_errors():
        from reid.sweep import Sweep, states

        sweep = Sweep.load(folder)
        raise typer.Exit(report(sweep, states(sweep)))


@app.command("resubmit")
def resubmit(
    folder: Annotated[Path, typer.Argument(help="The sweep folder.")],
    names: Annotated[list[str], typer.Argument(help="Experiments to run again (failed or cancelled ones).")],
) -> None:
    """A new job for each named experiment, same commit and overrides; the other experiments are untouched."""
    with clean_errors():
        from reid.sweep import Sweep, resubmit as resubmit_some

        for name, job in resubmit_some(Sweep.load(folder), names).items():
            typer.echo(f"{name}: job {job}")


@app.command("cancel")
def cancel(
    folder: Annotated[Path, typer.Argument(help="The sweep folder.")],
    names: Annotated[list[str], typer.Argument(help="Experiments whose current job to scancel.")],
) -> None:
    """scancel the current job of each named experiment."""
    with clean_errors():
        from reid.sweep import Sweep, cancel as cancel_some

        cancel_some(Sweep.load(folder), names)
