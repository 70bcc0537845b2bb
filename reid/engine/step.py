"""One optimisation step: the whole of what training does to a batch.

This is the function the loop calls and the training benchmark times (benchmarks/bench_training.py
imports it), so a measured throughput is the throughput of this code and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from reid.engine.optim import rescale_center_gradients
from reid.engine.state import TrainState
from reid.errors import ReidError


@dataclass(frozen=True)
class StepOutput:
    """The step's summed loss, its named terms (``id``, ``triplet``, ...) and the objective's outputs."""

    total: torch.Tensor
    losses: dict[str, torch.Tensor]
    outputs: Any
    labels: torch.Tensor

    @property
    def logits(self) -> torch.Tensor | None:
        return self.outputs.get("logits") if isinstance(self.outputs, Mapping) else None


def train_step(state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
    """Forward under the AMP policy's autocast, losses summed in float32, backward, optimiser steps.

    The centre loss has its own SGD (``loss.center_lr``); its gradient is rescaled by
    ``1 / loss.center_weight`` first, as the reference recipe does, so the centres move at the
    centre learning rate whatever the loss weight.
    """
    if state.channels_last and not images.is_contiguous(memory_format=torch.channels_last):
        images = images.contiguous(memory_format=torch.channels_last)
    state.optimizer.zero_grad(set_to_none=True)
    if state.center_optimizer is not None:
        state.center_optimizer.zero_grad(set_to_none=True)
    with state.amp.autocast(state.device):
        losses, outputs = state.step_module(images, labels)
    if not losses:
        raise ReidError("the objective returned no loss term; every loss weight is 0?")
    total = sum(loss.float() for loss in losses.values())
    state.scaler.scale(total).backward()
    if state.center_optimizer is not None:
        state.scaler.unscale_(state.center_optimizer)
        rescale_center_gradients(state.center_optimizer, state.config.loss.center_weight)
        state.scaler.step(state.center_optimizer)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return StepOutput(total, losses, outputs, labels)
