"""``reid evaluate``: score a trained checkpoint on the query/gallery split of a manifest.

Where each setting comes from, and why:

* the **model** (architecture and weights) and the **image geometry/normalisation** (``data.height``,
  ``width``, ``mean``, ``std``) come from the checkpoint: they are properties of the trained model,
  and feeding it other sizes would silently produce poor features;
* everything else (``data`` loading, ``eval`` protocol, ``tracking``, ``train.device``) comes from
  ``--params`` (+ ``--variant``, ``-o key=value``), so every model of the pipeline is evaluated under
  one protocol (dvc.yaml's ``evaluate`` stage depends on ``data`` and ``eval``). Without a params file
  the checkpoint's own configuration is used.

Writes ``metrics.json`` (fractions in [0, 1]), ``cmc.csv``/``cmc.png`` and ``ranked_lists.png`` to
``--output`` (default ``pipeline/eval/<name>``), and, when ``tracking.enabled``, logs the metrics as
``eval/*`` into the MLflow run that trained the checkpoint (see :func:`log_evaluation_run`; relative
tracking paths are anchored like the trainer's: ``DVC_ROOT`` inside a DVC stage, else the folder of
the params file, else the working directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from reid.commands._common import clean_errors, config_from_cli

if TYPE_CHECKING:
    from reid.config import Config

# Data settings that belong to the trained model rather than to the evaluation.
MODEL_DATA_KEYS = ("height", "width", "mean", "std")


def model_name(checkpoint: Path, variant: str | None) -> str:
    """``pipeline/models/<name>/best.pt`` -> ``<name>``; a variant name wins when given."""
    if variant:
        return variant
    parent = checkpoint.resolve().parent.name
    return parent or checkpoint.stem


def resolve_config(
    checkpoint_config: "Config", params_config: "Config | None", overrides: list[str]
) -> tuple["Config", list[str]]:
    """The evaluation's configuration (see the module docstring) and notes on what was taken from where.

    ``params_config`` is params.yaml resolved with its variant and ``overrides`` (None without a
    params file, in which case ``overrides`` apply to the checkpoint's configuration).
    """
    from reid.config import apply_overrides, validate

    ckpt = checkpoint_config.model_dump(mode="json")
    notes: list[str] = []
    if params_config is None:
        return validate(apply_overrides(ckpt, overrides), "checkpoint configuration with overrides"), notes
    tree = params_config.model_dump(mode="json")
    tree["model"] = ckpt["model"]
    for key in MODEL_DATA_KEYS:
        if tree["data"][key] != ckpt["data"][key]:
            notes.append(f"data.{key}: using the checkpoint's {ckpt['data'][key]}, not {tree['data'][key]} from the params")
        tree["data"][key] = ckpt["data"][key]
    return validate(tree, "params with the checkpoint's model"), notes


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The MLflow run that trained the checkpoint (key ``mlflow_run_id``), read without loading weights."""
    from reid.engine.checkpoint import read_entry

    run_id = read_entry(checkpoint, "mlflow_run_id")
    return str(run_id) if run_id else None


def log_evaluation_run(
    config: "Config", name: str, trained_by: str | None, checkpoint: Path, result: Any, artifacts: list[Path],
    base: Path | None = None,
) -> tuple[str | None, bool]:
    """Record the evaluation in MLflow; returns ``(run id, whether it is the training run)``.

    The metrics go into the run that trained the checkpoint, as ``eval/mAP``, ``eval/rank1``, ...,
    with the pictures and metrics.json under ``evaluation/``: one model is then one row in the MLflow
    UI, holding its parameters, its training curves and the evaluation of its best checkpoint, which is
    what a side-by-side comparison of runs needs. The ``eval/`` prefix keeps these apart from the
    trainer's per-epoch ``mAP`` (evaluated on the last weights, not the best ones).

    When that run is not in this store (the checkpoint came from elsewhere, or the store was reset)
    the evaluation gets its own run ``evaluate-<name>``, tagged ``variant=<name>`` and with the
    missing training run id in ``reid.trained_by_run``. Uses the trainer's
    :class:`reid.tracking.Tracker`, so the store and the anchoring of relative paths are the same as
    for training runs.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from reid.evaluation.runner import log_to_mlflow
    from reid.tracking import Tracker

    tracker = Tracker(config.tracking, base=base)
    tracker.check()
    flags = {"eval/flip": str(bool(config.eval.flip)).lower(), "eval/checkpoint": str(checkpoint.resolve())}
    if trained_by:
        client = MlflowClient(tracking_uri=tracker.uri)
        try:
            client.get_run(trained_by)
        except MlflowException:
            pass  # not in this store: fall through to a run of its own
        else:
            log_to_mlflow(result, artifacts, run_id=trained_by, prefix="eval/", tracking_uri=tracker.uri)
            for key, value in flags.items():
                client.set_tag(trained_by, key, value)
            return trained_by, True
    tags = {"reid.command": "evaluate", "variant": name, "reid.checkpoint": str(checkpoint.resolve()), **flags}
    if trained_by:
        tags["reid.trained_by_run"] = trained_by
    with tracker.start(run_name=f"evaluate-{name}", tags=tags):
        tracker.log_params({k: v for k, v in config.flat().items() if k.startswith(("eval.", "model."))})
        log_to_mlflow(result, artifacts, run_id=tracker.run_id, prefix="eval/", tracking_uri=tracker.uri)
    return tracker.run_id, False


def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `reid train` (e.g. pipeline/models/baseline/best.pt).")],
    params: Annotated[
        Path, typer.Option("--params", "-p", help="params.yaml for the data, eval and tracking sections (the model comes from the checkpoint).")
    ] = Path("params.yaml"),
    variant: Annotated[Optional[str], typer.Option("--variant", help="Variant of params.yaml to merge; also names the output.")] = None,
    override: Annotated[
        Optional[list[str]], typer.Option("--override", "-o", help="key=value override, repeatable (e.g. -o eval.rerank=true).")
    ] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest with the query/gallery split (default: data.manifest).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Folder for metrics.json and pictures (default: pipeline/eval/<name>).")] = None,
    rerank: Annotated[Optional[bool], typer.Option("--rerank/--no-rerank", help="k-reciprocal re-ranking (default: eval.rerank).")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Add the features of mirrored images (default: eval.flip).")] = None,
    mlflow_run_id: Annotated[
        Optional[str], typer.Option("--mlflow-run-id", help="Log into this MLflow run (default: the run that trained the checkpoint).")
    ] = None,
) -> None:
    """Evaluate a checkpoint with the Market-1501 protocol: mAP, CMC, mINP, CMC plot, ranked lists."""
    with clean_errors():
        from reid.config import ConfigError

        params_path: Path | None = params
        if not params.is_file():
            if params != Path("params.yaml") or variant:
                raise ConfigError(f"parameter file {params} does not exist")
            params_path = None  # no project params: evaluate with the checkpoint's own configuration
        overrides = list(override or [])
        if rerank is not None:
            overrides.append(f"eval.rerank={str(rerank).lower()}")
        if flip is not None:
            overrides.append(f"eval.flip={str(flip).lower()}")

        # The device belongs to this machine, not to the checkpoint: take it from the params when given.
        params_config = config_from_cli(params_path, variant, overrides) if params_path is not None else None

        from reid.data.manifest import load_manifest
        from reid.engine.device import resolve_device
        from reid.evaluation.runner import evaluate_model, write_outputs
        from reid.models.inference import load_inference_model

        device = resolve_device(params_config.train.device if params_config is not None else "auto")
        model, ckpt_config = load_inference_model(checkpoint, device)
        config, notes = resolve_config(ckpt_config, params_config, overrides)
        for note in notes:
            typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)

        # Relative tracking paths are anchored like `reid train` and `reid ui` anchor them.
        from reid.commands.ui import project_base

        base = project_base(params_path) if params_path is not None else None
        if config.tracking.enabled:  # fail before a long evaluation, not after it
            from reid.tracking import Tracker

            Tracker(config.tracking, base=base).check()

        name = model_name(checkpoint, variant)
        out_dir = output if output is not None else Path("pipeline/eval") / name
        manifest_path = manifest if manifest is not None else config.data.manifest
        split = load_manifest(manifest_path)

        typer.echo(f"evaluating {checkpoint} ({config.model.backbone}) on {len(split.query)} query / "
                   f"{len(split.gallery)} gallery images, device {device}")
        result = evaluate_model(model, split, config, device)
        extra = {"flip": bool(config.eval.flip), "checkpoint": str(checkpoint), "model": name}
        paths = write_outputs(result, out_dir, extra=extra, title=name)
        typer.echo(result.summary())
        typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))

        if config.tracking.enabled:
            trained_by = mlflow_run_id or checkpoint_run_id(checkpoint)
            run_id, is_training_run = log_evaluation_run(config, name, trained_by, checkpoint, result, list(paths.values()),
                                                          base=base)
            where = "the run that trained it" if is_training_run else f"a new run evaluate-{name}"
            typer.echo(f"MLflow: eval/* metrics logged to {where} ({run_id})")
