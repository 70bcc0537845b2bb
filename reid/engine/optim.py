"""Optimisers and the learning-rate schedule of the strong baseline.

Schedule granularity: **per epoch**, exactly as reid-strong-baseline's ``WarmupMultiStepLR``, which
its trainer steps at the *start* of every epoch. Epoch ``e`` (1-based) therefore trains at
``lr * lr_factor`` with, for the recipe (warmup 10 epochs from 0.01, milestones [40, 70]):

* warmup (``e < warmup_epochs``): ``warmup_factor * (1 - e / W) + e / W``, linear, so the first epoch
  already trains at ``(0.01 + 0.99 / 10) * lr`` (3.815e-5) and epoch ``W`` (the 10th) is the first at
  the full ``lr``;
* ``multistep``: times ``gamma ** bisect_right(milestones, e)``: milestones are 1-based epoch numbers
  and the milestone epoch itself is already decayed (the 40th epoch trains at 0.1x, the 70th at
  0.01x); the warmup factor multiplies it, as in the reference;
* ``cosine``: from the first full-lr epoch (``max(W, 1)``) the factor follows half a cosine from 1
  down towards ``min_lr / lr`` (the last epoch runs just above ``min_lr``).

Our scheduler is stepped once *after* every epoch (a checkpoint at the end of an epoch then holds the
schedule of the next one), so :func:`lr_factor` takes the 0-based epoch index ``i`` and returns the
reference's factor of epoch ``e = i + 1``: the same learning rate for every epoch as the reference.
:func:`schedule_warnings` names configurations that never reach the full learning rate.

It is a ``LambdaLR`` over a pure function of the epoch, so its ``state_dict`` (``last_epoch``,
``base_lrs``) is all that a resume needs, and changing ``train.epochs`` on resume simply stretches
the cosine tail.

Centre loss (optional): the centres get their own plain SGD at ``loss.center_lr``, no weight decay,
no schedule. The objective returns the centre term already multiplied by ``loss.center_weight``;
the strong baseline wants the centres to move at ``center_lr`` independently of that weight, so
:func:`rescale_center_gradients` divides their gradients by ``center_weight`` before the SGD step.
"""

from __future__ import annotations

import bisect
import inspect
import math
from typing import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from reid.config import LossConfig, OptimConfig
from reid.errors import ReidError


def _fused_supported(cls: type[Optimizer], params: list[nn.Parameter], device: torch.device) -> bool:
    """Fused kernels exist for CUDA floating-point parameters and only in some optimisers/versions."""
    if device.type != "cuda" or "fused" not in inspect.signature(cls.__init__).parameters:
        return False
    return all(p.is_cuda and p.is_floating_point() for p in params)


def build_optimizer(optim: OptimConfig, params: Iterable[nn.Parameter], device: torch.device | str) -> Optimizer:
    """Adam / AdamW / SGD over ``params`` (frozen ones skipped), with weight decay; fused on CUDA.

    Parameters that do not require a gradient are left out: the BN-neck's frozen bias, a frozen
    teacher. Parameters frozen only for the first epochs (``model.freeze_backbone_epochs``) still
    require a gradient when the optimiser is built, so they are included and simply get no update
    (their ``.grad`` is None) until they are unfrozen.
    """
    device = torch.device(device)
    params = _unique([p for p in params if p.requires_grad])
    if not params:
        raise ReidError("the objective has no trainable parameters; is the whole model frozen?")
    name = optim.optimizer
    if name == "adam":
        cls, kwargs = torch.optim.Adam, {}
    elif name == "adamw":
        cls, kwargs = torch.optim.AdamW, {}
    elif name == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": optim.momentum, "nesterov": optim.momentum > 0}
    else:  # pragma: no cover - the config validator only allows the three above
        raise ReidError(f"unknown optim.optimizer {name!r}; use adam, adamw or sgd")
    if _fused_supported(cls, params, device):
        kwargs["fused"] = True
    return cls(params, lr=optim.lr, weight_decay=optim.weight_decay, **kwargs)


def build_center_optimizer(loss: LossConfig, center_params: Iterable[nn.Parameter]) -> Optimizer | None:
    """Plain SGD over the centre-loss centres at ``loss.center_lr``; None when centre loss is off."""
    params = _unique([p for p in center_params if p.requires_grad])
    if loss.center_weight <= 0 or not params:
        return None
    return torch.optim.SGD(params, lr=loss.center_lr)


def rescale_center_gradients(optimizer: Optimizer | None, center_weight: float) -> None:
    """Undo the centre-loss weight on the centres' gradients (``grad /= center_weight``).

    The weighted term ``w * L_center`` gives the centres a gradient ``w * dL/dc``; with ``w = 5e-4``
    they would barely move at ``center_lr = 0.5``. The reference implementation multiplies their
    gradients by ``1 / w`` so the centres follow ``dL/dc`` at ``center_lr`` while the network sees the
    weighted term. Call it after ``backward`` (and after ``GradScaler.unscale_``), before ``step``.
    """
    if optimizer is None or center_weight <= 0:
        return
    scale = 1.0 / center_weight
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.mul_(scale)


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Drop repeated parameters (shared modules) while keeping the order; optimisers refuse duplicates."""
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def exclude(params: Iterable[nn.Parameter], others: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """``params`` without any of ``others`` (so the centres are never also in the main optimiser)."""
    skip = {id(p) for p in others}
    return [p for p in params if id(p) not in skip]


def lr_factor(optim: OptimConfig, epochs: int, epoch: int) -> float:
    """The multiplier of ``optim.lr`` during 0-based ``epoch`` (the reference's 1-based epoch ``epoch + 1``)."""
    e = epoch + 1
    warmup = 1.0
    if e < optim.warmup_epochs:
        alpha = e / optim.warmup_epochs
        warmup = optim.warmup_factor * (1.0 - alpha) + alpha
    if optim.scheduler == "multistep":
        return warmup * optim.gamma ** bisect.bisect_right(optim.milestones, e)
    if optim.scheduler == "cosine":
        if e < optim.warmup_epochs:
            return warmup
        first_full = max(optim.warmup_epochs, 1)
        progress = min((e - first_full) / max(epochs - first_full + 1, 1), 1.0)
        floor = optim.min_lr / optim.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ReidError(f"unknown optim.scheduler {optim.scheduler!r}; use multistep or cosine")  # pragma: no cover


def schedule_warnings(optim: OptimConfig, epochs: int) -> list[str]:
    """Why a run of ``epochs`` epochs would never train at the full ``optim.lr`` (empty when it does).

    Warmup is counted in epochs: a short run (a smoke test, a first try on new data) with
    ``train.epochs <= optim.warmup_epochs`` spends all or all but its last epoch at a fraction of the
    learning rate, and learns almost nothing while looking like a normal run.
    """
    if epochs <= 0:
        return []
    factors = [lr_factor(optim, epochs, i) for i in range(epochs)]
    out = []
    full = sum(1 for f in factors if f >= 1.0)
    if optim.warmup_epochs > 0 and epochs <= optim.warmup_epochs and full < epochs:
        out.append(
            f"train.epochs={epochs} <= optim.warmup_epochs={optim.warmup_epochs}: the warmup is counted in epochs, "
            f"so {epochs - full} of the {epochs} epoch(s) train at a fraction of optim.lr={optim.lr:g} "
            f"(from {factors[0] * optim.lr:.3g}); raise train.epochs above {optim.warmup_epochs} or lower "
            f"optim.warmup_epochs (e.g. -o optim.warmup_epochs={max(epochs // 4, 0)})")
    elif max(factors) < 1.0:
        out.append(
            f"this run never trains at the full optim.lr={optim.lr:g} (highest {max(factors) * optim.lr:.3g}: "
            f"optim.milestones {optim.milestones} decay it before the warmup of {optim.warmup_epochs} epoch(s) ends); "
            "check optim.warmup_epochs and optim.milestones against train.epochs")
    return out


def build_scheduler(optimizer: Optimizer, optim: OptimConfig, epochs: int) -> LambdaLR:
    """The per-epoch schedule as a ``LambdaLR``; call ``step()`` once after each epoch (see the module docstring)."""
    return LambdaLR(optimizer, lambda epoch: lr_factor(optim, epochs, epoch))


def sync_lr(scheduler: LambdaLR) -> None:
    """Set every group's lr from the schedule at its current epoch (after a resume).

    A resumed optimiser carries the lr the *old* schedule gave it; when ``train.epochs`` changed on
    resume the cosine tail is different, and the first resumed epoch must already use the new value.
    """
    epoch = scheduler.last_epoch
    for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(epoch)
