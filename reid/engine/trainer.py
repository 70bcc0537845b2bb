"""The training loop of the strong baseline (and of every distillation variant), with MLflow tracking.

``train(config)`` trains ``config.train.epochs`` epochs, evaluates every ``train.eval_every`` epochs
and after the last, and leaves in ``train.output_dir``:

* ``last.pt``: the full state after the last completed epoch (model, objective heads, optimisers,
  schedule, sampler, RNG, MLflow run id), rewritten atomically every epoch. Its model is *the* model
  of the run, as in the published recipe (which reports the last epoch): the pipeline evaluates,
  exports and distils from it;
* ``best.pt``, only with a validation split (``eval.val_ids > 0``, :mod:`reid.data.validation`): the
  deployable model of the epoch with the best mAP on the held-out training identities. The evaluations
  on query / gallery during training are a monitoring curve (MLflow ``eval_epoch/*``); choosing an epoch
  on them would be choosing on the test set, so nothing here does;
* ``metrics.json``: the final evaluation (the last epoch's) plus, with a validation split,
  ``val_best_mAP``/``best_epoch``, and the run's cost
  (``train_time_s``, ``train_images``, ``train_img_per_s``, ``eval_time_s``, ``evaluations``: summed
  over every epoch, across resumes, so a recorded result says what it took); ``config.yaml``: the
  resolved configuration;
* ``metrics.jsonl``: every metric point the run logs (per ``train.log_every_steps`` steps, per epoch, per
  evaluation), whether or not MLflow is on (:mod:`reid.engine.metrics_log`);
* ``mlflow-record.jsonl`` (tracking on): every MLflow call of the run, written before it is sent. A
  tracking server that dies mid-run does not stop training (checkpoints are worth more than a live
  curve); what it missed is sent when it answers again, or later by ``reid log-run <output_dir>``
  (:mod:`reid.tracking.record`, docs/TEAM.md).

``train.epochs=0`` trains nothing: the model is built and initialised exactly as for training (same
seed, same pretrained weights), evaluated as "epoch 0" and tracked like any run, which gives the
untrained reference point to compare trained models with; ``last.pt`` then holds that model.

Before any work (no MLflow run, no file written) the run passes the checks of
:func:`reid.engine.preflight.preflight`, listed there in order: batch split, resume, starting weights
(an offline machine without the ImageNet file fails in seconds with the fixes), tracking store, data,
test images, validation split, training-data identity.

Speed: the step never waits for the GPU. Loss sums, the accuracy count and the non-finite watch are
accumulated *on the device*; the host reads them once per ``train.log_every_steps`` steps (and at
the end of an epoch), which is also when progress and MLflow see new numbers. The consequence is
that a NaN is noticed at the next such point, not at the exact step; the step where it first
happened is still recorded on the device and named in the error.

Non-finite loss: training stops with :class:`~reid.errors.NonFiniteLossError` naming the epoch, the
first bad step and the last finite loss values. ``last.pt`` is never written after a NaN, so the last
good checkpoint stays; the MLflow run ends FAILED.

Resume (``reid train --resume``, explicit by design: silently continuing whatever ``last.pt`` a
folder happens to hold is how runs get mixed up). Without ``--resume`` an existing ``last.pt`` is
overwritten by the new run (with a warning). With it:

* the checkpoint must exist, come from the same backbone and class count
  (:class:`~reid.errors.CheckpointError` otherwise) and the same training samples (a re-prepared
  manifest with another query/gallery is accepted; the error names the manifest it was trained on);
* the configuration must be the same except for keys that cannot change the trained weights of the
  epochs already done (:mod:`reid.engine.resume`, the one rule: ``train.epochs``, evaluation, tracking,
  paths, ``data.corrupt_images``, loader workers, ...); any other difference is a ``CheckpointError``
  listing every differing key;
* everything is restored and the run continues in the *same* MLflow run, which is set back to
  RUNNING (a SIGKILLed run could not mark itself) and ends FINISHED.

Exactness: checkpoints are written at the end of an epoch, and every epoch's randomness is derived
from ``(train.seed, epoch, rank)``: the global generators are reseeded at the start of each epoch
and the loader's sampler/augmentation streams come from its ``set_epoch``. So a run killed in the
middle of epoch ``e`` and resumed replays epoch ``e`` exactly, and on the CPU (or with
``train.deterministic``) reaches the same final weights as an uninterrupted run. Metrics of the
replayed steps are logged to MLflow a second time (same step numbers).

Distributed (``torchrun``): see :mod:`reid.engine.distributed`. Every rank extracts its shard of the
evaluation features (gathered for the metrics); rank 0 alone tracks and writes checkpoints; the loss
statistics are averaged over the ranks before they are shown.

How the code reads (docs/ARCHITECTURE.md): :func:`train` runs the checks (:mod:`reid.engine.preflight`),
builds the state (:mod:`reid.engine.state`), opens the MLflow run and calls :func:`fit`, the loop,
with its callbacks: :class:`~reid.engine.monitor.TrainMonitor` (progress, ``train*`` metrics),
:class:`~reid.engine.epoch_eval.EpochEvaluation` and :class:`~reid.engine.checkpointing.CheckpointSaver`.
Every metric goes to ``metrics.jsonl`` (always) and MLflow (:mod:`reid.engine.metrics_log`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from reid.atomic import write_text_atomic
from reid.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT
from reid.config import Config, dump_config
from reid.data.manifest import Manifest, dataset_name
from reid.engine import distributed as dist_utils
from reid.engine.callbacks import Callback, CallbackList
from reid.engine.checkpointing import CheckpointSaver
from reid.engine.device import epoch_seed, resolve_device, seed_everything
from reid.engine.epoch_eval import SELECTION_METRIC, EpochEvaluation
from reid.engine.metrics_log import METRICS_LOG, MetricsLog, MetricSinks
from reid.engine.monitor import TrainMonitor
from reid.engine.preflight import Prepared, preflight
from reid.engine.signals import sigterm_as_interrupt
from reid.engine.state import TrainState, build_state, restore_state, set_frozen
from reid.engine.step import train_step
from reid.errors import ReidError
from reid.tracking.mlflow_tracker import run_tags
from reid.tracking.record import RECORD_FILE

METRICS = "metrics.json"
CONFIG = "config.yaml"


@dataclass(frozen=True)
class TrainResult:
    """What a finished training produced."""

    output_dir: Path
    last_checkpoint: Path              # the run's model (the last epoch)
    best_checkpoint: Path | None       # only with a validation split (eval.val_ids)
    metrics_path: Path
    config_path: Path
    metrics: dict[str, Any]            # the final evaluation (after the last epoch)
    best_metric: float | None          # best validation mAP (None without eval.val_ids)
    best_epoch: int | None             # 1-based epoch of best.pt (None without eval.val_ids)
    epochs: int                        # completed epochs
    global_step: int
    mlflow_run_id: str | None
    resumed_from_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def fit(state: TrainState, callbacks: Sequence[Callback]) -> None:
    """Train from ``state.epoch`` to ``train.epochs``, evaluating every ``train.eval_every`` epochs and after the last.

    After each epoch: its evaluation when due, the scheduler step (the reference steps it at the start
    of the next epoch, which is the same), then ``on_epoch_saved`` (checkpoint time). A run with
    nothing left to train (``train.epochs=0``, or a finished run resumed) is evaluated once as it is.
    """
    hooks = CallbackList(callbacks)
    train = state.config.train
    try:
        hooks.on_train_start(state)
        for epoch in range(state.epoch, train.epochs):
            train_epoch(state, hooks, epoch)
            completed = state.epoch = epoch + 1
            hooks.on_epoch_end(state, completed)
            if completed % train.eval_every == 0 or completed == train.epochs:
                _evaluate(state, hooks, completed)
            state.scheduler.step()
            hooks.on_epoch_saved(state, completed)
            dist_utils.barrier(state.ctx)
        if not state.summary.last_metrics:  # nothing was trained, or a finished run without metrics
            hooks.evaluate(state, state.epoch)
            if state.saved_epoch is None:  # train.epochs=0: last.pt holds the initial model
                hooks.on_epoch_saved(state, state.epoch)
        hooks.on_train_end(state)
    except KeyboardInterrupt as exc:
        hooks.on_interrupt(state, exc)
        raise


def train_epoch(state: TrainState, hooks: Callback, epoch: int) -> None:
    """One epoch of steps; its randomness comes from ``(train.seed, epoch, rank)`` alone, so a resumed
    epoch replays exactly."""
    set_frozen(state, epoch < state.config.model.freeze_backbone_epochs)
    seed_everything(epoch_seed(state.config.train.seed, epoch, state.ctx.rank))
    state.loader.set_epoch(epoch)
    state.objective.train()
    steps = epoch_steps(state)
    hooks.on_epoch_start(state, epoch, steps)
    batches = iter(state.loader)
    for step in range(steps):
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        output = train_step(state, images, labels)
        state.global_step += 1
        hooks.on_step_end(state, output, step)


def epoch_steps(state: TrainState) -> int:
    """Steps of one epoch: the loader's length, capped by ``train.max_steps_per_epoch``."""
    config = state.config
    steps = len(state.loader)
    if config.train.max_steps_per_epoch is not None:
        steps = min(steps, config.train.max_steps_per_epoch)
    if steps == 0:
        raise ReidError("the training loader yields no batch; are there enough identities with "
                        f"{config.data.instances_per_id} images for P={config.data.ids_per_batch}?")
    return steps


def _evaluate(state: TrainState, hooks: Callback, completed: int) -> None:
    """A failed (or interrupted) evaluation still leaves the epoch's checkpoint, then raises."""
    try:
        hooks.evaluate(state, completed)
    except (Exception, KeyboardInterrupt) as exc:
        state.scheduler.step()
        hooks.on_evaluation_failed(state, completed, exc)
        raise


# ------------------------------------------------------------------------------------------------
# A run: checks, state, MLflow run, loop, result
# ------------------------------------------------------------------------------------------------
def train(config: Config, manifest: Manifest | None = None, resume: bool = False, *, variant: str | None = None,
          run_name: str | None = None, tracking_base: Path | None = None, progress: bool = True,
          log: Callable[[str], None] | None = None, resume_command: str | None = None,
          tags: Mapping[str, Any] | None = None) -> TrainResult:
    """Train the model ``config`` describes; see the module docstring for outputs, resume and failures.

    ``manifest`` defaults to ``load_manifest(config.data.manifest)``. ``variant`` names the params
    variant for the MLflow ``variant`` tag (``baseline`` when None). ``tracking_base`` anchors relative
    tracking paths when ``DVC_ROOT`` is not set (default: the working directory). ``log`` receives
    the informational lines (default: stderr); ``progress`` switches the per-epoch bar.
    ``resume_command`` is the shell command that continues this run, named when an evaluation fails
    (``reid train`` passes it); ``tags`` are MLflow tags that win over the defaults (``reid train``
    sets ``variant`` for a run whose overrides make it another model).
    """
    device = resolve_device(config.train.device, int(os.environ.get("LOCAL_RANK") or 0))
    ctx = dist_utils.init_from_env(device)
    emit = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def say(message: str) -> None:
        if ctx.is_main:
            emit(message)

    try:
        prepared = preflight(config, manifest, resume, ctx, tracking_base, say)
        return _run(config, prepared, ctx, device, say, variant=variant, run_name=run_name, progress=progress,
                    resume_command=resume_command, tags=dict(tags or {}), tracking_base=tracking_base)
    except RuntimeError as exc:
        lost = dist_utils.peer_lost(exc, ctx)
        if lost is None:
            raise
        raise lost from exc
    finally:
        dist_utils.cleanup(ctx)


def _run(config: Config, prepared: Prepared, ctx: dist_utils.DistContext, device: Any, say: Callable[[str], None], *,
         variant: str | None, run_name: str | None, progress: bool, resume_command: str | None,
         tags: dict[str, Any], tracking_base: Path | None) -> TrainResult:
    from reid.data.loaders import build_train_loader

    out, manifest, tracker, resumed = Path(config.train.output_dir), prepared.manifest, prepared.tracker, prepared.checkpoint
    state = build_state(config, prepared.training_data.num_classes, device, ctx, say=say, pretrained=resumed is None,
                        make_loader=lambda: build_train_loader(manifest, config, device, rank=ctx.rank,
                                                               world_size=ctx.world_size))
    if resumed is not None:
        restore_state(state, resumed, out / LAST_CHECKPOINT)
        say(f"resuming from {out / LAST_CHECKPOINT}: {state.epoch} epoch(s) done, global step {state.global_step}")
    start_epoch = state.epoch
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(config, out / CONFIG)
    run_id = resumed.get("mlflow_run_id") if resumed is not None else None
    tags = run_tags(config, variant=variant, dataset=dataset_name(manifest), base=tracking_base, extra={
        "dataset_hash": prepared.training_data.content_hash, "num_classes": state.num_classes,
        "num_train_images": len(manifest.train), "world_size": ctx.world_size, "device": str(device),
        "amp": state.amp.name, **tags})
    # Everything sent to MLflow is first written here, so a tracking server lost mid-run loses
    # nothing: `reid log-run <output_dir>` sends what it missed (reid.tracking.record).
    tracker.keep_record(out / RECORD_FILE, new=resumed is None)
    sinks = MetricSinks(([MetricsLog(out / METRICS_LOG, new=resumed is None)] if ctx.is_main else []) + [tracker])

    def identity() -> dict[str, Any]:  # kept from the resumed checkpoint when tracking was switched off
        return {"mlflow_run_id": tracker.run_id or run_id, **prepared.training_data.entries()}

    callbacks = [
        TrainMonitor(sinks, say, num_images=len(manifest.train), last_path=out / LAST_CHECKPOINT, progress=progress),
        EpochEvaluation(manifest, prepared.val_manifest, sinks, say, out / BEST_CHECKPOINT, identity),
        CheckpointSaver(out / LAST_CHECKPOINT, identity, say, resume_command),
    ]
    with sigterm_as_interrupt(), tracker.start(run_id=run_id, run_name=run_name or config.tracking.run_name
                                               or variant or out.name, tags=tags):
        if tracker.resumed:
            tracker.set_tags({"reid.resumed_at_epoch": start_epoch})
        tracker.log_params(config.active_flat())  # inactive feature keys as "-" (Config.active_flat)
        tracker.log_dataset(manifest, "train")  # the runs table's Dataset column
        tracker.log_artifact(out / CONFIG)
        skipped = prepared.image_check.metrics() if prepared.image_check is not None else {}
        if skipped:  # data.corrupt_images=skip: what was left out, per split
            sinks.log_metrics({f"corrupt_images_skipped/{split}": float(n)
                               for split, n in skipped["num_corrupt_images_skipped"].items()}, step=0)
        fit(state, callbacks)
        result = _finish(state, out, prepared.val_manifest is not None, tracker.run_id,
                         start_epoch if resumed is not None else None, skipped)
        tracker.log_artifact(result.metrics_path)
        # The run's model; best.pt only when this run chose one (a file left by an older run is not it).
        for path in (result.last_checkpoint, *([out / BEST_CHECKPOINT] if prepared.val_manifest is not None else [])):
            if path.is_file():
                tracker.log_artifact(path, "checkpoints")
        if tracker.failures and not tracker.offline:
            say(f"warning: {tracker.failures} MLflow logging call(s) failed; see the warnings above")
    if tracker.offline:
        say(f"warning: MLflow server {tracker.uri} stopped answering during the run; {tracker.unsent} "
            f"logging call(s) are only in {out / RECORD_FILE}. Once the server is back, log them with: "
            f"reid log-run {out}")
    dist_utils.barrier(ctx)
    return result


def _finish(state: TrainState, out: Path, has_val: bool, run_id: str | None, resumed_from: int | None,
            skipped: Mapping[str, Any]) -> TrainResult:
    """``metrics.json``: the final evaluation, the validation choice, the run's cost and, under
    ``data.corrupt_images=skip``, the images left out (rank 0 writes)."""
    summary, train_config = state.summary, state.config.train
    metrics, timing = dict(summary.last_metrics), dict(summary.timing)
    timing["train_img_per_s"] = timing["train_images"] / timing["train_time_s"] if timing["train_time_s"] > 0 else None
    selection = ({f"val_best_{SELECTION_METRIC}": summary.best_metric, "best_epoch": summary.best_epoch}
                 if has_val else {})
    if state.ctx.is_main:
        _write_json(out / METRICS, {**metrics, **selection, "epochs": train_config.epochs,
                                    "global_step": state.global_step, **timing, **skipped})
    best = out / BEST_CHECKPOINT
    return TrainResult(
        output_dir=out, last_checkpoint=out / LAST_CHECKPOINT, best_checkpoint=best if has_val and best.is_file() else None,
        metrics_path=out / METRICS, config_path=out / CONFIG, metrics=metrics, best_metric=summary.best_metric,
        best_epoch=summary.best_epoch, epochs=state.epoch, global_step=state.global_step, mlflow_run_id=run_id,
        resumed_from_epoch=resumed_from, history=list(summary.history))


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically: a reader (DVC, a test) never sees a half-written metrics file."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
    write_text_atomic(path, json.dumps(clean, indent=2) + "\n")
