"""``reid evaluate``: score a trained checkpoint on the query/gallery split of a manifest.

Where each setting comes from, and why:

* the **model** (architecture and weights) and the **image geometry/normalisation** (``data.height``,
  ``width``, ``mean``, ``std``) come from the checkpoint: they are properties of the trained model,
  and feeding it other sizes would silently produce poor features;
* everything else (``data`` loading, ``eval`` protocol, ``tracking``, ``train.device``) comes from
  ``--params`` (+ ``--variant``, ``-o key=value``), so every model of the pipeline is evaluated under
  one protocol (dvc.yaml's ``evaluate`` stage depends on ``data`` and ``eval``). Without a params file
  the checkpoint's own configuration is used. An ``eval`` key that neither the params file nor an
  override sets is the checkpoint's (the protocol it was trained with), and a note says so when it
  differs from the default (:func:`resolve_config`).

Writes ``metrics.json`` (fractions in [0, 1], plus which dataset was evaluated: name, format, content
hash, manifest), ``cmc.csv``/``cmc.png`` and ``ranked_lists.png`` to ``--output`` (default
``<evaluate.output_dir>/<name>``, where ``<name>`` is unique per checkpoint), and, when
``tracking.enabled``, logs the metrics as ``eval/*`` into the MLflow run that trained the checkpoint.
An evaluation on other data (``--target``, or a manifest whose content hash differs from the
checkpoint's ``data_hash``) or a re-ranked one is a different measurement and is recorded under its
own names (:mod:`reid.evaluation.naming`), never over the model's own results (see :func:`log_evaluation_run`; relative
tracking paths are anchored like the trainer's: ``DVC_ROOT`` inside a DVC stage, else the working
directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from reid.commands._common import clean_errors, config_from_cli

if TYPE_CHECKING:
    from reid.config import Config
    from reid.data.manifest import Manifest
    from reid.evaluation.metrics import EvalResult
    from reid.evaluation.naming import EvaluationNames
    from reid.tracking import Tracker

# Data settings that belong to the trained model rather than to the evaluation.
MODEL_DATA_KEYS = ("height", "width", "mean", "std")


def model_name(checkpoint: Path, variant: str | None) -> str:
    """``pipeline/models/<name>/last.pt`` -> ``<name>``; a variant name wins when given."""
    if variant:
        return variant
    parent = checkpoint.resolve().parent.name
    return parent or checkpoint.stem


def resolve_config(
    checkpoint_config: "Config", params_config: "Config | None", overrides: list[str],
    explicit_eval: set[str] | None = None,
) -> tuple["Config", list[str]]:
    """The evaluation's configuration (see the module docstring) and notes on what was taken from where.

    ``params_config`` is params.yaml resolved with its variant and ``overrides`` (None without a
    params file, in which case ``overrides`` apply to the checkpoint's configuration).
    ``explicit_eval``: the ``eval`` keys the user set (in the params file, its variant, a target's
    options or ``-o``/``--flip``/``--rerank``); every other ``eval`` key is the checkpoint's, i.e. the
    protocol the model was trained and evaluated with (a model trained with ``-o eval.cross_camera=false``
    is not re-scored under the default ``true``). Each key taken from the checkpoint that differs
    from the params gets a note. None: the params' ``eval`` section is taken whole.
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
    for key, value in ckpt["eval"].items():
        if explicit_eval is None or key in explicit_eval or tree["eval"].get(key) == value:
            continue
        notes.append(f"eval.{key}: using the checkpoint's {json.dumps(value)} (the protocol it was trained with), not "
                     f"the default {json.dumps(tree['eval'].get(key))}; set -o eval.{key}=... to override")
        tree["eval"][key] = value
    return validate(tree, "params with the checkpoint's model"), notes


def explicit_eval_keys(params: Path, variant: str | None, overrides: list[str]) -> set[str]:
    """The ``eval`` keys set by the params file (with its variant) or by the ``eval.key=value`` overrides."""
    from reid.config import parse_override, read_params, resolve_tree

    section = resolve_tree(read_params(params), variant).get("eval") or {}
    keys = set(section) if isinstance(section, dict) else set()
    for text in overrides:
        path, _ = parse_override(text)
        if len(path) == 2 and path[0] == "eval":
            keys.add(path[1])
    return keys


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The MLflow run that trained the checkpoint (key ``mlflow_run_id``), read without loading weights."""
    from reid.checkpoint import read_entry

    run_id = read_entry(checkpoint, "mlflow_run_id")
    return str(run_id) if run_id else None


def log_evaluation_run(
    config: "Config", name: str, trained_by: str | None, checkpoint: Path, result: Any, artifacts: list[Path],
    base: Path | None = None, names: "EvaluationNames | None" = None, dataset: dict[str, str] | None = None,
    manifest: Any = None, extra_metrics: dict[str, float] | None = None,
) -> tuple[str | None, bool]:
    """Record the evaluation in MLflow; returns ``(run id, whether it is the training run)``.

    The metrics go into the run that trained the checkpoint, as ``eval/mAP``, ``eval/rank1``, ...,
    with the pictures and metrics.json under ``evaluation/``: one model is then one row in the MLflow
    UI, holding its parameters, its training curves and the evaluation of its best checkpoint, which is
    what a side-by-side comparison of runs needs. The ``eval/`` prefix keeps these apart from the
    trainer's per-epoch curve ``eval_epoch/mAP`` (:mod:`reid.evaluation.naming`). An evaluation on
    another dataset or a re-ranked one uses the names of ``names`` (``eval/<target>/``,
    ``eval_rerank/``; see :mod:`reid.evaluation.naming`), so it never overwrites the model's own
    ``eval/*``; ``dataset`` (name, format, hash, manifest) is recorded as tags under the same prefix.
    A cross-domain target's ``manifest`` is also recorded as an MLflow dataset input with context
    ``eval`` named after the target (:mod:`reid.tracking.datasets`), beside the training input.

    When that run is not in this store (the checkpoint came from elsewhere, or the store was reset)
    the evaluation gets its own run ``evaluate-<name>``, tagged ``variant=<name>`` and with the
    missing training run id in ``reid.trained_by_run``. Uses the trainer's
    :class:`reid.tracking.Tracker`, so the store and the anchoring of relative paths are the same as
    for training runs.
    """
    from reid.evaluation.naming import EvaluationNames
    from reid.tracking import Tracker

    names = names or EvaluationNames()
    tracker = Tracker(config.tracking, base=base, strict=True)
    tracker.check()
    flags = {f"{names.metric_prefix}flip": str(bool(config.eval.flip)).lower(),
             f"{names.metric_prefix}checkpoint": str(checkpoint.resolve()),
             **{f"{names.metric_prefix}{key}": value for key, value in (dataset or {}).items()}}
    if trained_by and tracker.attach(trained_by):
        _log_evaluation(tracker, result, artifacts, names, flags, manifest, extra_metrics)
        return trained_by, True
    from reid.tracking import run_tags

    tags = run_tags(config, variant=name, dataset=(dataset or {}).get("dataset"), base=base, command="evaluate",
                    extra={"reid.checkpoint": str(checkpoint.resolve()), "reid.trained_by_run": trained_by, **flags})
    run_name = f"evaluate-{name}" + (f"-{names.target}" if names.target else "") + ("-rerank" if names.rerank else "")
    with tracker.start(run_name=run_name, tags=tags):
        tracker.log_params({k: v for k, v in config.flat().items() if k.startswith(("eval.", "model."))})
        _log_evaluation(tracker, result, artifacts, names, flags, manifest, extra_metrics)
    return tracker.run_id, False


def _log_evaluation(tracker: "Tracker", result: "EvalResult", artifacts: list[Path], names: "EvaluationNames",
                    flags: dict[str, str], manifest: "Manifest | None", extra_metrics: dict[str, float] | None) -> None:
    """Metrics under the names' prefix (step 0; with the same-identity thresholds when there are some),
    protocol tags, the output files, and a cross-domain target's manifest as an ``eval`` dataset input
    (nothing for the model's own data)."""
    from reid.evaluation.runner import metrics_for_logging

    prefix = names.metric_prefix
    tracker.log_metrics({**metrics_for_logging(result, prefix), **(extra_metrics or {})}, step=0)
    tracker.set_tags({f"{prefix}ap_variant": result.ap_variant, f"{prefix}rerank": str(bool(result.rerank)).lower(),
                      **flags})
    for path in artifacts:
        tracker.log_artifact(path, names.artifact_path)
    if manifest is not None and names.target is not None:
        from reid.tracking.datasets import EVAL_CONTEXT

        tracker.log_dataset(manifest, EVAL_CONTEXT, name=names.target)


def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `reid train` (e.g. pipeline/models/baseline/last.pt).")],
    params: Annotated[
        Path, typer.Option("--params", "-p", help="params.yaml for the data, eval and tracking sections (the model comes from the checkpoint).")
    ] = Path("params.yaml"),
    variant: Annotated[Optional[str], typer.Option("--variant", help="Variant of params.yaml to merge; also names the output.")] = None,
    override: Annotated[
        Optional[list[str]], typer.Option("--override", "-o", help="key=value override, repeatable (e.g. -o eval.max_rank=20, "
                                          "-o eval.rerank_k1=20).")
    ] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest with the query/gallery split (default: data.manifest, "
                                                     "or the target's manifest with --target).")] = None,
    target: Annotated[
        Optional[str], typer.Option("--target", help="Evaluate on the cross-domain target NAME of evaluate.targets (its manifest and "
                                    "eval options); recorded as eval/NAME/* and <name>/targets/NAME, never as the model's own eval/*.")
    ] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Folder for metrics.json and pictures (default: <evaluate.output_dir>/"
                                                   "<name>, + /targets/<target> on other data, + /rerank when re-ranked).")] = None,
    rerank: Annotated[Optional[bool], typer.Option("--rerank/--no-rerank", help="k-reciprocal re-ranking (default: eval.rerank), tuned with "
                                                   "-o eval.rerank_k1=20 -o eval.rerank_k2=6 -o eval.rerank_lambda=0.3 "
                                                   "-o eval.rerank_max_memory_gb=8; recorded as its own measurement "
                                                   "(eval_rerank/*, <name>/rerank).")] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Add the features of mirrored images (default: eval.flip).")] = None,
    mlflow_run_id: Annotated[
        Optional[str], typer.Option("--mlflow-run-id", help="Log into this MLflow run (default: the run that trained the checkpoint).")
    ] = None,
    duplicates: Annotated[
        str, typer.Option("--duplicates", help="Byte-identical copies (a query's copy in the gallery under another camera, a test "
                          "image also in training): warn (score the split as published) or exclude (leave them out).")
    ] = "warn",
) -> None:
    """Evaluate a checkpoint with the Market-1501 protocol: mAP, CMC, mINP, CMC plot, ranked lists."""
    with clean_errors():
        from reid.config import ConfigError

        params_path: Path | None = params
        if not params.is_file():
            if params != Path("params.yaml") or variant:
                raise ConfigError(f"parameter file {params} does not exist")
            params_path = None  # no project params: evaluate with the checkpoint's own configuration
        from reid.config import read_evaluate
        from reid.targets import find_target

        # Pipeline keys of the params file: where evaluations go, and the cross-domain targets.
        settings = read_evaluate(params_path)
        output_base = settings.output_dir
        target_settings = None
        if target is not None:
            if params_path is None:
                raise ConfigError(f"--target {target} needs a params file declaring evaluate.targets (--params PATH)")
            target_settings = find_target(settings.targets, target, str(params_path))
        overrides = (target_settings.eval_overrides() if target_settings else []) + list(override or [])
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
        explicit = explicit_eval_keys(params_path, variant, overrides) if params_path is not None else None
        config, notes = resolve_config(ckpt_config, params_config, overrides, explicit)
        for note in notes:
            typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)

        # Relative tracking paths are anchored like `reid train` and `reid ui` anchor them.
        from reid.commands._common import project_base

        base = project_base(params_path) if params_path is not None else None
        if config.tracking.enabled:  # fail before a long evaluation, not after it
            from reid.tracking import Tracker

            Tracker(config.tracking, base=base).check()

        from reid.compare import MODELS_DIR
        from reid.checkpoint import read_entry
        from reid.evaluation.naming import EvaluationNames, cross_domain_target, output_name

        name = model_name(checkpoint, variant)
        if manifest is not None:
            manifest_path = manifest
        elif target_settings is not None:
            manifest_path = target_settings.manifest_for(config.data.manifest)
        else:
            manifest_path = config.data.manifest
        from reid.errors import DatasetError

        try:
            split = load_manifest(manifest_path, params_path, variant)
        except DatasetError:
            if target_settings is None or manifest is not None or Path(manifest_path).is_file():
                raise
            from reid.commands._common import command_line

            again = command_line("prepare", params_path, variant, None, None, "--target", target_settings.name)
            raise DatasetError(f"the manifest of target {target_settings.name!r} ({manifest_path}) does not exist: run "
                               f"`{again}` first (it reads {target_settings.key}.root and writes that manifest)") from None
        # Which data this is, and whether it is the data the checkpoint was trained on.
        trained_on = read_entry(checkpoint, "data_hash")
        data_hash = getattr(split, "content_hash", None)
        from reid.data.manifest import dataset_name as name_of

        dataset_name = name_of(split)
        target_name = cross_domain_target(target, trained_on, data_hash, dataset_name)
        if target_name and target is None:
            typer.secho(f"note: {manifest_path} is not the data {checkpoint} was trained on (content hash "
                        f"{str(data_hash)[:12]}, trained on {str(trained_on)[:12]}): recording it as target "
                        f"{target_name!r}, not as the model's own evaluation", fg=typer.colors.YELLOW, err=True)
        names = EvaluationNames(target_name, bool(config.eval.rerank))
        out_dir = output if output is not None else names.output_dir(output_base, output_name(checkpoint, variant, MODELS_DIR))
        dataset = {"dataset": dataset_name, "dataset_format": str(getattr(split, "format", "") or ""),
                   "dataset_hash": str(data_hash or ""), "manifest": str(manifest_path)}

        from reid.evaluation.duplicates import apply_duplicate_policy

        copies = apply_duplicate_policy(split, duplicates)  # see reid.evaluation.duplicates
        for line in copies.warnings:
            typer.secho(f"warning: {line}", fg=typer.colors.YELLOW, err=True)
        split = copies.split
        typer.echo(f"evaluating {checkpoint} ({config.model.backbone}) on {len(split.query)} query / "
                   f"{len(split.gallery)} gallery images, device {device}")
        # Same-identity thresholds (TAR@FAR) from the evaluation's own features: reid.evaluation.threshold.
        from reid.models.inference import model_identity
        from reid.evaluation.threshold import THRESHOLD_FILE, ThresholdCollector

        thresholds = ThresholdCollector(config.eval, getattr(split, "has_cameras", True), measured_on=dataset_name,
                                        model=model_identity(model, config.model.backbone))
        result = evaluate_model(model, split, config, device, on_features=thresholds)
        extra = {"flip": bool(config.eval.flip), "checkpoint": str(checkpoint), "model": name, "target": target_name,
                 **dataset, "trained_on_hash": str(trained_on or ""), "duplicates": copies.summary}
        if thresholds.result is not None:
            extra["threshold"] = thresholds.result.metrics_json()
        paths = write_outputs(result, out_dir, extra=extra, title=name if target_name is None else f"{name} on {target_name}")
        if thresholds.result is not None:
            paths["threshold"] = thresholds.result.save(Path(out_dir) / THRESHOLD_FILE)
            typer.echo(thresholds.result.summary())
        elif thresholds.error:
            typer.secho(f"note: no same-identity threshold: {thresholds.error}", fg=typer.colors.YELLOW, err=True)
        typer.echo(result.summary())
        if result.skipped_report():
            typer.secho(result.skipped_report(), fg=typer.colors.YELLOW, err=True)
        typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))

        if config.tracking.enabled:
            from reid.tracking.connection import bounded_http

            trained_by = mlflow_run_id or checkpoint_run_id(checkpoint)
            with bounded_http():  # a server that died since the check costs seconds, not minutes of retries
                run_id, is_training_run = log_evaluation_run(config, name, trained_by, checkpoint, result,
                                                              list(paths.values()), base=base, names=names,
                                                              dataset=dataset, manifest=split,
                                                              extra_metrics=thresholds.result.metrics(names.metric_prefix)
                                                              if thresholds.result is not None else None)
            where = "the run that trained it" if is_training_run else "a run of its own"
            typer.echo(f"MLflow: {names.metric_prefix}* metrics logged to {where} ({run_id})")
