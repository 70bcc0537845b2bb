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
* ``mlflow-record.jsonl`` (tracking on): every MLflow call of the run, written before it is sent. A
  tracking server that dies mid-run does not stop training (checkpoints are worth more than a live
  curve); what it missed is sent when it answers again, or later by ``reid log-run <output_dir>``
  (:mod:`reid.tracking.record`, docs/TEAM.md).

``train.epochs=0`` trains nothing: the model is built and initialised exactly as for training (same
seed, same pretrained weights), evaluated as "epoch 0" and tracked like any run, which gives the
untrained reference point to compare trained models with; ``last.pt`` then holds that model.

Before any work (no MLflow run, no file written) a new run checks that its starting weights are
there (:func:`reid.models.pretrained.require_pretrained`): an offline machine without the ImageNet
file in torch hub's cache fails in seconds with the fixes, not after the dataset was read.

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
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from reid.atomic import write_text_atomic
from reid.config import Config, dump_config
from reid.engine import distributed as dist_utils
from reid.engine.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, read_entry, save_checkpoint
from reid.engine.device import (
    AmpPolicy,
    amp_policy,
    configure_backends,
    epoch_seed,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from reid.engine.optim import (
    build_center_optimizer,
    build_optimizer,
    build_scheduler,
    exclude,
    rescale_center_gradients,
    schedule_warnings,
    sync_lr,
)
from reid.engine.progress import EpochProgress
from reid.engine.resume import (  # noqa: F401 - the resume rule, re-exported for older imports
    RESUMABLE_CHANGES,
    TrainingData,
    check_resumable,
    check_same_data,
    config_differences,
)
from reid.errors import CheckpointError, NonFiniteLossError, ReidError
from reid.evaluation.naming import EPOCH_EVAL_PREFIX, VAL_PREFIX
from reid.tracking.mlflow_tracker import Tracker, run_tags, sigterm_as_interrupt
from reid.tracking.record import RECORD_FILE

LAST = LAST_CHECKPOINT
BEST = BEST_CHECKPOINT
METRICS = "metrics.json"
CONFIG = "config.yaml"
SELECTION_METRIC = "mAP"


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


def _load(module: nn.Module, weights: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the {what} weights do not fit this model: {exc}") from None


# ------------------------------------------------------------------------------------------------
# Step statistics kept on the device
# ------------------------------------------------------------------------------------------------
class StepStats:
    """Device-side sums of the loss terms and accuracy, plus a watch for the first non-finite loss.

    ``add`` launches a handful of tiny kernels and never synchronises; ``flush`` copies everything
    to the host in one transfer (and averages over the ranks of a distributed run).
    """

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.names = names
        n = len(names) + 1  # total first
        self.device = device
        self.sums = torch.zeros(n, device=device)
        self.correct = torch.zeros((), device=device)
        self.images = 0
        self.steps = 0
        self.counter = torch.zeros((), device=device, dtype=torch.int64)  # global step on the device
        self.first_bad = torch.full((), -1, device=device, dtype=torch.int64)
        self.bad_values = torch.zeros(n, device=device)
        self.last_finite = torch.full((n,), float("nan"), device=device)
        self.last_finite_step = torch.full((), -1, device=device, dtype=torch.int64)
        self.has_acc = False

    @property
    def labels(self) -> list[str]:
        """``loss`` (the sum) and ``loss_<term>`` for each term, as logged (``train/loss_id``...)."""
        return ["loss", *(n if n.startswith("loss") else f"loss_{n}" for n in self.names)]

    def set_global_step(self, step: int) -> None:
        self.counter.fill_(step)

    def add(self, total: torch.Tensor, losses: Mapping[str, torch.Tensor], logits: torch.Tensor | None,
            labels: torch.Tensor) -> None:
        self.counter += 1
        vec = torch.stack([total.detach().float()] + [losses[n].detach().float().reshape(()) for n in self.names])
        finite = torch.isfinite(vec).all()
        clean = self.first_bad < 0
        newly_bad = clean & ~finite
        self.first_bad = torch.where(newly_bad, self.counter, self.first_bad)
        self.bad_values = torch.where(newly_bad, vec, self.bad_values)
        keep = clean & finite
        self.last_finite = torch.where(keep, vec, self.last_finite)
        self.last_finite_step = torch.where(keep, self.counter, self.last_finite_step)
        self.sums += vec
        if logits is not None:
            self.has_acc = True
            self.correct += (logits.detach().argmax(dim=1) == labels).sum()
        self.images += int(labels.shape[0])
        self.steps += 1

    def flush(self, world_size: int) -> dict[str, Any]:
        """Host copy of the interval's means; resets the sums (the non-finite watch is kept)."""
        packed = torch.cat([self.sums, self.correct.reshape(1).float(), (self.first_bad >= 0).reshape(1).float()])
        dist_utils.all_reduce_(packed)
        values = packed.tolist()
        steps = max(self.steps, 1)
        out = {
            "losses": {name: values[i] / (steps * world_size) for i, name in enumerate(self.labels)},
            "acc": values[-2] / max(self.images * world_size, 1) if self.has_acc else None,
            "images": self.images * world_size,
            "steps": self.steps,
            "nonfinite": values[-1] > 0,
        }
        self.sums.zero_()
        self.correct.zero_()
        self.images = 0
        self.steps = 0
        return out

    def nonfinite_report(self) -> dict[str, Any]:
        names = self.labels
        return {
            "first_bad": int(self.first_bad.item()),
            "bad": dict(zip(names, self.bad_values.tolist())),
            "last_finite": dict(zip(names, self.last_finite.tolist())),
            "last_finite_step": int(self.last_finite_step.item()),
        }


def _fmt_losses(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in values.items())


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------
class _Trainer:
    """State of one training run; ``train()`` below is its only entry point."""

    def __init__(self, config: Config, manifest: Any, resume: bool, variant: str | None, run_name: str | None,
                 tracking_base: Path | None, progress: bool, log: Callable[[str], None] | None,
                 resume_command: str | None = None, tags: Mapping[str, Any] | None = None) -> None:
        self.resume_command = resume_command
        self.extra_tags = dict(tags or {})
        self.config = config
        self.manifest_arg = manifest
        self.resume = resume
        self.variant = variant
        self.run_name = run_name
        self.tracking_base = tracking_base
        self.show_progress = progress
        self._log = log
        self.out = Path(config.train.output_dir)
        self.last_path = self.out / LAST
        self.best_path = self.out / BEST
        self.metrics_path = self.out / METRICS
        self.config_path = self.out / CONFIG
        self.val_manifest: Any = None  # the eval.val_ids split, set in _run

    def say(self, message: str) -> None:
        if self.ctx.is_main:
            (self._log or (lambda m: print(m, file=sys.stderr, flush=True)))(message)

    # -- setup -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.config
        local_rank = int(os.environ.get("LOCAL_RANK") or 0)
        self.device = resolve_device(cfg.train.device, local_rank)
        self.ctx = dist_utils.init_from_env(self.device)
        try:
            return self._run()
        finally:
            dist_utils.cleanup(self.ctx)

    def _run(self) -> TrainResult:
        cfg, ctx = self.config, self.ctx
        dist_utils.check_batch_split(cfg.data.ids_per_batch, ctx)
        state = self._resume_state()
        if state is None:
            from reid.models.pretrained import require_pretrained

            # Offline without the weights: fail now, before an MLflow run or any file exists.
            require_pretrained(cfg.model)
        tracker = Tracker(cfg.tracking, rank=ctx.rank, base=self.tracking_base)
        tracker.check()  # an unusable tracking store fails here, before any data is read
        if state is None and self.last_path.is_file() and ctx.is_main:
            # The run whose last.pt this new run replaces will never be resumed: close it if it was
            # left RUNNING by a process that could not close it (SIGKILL).
            abandoned = read_entry(self.last_path, "mlflow_run_id")
            if tracker.close_abandoned(abandoned):
                self.say(f"MLflow run {abandoned} of the replaced {self.last_path} was left RUNNING; marked KILLED")

        manifest = self.manifest_arg
        if manifest is None:
            from reid.data.manifest import load_manifest

            manifest = load_manifest(cfg.data.manifest)
        self.manifest = manifest
        if state is None or int(state.get("epoch", 0)) < cfg.train.epochs:
            from reid.data.checks import check_evaluable

            # Before the first step: an evaluation that cannot work must not cost a training run.
            # Data without camera ids (manifest.has_cameras false) is scored without the same-camera rule.
            check_evaluable(manifest, cfg.eval.cross_camera and getattr(manifest, "has_cameras", True))
            self._check_test_images(manifest)
        self.val_manifest = None
        if cfg.eval.val_ids > 0:
            from reid.data.validation import hold_out_identities

            manifest, self.val_manifest = hold_out_identities(manifest, cfg.eval.val_ids, cfg.train.seed)
            self.manifest = manifest
            self.say(f"validation split: {cfg.eval.val_ids} training identities held out "
                     f"({len(self.val_manifest.query)} query / {len(self.val_manifest.gallery)} gallery images); "
                     f"{BEST} is chosen on them")
        self.training_data = TrainingData.of(manifest, cfg.data.manifest)
        if state is not None:
            check_same_data(state, self.training_data, self.last_path)
        num_classes, data_hash = self.training_data.num_classes, self.training_data.content_hash
        self.num_classes, self.data_hash = num_classes, data_hash

        self._build(state)
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.config_path)

        tags = run_tags(cfg, variant=self.variant, dataset=_dataset_name(manifest, cfg), base=self.tracking_base,
                        extra={"dataset_hash": data_hash, "num_classes": num_classes,
                               "num_train_images": len(manifest.train), "world_size": ctx.world_size,
                               "device": str(self.device), "amp": self.amp.name, **self.extra_tags})
        resume_run = state.get("mlflow_run_id") if state is not None else None
        run_name = self.run_name or cfg.tracking.run_name or self.variant or self.out.name
        # Everything sent to MLflow is first written here, so a tracking server lost mid-run loses
        # nothing: `reid log-run <output_dir>` sends what it missed (reid.tracking.record).
        tracker.keep_record(self.out / RECORD_FILE, new=state is None)
        with sigterm_as_interrupt(), tracker.start(run_id=resume_run, run_name=run_name, tags=tags):
            self.tracker = tracker
            if tracker.resumed:
                tracker.set_tags({"reid.resumed_at_epoch": self.start_epoch})
            tracker.log_params(cfg.active_flat())  # inactive feature keys as "-" (Config.active_flat)
            tracker.log_dataset(manifest, "train")  # the runs table's Dataset column
            tracker.log_artifact(self.config_path)
            if getattr(self, "image_check", None) is not None and self.image_check.total:
                tracker.log_metrics({f"corrupt_images_skipped/{split}": float(n) for split, n in
                                     self.image_check.metrics()["num_corrupt_images_skipped"].items()}, step=0)
            result = self._loop()
            tracker.log_artifact(self.metrics_path)
            # The run's model; best.pt only when this run chose one (a file left by an older run is not it).
            for path in (self.last_path, *([self.best_path] if self.val_manifest is not None else [])):
                if path.is_file():
                    tracker.log_artifact(path, "checkpoints")
            if tracker.failures and not tracker.offline:
                self.say(f"warning: {tracker.failures} MLflow logging call(s) failed; see the warnings above")
        if tracker.offline:
            self.say(f"warning: MLflow server {tracker.uri} stopped answering during the run; {tracker.unsent} "
                     f"logging call(s) are only in {self.out / RECORD_FILE}. Once the server is back, log them with: "
                     f"reid log-run {self.out}")
        dist_utils.barrier(ctx)
        return result

    def _check_test_images(self, manifest: Any) -> None:
        """Decode every image of every split before the first step (reid.data.images.check_split_images):
        all corrupt ones fail now in one message, not one per run mid-epoch; under ``skip`` each is named
        once here and listed in metrics.json (which MLflow logs)."""
        from reid.data.images import check_split_images

        self.image_check = check_split_images(manifest, self.config.data.corrupt_images)
        for warning in self.image_check.warnings():
            self.say(f"warning: {warning}")

    def _resume_state(self) -> dict[str, Any] | None:
        if not self.resume:
            if self.last_path.is_file() and self.ctx.is_main:
                warnings.warn(f"{self.last_path} exists and will be overwritten by this new run; "
                              "pass --resume to continue it instead", stacklevel=3)
            return None
        if not self.last_path.is_file():
            raise CheckpointError(f"nothing to resume: {self.last_path} does not exist; train without --resume "
                                  "(or set train.output_dir to the folder of the run to continue)")
        state = load_checkpoint(self.last_path, map_location="cpu")
        check_resumable(state, self.config, self.last_path)
        return state

    def _build(self, state: dict[str, Any] | None) -> None:
        from reid.data.loaders import build_train_loader
        from reid.engine.objective import build_objective
        from reid.models.reid_model import build_model

        cfg, ctx, device = self.config, self.ctx, self.device
        seed_everything(cfg.train.seed)
        configure_backends(device, cfg.train.deterministic)
        self.amp: AmpPolicy = amp_policy(cfg.train.amp, device)

        model = build_model(cfg, self.num_classes)
        if state is None and cfg.model.pretrained != "none":
            from reid.models.pretrained import load_pretrained

            report = load_pretrained(model, cfg.model)
            if report is not None:
                self.say(f"pretrained weights: {report.summary()}")
        self.channels_last = device.type == "cuda" and cfg.model.channels_last
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        objective = build_objective(cfg, model, self.num_classes, device).to(device)
        if ctx.distributed and cfg.train.sync_bn:
            objective = dist_utils.convert_sync_batchnorm(objective, device)
        self.objective = objective
        if ctx.distributed:
            _globalise_batch_losses(objective)

        centers = list(objective.center_parameters())
        self.optimizer = build_optimizer(cfg.optim, exclude(objective.trainable_parameters(), centers), device)
        self.center_optimizer = build_center_optimizer(cfg.loss, centers)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.epochs)
        self.scaler = self.amp.grad_scaler(device)
        self.loader = build_train_loader(self.manifest, cfg, device, rank=ctx.rank, world_size=ctx.world_size)

        self.start_epoch, self.global_step = 0, 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.last_metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        # Seconds and images of the training steps and evaluations, carried across resumes (checkpoint "timing").
        self.timing: dict[str, float] = {"train_time_s": 0.0, "train_images": 0, "eval_time_s": 0.0, "evaluations": 0}
        self.checkpoint_run_id: str | None = state.get("mlflow_run_id") if state is not None else None
        self._saved_epoch: int | None = None  # epochs in the last.pt this run may fall back to
        if state is not None:
            self._restore(state)
            self._saved_epoch = self.start_epoch
        self._frozen: bool | None = None
        self.step_module: nn.Module = objective

    def _restore(self, state: dict[str, Any]) -> None:
        path = self.last_path
        _load(self.model, state["model"], "model", path)
        extra = state.get("objective") or {}
        if extra:
            try:
                self.objective.load_extra_state_dict(extra)
            except (RuntimeError, KeyError) as exc:
                raise CheckpointError(f"{path}: the objective state does not fit ({exc})") from None
        try:
            self.optimizer.load_state_dict(state["optimizers"]["main"])
            if self.center_optimizer is not None and state["optimizers"].get("center"):
                self.center_optimizer.load_state_dict(state["optimizers"]["center"])
            self.scheduler.load_state_dict(state["schedulers"]["main"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: the optimiser/scheduler state does not fit this run ({exc})") from None
        sync_lr(self.scheduler)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        samplers = state.get("sampler_ranks") or [state.get("sampler")]
        rngs = state.get("rng_ranks") or [state.get("rng")]
        rank = self.ctx.rank if len(samplers) == self.ctx.world_size else 0
        if samplers[rank] is not None:
            self.loader.load_state_dict(samplers[rank])
        if rngs[min(rank, len(rngs) - 1)] is not None:
            set_rng_state(rngs[min(rank, len(rngs) - 1)])
        self.start_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = state.get("best_metric")
        self.best_epoch = state.get("best_epoch")
        self.last_metrics = dict(state.get("metrics") or {})
        self.history = list(state.get("history") or [])
        self.timing.update(state.get("timing") or {})
        self.say(f"resuming from {path}: {self.start_epoch} epoch(s) done, global step {self.global_step}")

    # -- the loop --------------------------------------------------------------------------------
    def _set_frozen(self, frozen: bool) -> None:
        """Freeze/unfreeze the backbone and (re)wrap DDP, which only reduces what required grad when built."""
        if frozen == self._frozen:
            return
        if self.config.model.freeze_backbone_epochs > 0 or self._frozen is not None:
            self.model.freeze_backbone(frozen)
        self._frozen = frozen
        module = dist_utils.wrap_ddp(self.objective, self.ctx, self.device, self.config.train.sync_bn)
        if self.config.train.compile:
            module = torch.compile(module)
        self.step_module = module

    def _loop(self) -> TrainResult:
        cfg = self.config
        epochs = cfg.train.epochs
        resumed_from = self.start_epoch if self.resume else None
        if epochs == 0:
            self.say(f"train.epochs=0: evaluating the initial {cfg.model.backbone} (seed {cfg.train.seed}, "
                     f"model.pretrained={cfg.model.pretrained}) as a reference point; nothing is trained")
        elif self.start_epoch >= epochs:
            self.say(f"nothing to train: {self.start_epoch} of {epochs} epoch(s) already done")
        else:
            self.say(
                f"training {cfg.model.backbone} on {len(self.manifest.train)} images of {self.num_classes} ids | "
                f"device {self.device}{f' x{self.ctx.world_size}' if self.ctx.distributed else ''}, amp {self.amp.name}, "
                f"batch {cfg.data.batch_size}, epochs {self.start_epoch + 1}..{epochs} | output {self.out}"
            )
            for warning in schedule_warnings(cfg.optim, epochs):
                self.say(f"warning: {warning}")
        for epoch in range(self.start_epoch, epochs):
            self._train_epoch(epoch)
            completed = epoch + 1
            if completed % cfg.train.eval_every == 0 or completed == epochs:
                try:
                    self._evaluate(completed)
                except (Exception, KeyboardInterrupt) as exc:
                    self._save_after_failed_evaluation(completed, exc)
                    raise
            self.scheduler.step()
            self._save_last(completed)
            dist_utils.barrier(self.ctx)
        if not self.last_metrics:  # train.epochs=0, or a resume of a finished run without metrics (every rank)
            self._evaluate(max(self.start_epoch, epochs))
            if self._saved_epoch is None:  # train.epochs=0: last.pt holds the initial model
                self._save_last(self.start_epoch)
        return self._finish(resumed_from)

    def _save_after_failed_evaluation(self, completed: int, exc: BaseException) -> None:
        """Keep the epoch's trained weights in last.pt when its evaluation fails (or is interrupted).

        The checkpoint is exactly the one the loop would have written, so ``--resume`` continues from
        it (a resume of a finished run without metrics evaluates again) and ``reid evaluate last.pt``
        scores it. The error's message then says where the weights are.
        """
        self.scheduler.step()
        self._save_last(completed)
        again = self.resume_command or "reid train --resume (with the same parameters)"
        note = (f"The weights after epoch {completed} are saved in {self.last_path}: evaluate them with "
                f"`{shlex.join(['reid', 'evaluate', str(self.last_path)])}` or, once the cause is fixed, "
                f"continue with `{again}`")
        if isinstance(exc, ReidError) and exc.args:
            exc.args = (f"{exc.args[0]}\n{note}", *exc.args[1:])
        else:
            self.say(f"evaluation after epoch {completed} failed; {note}")

    def _train_epoch(self, epoch: int) -> None:
        cfg, device = self.config, self.device
        self._set_frozen(epoch < cfg.model.freeze_backbone_epochs)
        seed_everything(epoch_seed(cfg.train.seed, epoch, self.ctx.rank))
        self.loader.set_epoch(epoch)
        self.objective.train()
        steps = len(self.loader)
        if cfg.train.max_steps_per_epoch is not None:
            steps = min(steps, cfg.train.max_steps_per_epoch)
        if steps == 0:
            raise ReidError("the training loader yields no batch; are there enough identities with "
                            f"{cfg.data.instances_per_id} images for P={cfg.data.ids_per_batch}?")
        lr = self.optimizer.param_groups[0]["lr"]
        self._epoch_first_step = self.global_step
        bar = EpochProgress(epoch + 1, cfg.train.epochs, steps, enabled=self.show_progress and self.ctx.is_main,
                            log_every=cfg.train.log_every_steps)
        stats: StepStats | None = None
        epoch_sums: dict[str, float] = {}
        epoch_correct = 0.0
        epoch_images = 0
        epoch_steps = 0
        shown: dict[str, float] = {}
        start = tick = time.perf_counter()
        log_every = cfg.train.log_every_steps

        iterator = iter(self.loader)
        for step in range(steps):
            try:
                images, labels = next(iterator)
            except StopIteration:
                break
            if self.channels_last and not images.is_contiguous(memory_format=torch.channels_last):
                images = images.contiguous(memory_format=torch.channels_last)
            total, losses, outputs = self._step(images, labels)
            if stats is None:
                stats = StepStats(list(losses), device)
                stats.set_global_step(self.global_step)
            stats.add(total, losses, outputs.get("logits") if isinstance(outputs, Mapping) else None, labels)
            self.global_step += 1
            last = step == steps - 1
            if self.global_step % log_every == 0 or last:
                flushed = stats.flush(self.ctx.world_size)
                if flushed["nonfinite"]:
                    self._raise_nonfinite(epoch, steps, stats)
                now = time.perf_counter()
                ips = flushed["images"] / max(now - tick, 1e-9)
                tick = now
                n = flushed["steps"]
                for name, value in flushed["losses"].items():
                    epoch_sums[name] = epoch_sums.get(name, 0.0) + value * n
                epoch_steps += n
                epoch_images += flushed["images"]
                step_metrics = {f"train_step/{k}": v for k, v in flushed["losses"].items()}
                shown = {"loss": flushed["losses"]["loss"]}
                if flushed["acc"] is not None:
                    epoch_correct += flushed["acc"] * flushed["images"]
                    step_metrics["train_step/acc"] = flushed["acc"]
                    shown["acc"] = flushed["acc"]
                shown.update({"lr": lr, "img/s": ips})
                step_metrics.update({"train_step/lr": lr, "train_step/img_per_s": ips})
                self.tracker.log_metrics(step_metrics, step=self.global_step)
            bar.update(step + 1, shown)

        elapsed = time.perf_counter() - start
        self.timing["train_time_s"] += elapsed
        self.timing["train_images"] += epoch_images
        epoch_metrics = {f"train/{k}": v / max(epoch_steps, 1) for k, v in epoch_sums.items()}
        if stats is not None and stats.has_acc:
            epoch_metrics["train/acc"] = epoch_correct / max(epoch_images, 1)
        epoch_metrics.update({"train/lr": lr, "train/img_per_s": epoch_images / max(elapsed, 1e-9),
                              "train/epoch_time_s": elapsed})
        summary = {"loss": epoch_metrics.get("train/loss", float("nan"))}
        if "train/acc" in epoch_metrics:
            summary["acc"] = epoch_metrics["train/acc"]
        summary.update({"lr": lr, "img/s": epoch_metrics["train/img_per_s"]})
        bar.close(steps, summary)
        self.tracker.log_metrics(epoch_metrics, step=epoch + 1)

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """One optimisation step: forward under autocast, summed losses, backward, optimiser steps."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.center_optimizer is not None:
            self.center_optimizer.zero_grad(set_to_none=True)
        with self.amp.autocast(self.device):
            losses, outputs = self.step_module(images, labels)
        if not losses:
            raise ReidError("the objective returned no loss term; every loss weight is 0?")
        total = sum(loss.float() for loss in losses.values())
        self.scaler.scale(total).backward()
        if self.center_optimizer is not None:
            self.scaler.unscale_(self.center_optimizer)
            rescale_center_gradients(self.center_optimizer, self.config.loss.center_weight)
            self.scaler.step(self.center_optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total, losses, outputs

    def _raise_nonfinite(self, epoch: int, steps: int, stats: StepStats) -> None:
        report = stats.nonfinite_report()
        bad_step = report["first_bad"]
        if bad_step >= 0:
            step_in_epoch = bad_step - self._epoch_first_step
            where = (f"epoch {epoch + 1}, step {step_in_epoch} of {steps} (global step {bad_step}): "
                     f"{_fmt_losses(report['bad'])}")
        else:
            where = f"epoch {epoch + 1} on another process of the distributed run"
        last_ok = (f"last finite values (global step {report['last_finite_step']}): {_fmt_losses(report['last_finite'])}"
                   if report["last_finite_step"] >= 0 else "no finite loss was seen before it in this epoch")
        saved = self._saved_epoch
        kept = (f"the last good checkpoint {self.last_path} (after epoch {saved}) is kept" if saved
                else "no checkpoint of this run had been written yet")
        raise NonFiniteLossError(
            f"the training loss became non-finite at {where}; {last_ok}. Training stopped and {kept}. "
            "Lower optim.lr, check the data (corrupt images?) or try train.amp=off."
        )

    # -- evaluation and checkpoints --------------------------------------------------------------
    def _evaluate(self, completed: int) -> None:
        """Evaluate on every rank (features are extracted in shards and gathered), track on rank 0.

        The query / gallery evaluation is the run's result after the last epoch and a monitoring curve
        before it (``eval_epoch/*``); only the validation split (``eval.val_ids``) chooses ``best.pt``.
        Every rank keeps the same metrics and bookkeeping, so the ranks take the same decisions
        afterwards and never wait for each other at different collectives. Under torchrun every rank
        first takes rank 0's buffers (BatchNorm running statistics), so all shards are embedded by one
        model whatever ``train.sync_bn`` is.
        """
        from reid.evaluation.runner import evaluate_model, metrics_for_logging

        started = time.perf_counter()
        dist_utils.broadcast_buffers(self.model, self.ctx)
        result = evaluate_model(self.model, self.manifest, self.config, self.device)
        val = (evaluate_model(self.model, self.val_manifest, self.config, self.device)
               if self.val_manifest is not None else None)
        self.timing["eval_time_s"] += time.perf_counter() - started
        self.timing["evaluations"] += 1
        metrics = result.to_dict()
        metrics["epoch"] = completed
        self.last_metrics = metrics
        entry = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        improved = False
        if val is not None:
            value = float(val.to_dict()[SELECTION_METRIC])
            entry[f"val_{SELECTION_METRIC}"] = value
            improved = self.best_metric is None or value > self.best_metric
            if improved:
                self.best_metric, self.best_epoch = value, completed
        self.history.append(entry)
        if not self.ctx.is_main:
            return
        logged = metrics_for_logging(result, prefix=EPOCH_EVAL_PREFIX)  # a curve; eval/* is the reported model's
        logged["eval_time_s"] = time.perf_counter() - started
        if val is not None:
            logged.update(metrics_for_logging(val, prefix=VAL_PREFIX))
        self.tracker.log_metrics(logged, step=completed)
        note = ""
        if val is not None:  # percent, as `reid evaluate` prints it
            note = (f"  | validation mAP {100 * entry[f'val_{SELECTION_METRIC}']:.1f}"
                    + (f" (best, saved as {BEST})" if improved
                       else f" (best {100 * self.best_metric:.1f} at epoch {self.best_epoch})"))
        self.say(f"epoch {completed}: query/gallery {result.summary()}{note}")
        if result.skipped_report():
            self.say(result.skipped_report())
        if improved:
            save_checkpoint(self._payload(completed, full=False), self.best_path)
            self.tracker.log_metrics({f"{VAL_PREFIX}best_{SELECTION_METRIC}": self.best_metric, f"{VAL_PREFIX}best_epoch": completed},
                                     step=completed)

    def _payload(self, completed: int, full: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "config": self.config.model_dump(mode="json"),
            "num_classes": self.num_classes,
            "epoch": completed,
            "global_step": self.global_step,
            "model": _cpu_state(self.model.state_dict()),
            "objective": self.objective.extra_state_dict(),
            # Kept from the resumed checkpoint when tracking was switched off for the resume.
            "mlflow_run_id": (getattr(self, "tracker", None) and self.tracker.run_id) or self.checkpoint_run_id,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "metrics": {k: v for k, v in self.last_metrics.items() if isinstance(v, (int, float, str))},
            **self.training_data.entries(),  # data_hash, train_data_hash, data_manifest (reid.engine.resume)
            "world_size": self.ctx.world_size,
            "timing": dict(self.timing),
        }
        if full:
            payload.update({
                "optimizers": {"main": self.optimizer.state_dict(),
                               "center": self.center_optimizer.state_dict() if self.center_optimizer else None},
                "schedulers": {"main": self.scheduler.state_dict()},
                "scaler": self.scaler.state_dict(),
                "history": self.history,
            })
        return payload

    def _save_last(self, completed: int) -> None:
        # Every rank's sampler and RNG state (identical content on one process).
        samplers = dist_utils.all_gather_objects(self.loader.state_dict())
        rngs = dist_utils.all_gather_objects(rng_state())
        if not self.ctx.is_main:
            return
        payload = self._payload(completed, full=True)
        payload["sampler"], payload["rng"] = samplers[0], rngs[0]
        if self.ctx.distributed:
            payload["sampler_ranks"], payload["rng_ranks"] = samplers, rngs
        save_checkpoint(payload, self.last_path)
        self._saved_epoch = completed

    def _finish(self, resumed_from: int | None) -> TrainResult:
        metrics = dict(self.last_metrics)
        timing = dict(self.timing)
        timing["train_img_per_s"] = timing["train_images"] / timing["train_time_s"] if timing["train_time_s"] > 0 else None
        selection = ({f"val_best_{SELECTION_METRIC}": self.best_metric, "best_epoch": self.best_epoch}
                     if self.val_manifest is not None else {})
        summary = {**metrics, **selection, "epochs": self.config.train.epochs, "global_step": self.global_step, **timing}
        if getattr(self, "image_check", None) is not None:  # data.corrupt_images=skip: what was left out
            summary.update(self.image_check.metrics())
        if self.ctx.is_main:
            _write_json(self.metrics_path, summary)
        return TrainResult(
            output_dir=self.out, last_checkpoint=self.last_path,
            best_checkpoint=self.best_path if self.val_manifest is not None and self.best_path.is_file() else None,
            metrics_path=self.metrics_path, config_path=self.config_path, metrics=metrics,
            best_metric=self.best_metric, best_epoch=self.best_epoch, epochs=max(self.start_epoch, self.config.train.epochs),
            global_step=self.global_step, mlflow_run_id=self.tracker.run_id, resumed_from_epoch=resumed_from,
            history=list(self.history),
        )


def _cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically: a reader (DVC, a test) never sees a half-written metrics file."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}
    write_text_atomic(path, json.dumps(clean, indent=2) + "\n")


def _dataset_name(manifest: Any, config: Config) -> str:
    root = getattr(manifest, "root", None) or config.data.root
    return Path(str(root)).name or str(getattr(manifest, "format", config.data.format))


def _globalise_batch_losses(objective: nn.Module) -> None:
    """Let the objective's batch-hard triplet loss mine over the global batch of a distributed run.

    The objective exposes the loss as its ``triplet`` attribute for this purpose; see
    :class:`reid.engine.distributed.GlobalBatchLoss` for why the gradient is then exactly the
    single-process one.
    """
    triplet = getattr(objective, "triplet", None)
    if triplet is not None and not isinstance(triplet, dist_utils.GlobalBatchLoss):
        objective.triplet = dist_utils.GlobalBatchLoss(triplet)


def train(config: Config, manifest: Any = None, resume: bool = False, *, variant: str | None = None,
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
    return _Trainer(config, manifest, resume, variant, run_name, tracking_base, progress, log,
                    resume_command, tags).run()
