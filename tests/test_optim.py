"""Optimisers and the per-epoch learning-rate schedule (warmup, multistep, cosine, resume)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reid.config import LossConfig, OptimConfig
from reid.engine.optim import (
    build_center_optimizer,
    build_optimizer,
    build_scheduler,
    exclude,
    lr_factor,
    rescale_center_gradients,
    schedule_warnings,
    sync_lr,
)


def lrs(optim: OptimConfig, epochs: int) -> list[float]:
    """The lr of every epoch as the trainer sees it (read at the start, step() after the epoch)."""
    opt = build_optimizer(optim, nn.Linear(2, 2).parameters(), "cpu")
    sched = build_scheduler(opt, optim, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_recipe_warmup_then_multistep() -> None:
    """The reference's stepping (WarmupMultiStepLR stepped at the start of every epoch): epoch 1 already
    at (0.01 + 0.99 / 10) x lr, full lr from epoch 10, decays from epochs 40 and 70 (1-based)."""
    optim = OptimConfig()  # the recipe: 3.5e-4, warmup 10 epochs from 0.01x, x0.1 at 40 and 70
    got = lrs(optim, 120)
    assert got[0] == pytest.approx(3.5e-4 * (0.01 + 0.99 * 0.1))  # 3.815e-5
    assert got[4] == pytest.approx(3.5e-4 * (0.01 + 0.99 * 0.5))
    assert all(a < b for a, b in zip(got[:9], got[1:10]))  # strictly increasing during warmup
    assert got[9] == pytest.approx(3.5e-4) and got[38] == pytest.approx(3.5e-4)
    assert got[39] == pytest.approx(3.5e-5) and got[68] == pytest.approx(3.5e-5)
    assert got[69] == pytest.approx(3.5e-6) and got[119] == pytest.approx(3.5e-6)


def test_cosine_after_warmup_reaches_the_floor() -> None:
    optim = OptimConfig(scheduler="cosine", lr=1e-3, warmup_epochs=2, warmup_factor=0.1, min_lr=1e-5)
    got = lrs(optim, 12)
    assert got[0] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert got[1] == pytest.approx(1e-3)  # warmup over (epoch 2 = warmup_epochs): full lr, start of the cosine
    mid = 1 + 11 // 2  # about half-way through the 11 cosine epochs
    assert got[mid] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 5 / 11)))
    assert all(a > b for a, b in zip(got[1:], got[2:]))
    assert got[-1] > 1e-5 and lr_factor(optim, 12, 12) * 1e-3 == pytest.approx(1e-5)


def test_no_warmup_starts_at_full_lr() -> None:
    assert lrs(OptimConfig(warmup_epochs=0, milestones=[2]), 2) == pytest.approx([3.5e-4, 3.5e-5])
    assert lrs(OptimConfig(warmup_epochs=1, milestones=[2]), 2) == pytest.approx([3.5e-4, 3.5e-5])


def test_a_run_inside_its_warmup_is_warned_about() -> None:
    # The case seen in practice: 2 epochs with the recipe's 10-epoch warmup never reach the full lr.
    (warning,) = schedule_warnings(OptimConfig(), 2)
    assert "train.epochs=2 <= optim.warmup_epochs=10" in warning and "2 of the 2 epoch(s)" in warning
    (warning,) = schedule_warnings(OptimConfig(), 10)  # full lr only in the last epoch
    assert "9 of the 10 epoch(s)" in warning
    assert schedule_warnings(OptimConfig(), 11) == [] and schedule_warnings(OptimConfig(), 120) == []
    assert schedule_warnings(OptimConfig(warmup_epochs=1), 1) == []  # warmup of 1 epoch = none
    assert schedule_warnings(OptimConfig(), 0) == []
    # Decayed before the warmup ends: the run never sees full lr although it is long.
    (warning,) = schedule_warnings(OptimConfig(milestones=[5]), 50)
    assert "never trains at the full optim.lr" in warning


def test_scheduler_state_resumes_and_follows_a_longer_run() -> None:
    optim = OptimConfig(scheduler="cosine", lr=1.0, warmup_epochs=0, min_lr=0.0)
    model = nn.Linear(2, 2)
    opt = build_optimizer(optim, model.parameters(), "cpu")
    sched = build_scheduler(opt, optim, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()

    # Same length: the lr continues exactly.
    opt2 = build_optimizer(optim, model.parameters(), "cpu")
    sched2 = build_scheduler(opt2, optim, 10)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    sync_lr(sched2)
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_factor(optim, 10, 4))

    # train.epochs raised on resume: the cosine tail is recomputed for the new length at once.
    opt3 = build_optimizer(optim, model.parameters(), "cpu")
    sched3 = build_scheduler(opt3, optim, 20)
    opt3.load_state_dict(saved_opt)
    sched3.load_state_dict(saved_sched)
    sync_lr(sched3)
    assert opt3.param_groups[0]["lr"] == pytest.approx(lr_factor(optim, 20, 4))
    assert lr_factor(optim, 20, 4) != pytest.approx(lr_factor(optim, 10, 4))


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizers_skip_frozen_parameters(name: str, cls: type) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[1].bias.requires_grad_(False)  # like the BN-neck's frozen bias
    opt = build_optimizer(OptimConfig(optimizer=name, weight_decay=1e-4), model.parameters(), "cpu")
    assert isinstance(opt, cls)
    params = opt.param_groups[0]["params"]
    assert len(params) == 3 and all(p is not model[1].bias for p in params)
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    assert not opt.param_groups[0].get("fused")  # fused kernels are for CUDA only


def test_center_optimizer_moves_centres_at_center_lr_despite_the_weight() -> None:
    centres = nn.Parameter(torch.zeros(4, 2))
    assert build_center_optimizer(LossConfig(center_weight=0.0), [centres]) is None
    loss_cfg = LossConfig(center_weight=5e-4, center_lr=0.5)
    opt = build_center_optimizer(loss_cfg, [centres])
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.5
    feats = torch.ones(4, 2)
    (loss_cfg.center_weight * ((feats - centres) ** 2).sum() / 2).backward()  # weighted, as the objective returns it
    rescale_center_gradients(opt, loss_cfg.center_weight)
    assert torch.allclose(centres.grad, -torch.ones(4, 2))  # dL/dc of the unweighted loss
    opt.step()
    assert torch.allclose(centres.detach(), torch.full((4, 2), 0.5))


def test_exclude_keeps_centres_out_of_the_main_optimizer() -> None:
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    assert exclude([a, b], [b]) == [a]
