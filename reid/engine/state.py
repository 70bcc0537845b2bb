"""The state of one training run: everything a step changes and a checkpoint must bring back.

:class:`TrainState` is a plain record (model, objective, optimisers, schedule, loader, epoch and step
counters, the run's bookkeeping); the loop (:func:`reid.engine.trainer.fit`) and its callbacks read
and update it, and nothing else holds training state. RNG streams are the global generators, which
the loop reseeds per epoch (:func:`reid.engine.device.epoch_seed`) and checkpoints save.

:func:`build_state` builds it in one fixed order (global seed, model, pretrained weights, objective,
optimisers, schedule, loader): the order decides which random numbers initialise what, so changing it
changes every result of a seed. :func:`restore_state` loads a ``last.pt`` into it for ``--resume``;
:func:`checkpoint_payload` is the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from reid.config import Config
from reid.engine import distributed as dist_utils
from reid.engine.device import AmpPolicy, amp_policy, configure_backends, seed_everything, set_rng_state
from reid.engine.optim import build_center_optimizer, build_optimizer, build_scheduler, exclude, sync_lr
from reid.errors import CheckpointError

if TYPE_CHECKING:
    from reid.data.loaders import TrainLoader
    from reid.engine.objective import Objective
    from reid.models.reid_model import ReIDModel

#: Keys of ``last.pt`` that ``--resume`` needs; a checkpoint without one was written by other code.
RESUME_KEYS = ("model", "optimizers", "schedulers", "epoch", "global_step", "timing")


def _new_timing() -> dict[str, float]:
    return {"train_time_s": 0.0, "train_images": 0, "eval_time_s": 0.0, "evaluations": 0}


@dataclass
class RunSummary:
    """What the run has measured so far; saved in every checkpoint and carried across resumes."""

    last_metrics: dict[str, Any] = field(default_factory=dict)  # the latest query/gallery evaluation
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per evaluation
    best_metric: float | None = None                            # validation mAP of best.pt (eval.val_ids)
    best_epoch: int | None = None
    timing: dict[str, float] = field(default_factory=_new_timing)  # seconds and images, summed over resumes


@dataclass
class TrainState:
    """One run's training state (see the module docstring)."""

    config: Config
    device: torch.device
    ctx: dist_utils.DistContext
    num_classes: int
    model: "ReIDModel"
    objective: "Objective"
    optimizer: torch.optim.Optimizer
    center_optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp: AmpPolicy
    loader: "TrainLoader | None"
    channels_last: bool
    step_module: nn.Module            # the objective as the step calls it (DDP- and compile-wrapped)
    epoch: int = 0                    # completed epochs
    global_step: int = 0
    frozen: bool | None = None        # backbone frozen (model.freeze_backbone_epochs); None before epoch 1
    saved_epoch: int | None = None    # epochs in the last.pt this run can fall back to (None: none yet)
    summary: RunSummary = field(default_factory=RunSummary)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def build_state(config: Config, num_classes: int, device: torch.device, ctx: dist_utils.DistContext,
                make_loader: Callable[[], "TrainLoader"] | None,
                say: Callable[[str], None] = lambda message: None, pretrained: bool = True) -> TrainState:
    """Model, objective, optimisers, schedule and loader of a new run, in the order that fixes a seed's result.

    ``make_loader`` builds the training loader last (None: no loader, for a benchmark of the step);
    ``pretrained`` loads ``model.pretrained`` weights (a resumed run takes its weights from last.pt).
    """
    from reid.engine.objective import build_objective
    from reid.models.reid_model import build_model

    seed_everything(config.train.seed)
    configure_backends(device, config.train.deterministic)
    amp = amp_policy(config.train.amp, device)
    model = build_model(config, num_classes)
    if pretrained and config.model.pretrained != "none":
        from reid.models.pretrained import load_pretrained

        report = load_pretrained(model, config.model)
        if report is not None:
            say(f"pretrained weights: {report.summary()}")
    channels_last = device.type == "cuda" and config.model.channels_last
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    objective = build_objective(config, model, num_classes, device).to(device)
    if ctx.distributed and config.train.sync_bn:
        objective = dist_utils.convert_sync_batchnorm(objective, device)
    if ctx.distributed:
        globalise_batch_losses(objective)
    centers = list(objective.center_parameters())
    optimizer = build_optimizer(config.optim, exclude(objective.trainable_parameters(), centers), device)
    return TrainState(
        config=config, device=device, ctx=ctx, num_classes=num_classes, model=model, objective=objective,
        optimizer=optimizer, center_optimizer=build_center_optimizer(config.loss, centers),
        scheduler=build_scheduler(optimizer, config.optim, config.train.epochs),
        scaler=amp.grad_scaler(device), amp=amp, loader=make_loader() if make_loader else None,
        channels_last=channels_last, step_module=objective,
    )


def globalise_batch_losses(objective: nn.Module) -> None:
    """Let the objective's batch-hard triplet loss mine over the global batch of a distributed run.

    The objective exposes the loss as its ``triplet`` attribute for this purpose; see
    :class:`reid.engine.distributed.GlobalBatchLoss` for why the gradient is then exactly the
    single-process one.
    """
    triplet = getattr(objective, "triplet", None)
    if triplet is not None and not isinstance(triplet, dist_utils.GlobalBatchLoss):
        objective.triplet = dist_utils.GlobalBatchLoss(triplet)


def set_frozen(state: TrainState, frozen: bool) -> None:
    """Freeze or unfreeze the backbone, then (re)wrap the objective for DDP and ``train.compile``.

    DDP reduces only the parameters that required a gradient when it was built, so a change of what
    is frozen needs a new wrapper.
    """
    if frozen == state.frozen:
        return
    config = state.config
    if config.model.freeze_backbone_epochs > 0 or state.frozen is not None:
        state.model.freeze_backbone(frozen)
    state.frozen = frozen
    module = dist_utils.wrap_ddp(state.objective, state.ctx, state.device, config.train.sync_bn)
    state.step_module = torch.compile(module) if config.train.compile else module


def _load(module: nn.Module, weights: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the {what} weights do not fit this model: {exc}") from None


def require_resume_keys(checkpoint: Mapping[str, Any], path: Path) -> None:
    """A checkpoint written by other code fails here with the key it lacks, not deep inside a load."""
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(repr(k) for k in missing)}: it was not written by this version's "
            "`reid train`, so it cannot be resumed. Train again without --resume (its model can still be "
            "evaluated or used as a teacher when it loads)")


def restore_state(state: TrainState, checkpoint: Mapping[str, Any], path: Path) -> None:
    """Load ``last.pt`` into a freshly built state: weights, optimisers, schedule, sampler, RNG, bookkeeping."""
    require_resume_keys(checkpoint, path)
    _load(state.model, checkpoint["model"], "model", path)
    extra = checkpoint.get("objective") or {}
    if extra:
        try:
            state.objective.load_extra_state_dict(extra)
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: the objective state does not fit ({exc})") from None
    try:
        state.optimizer.load_state_dict(checkpoint["optimizers"]["main"])
        if state.center_optimizer is not None and checkpoint["optimizers"].get("center"):
            state.center_optimizer.load_state_dict(checkpoint["optimizers"]["center"])
        state.scheduler.load_state_dict(checkpoint["schedulers"]["main"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the optimiser/scheduler state does not fit this run ({exc})") from None
    sync_lr(state.scheduler)
    if checkpoint.get("scaler"):
        state.scaler.load_state_dict(checkpoint["scaler"])
    samplers = checkpoint.get("sampler_ranks") or [checkpoint.get("sampler")]
    rngs = checkpoint.get("rng_ranks") or [checkpoint.get("rng")]
    rank = state.ctx.rank if len(samplers) == state.ctx.world_size else 0
    if samplers[rank] is not None and state.loader is not None:
        state.loader.load_state_dict(samplers[rank])
    if rngs[min(rank, len(rngs) - 1)] is not None:
        set_rng_state(rngs[min(rank, len(rngs) - 1)])
    state.epoch = state.saved_epoch = int(checkpoint["epoch"])
    state.global_step = int(checkpoint["global_step"])
    summary = state.summary
    summary.best_metric, summary.best_epoch = checkpoint.get("best_metric"), checkpoint.get("best_epoch")
    summary.last_metrics = dict(checkpoint.get("metrics") or {})
    summary.history = list(checkpoint.get("history") or [])
    summary.timing.update(checkpoint["timing"])


def _cpu_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def checkpoint_payload(state: TrainState, *, full: bool, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint of ``state``: the model alone (``full=False``, best.pt) or everything resume needs.

    ``extra`` adds the run's identity (MLflow run id, training-data hashes); sampler and RNG states
    are added by the caller, which gathers them from every rank.
    """
    summary = state.summary
    payload: dict[str, Any] = {
        "config": state.config.model_dump(mode="json"),
        "num_classes": state.num_classes,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "model": _cpu_state(state.model.state_dict()),
        "objective": state.objective.extra_state_dict(),
        "best_metric": summary.best_metric,
        "best_epoch": summary.best_epoch,
        "metrics": {k: v for k, v in summary.last_metrics.items() if isinstance(v, (int, float, str))},
        "world_size": state.ctx.world_size,
        "timing": dict(summary.timing),
        **extra,
    }
    if full:
        payload.update({
            "optimizers": {"main": state.optimizer.state_dict(),
                           "center": state.center_optimizer.state_dict() if state.center_optimizer else None},
            "schedulers": {"main": state.scheduler.state_dict()},
            "scaler": state.scaler.state_dict(),
            "history": summary.history,
        })
    return payload
