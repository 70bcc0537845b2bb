"""The training loop and its callbacks on tiny modules: milliseconds per test, no dataset, no ResNet.

:func:`reid.engine.trainer.fit` only needs a :class:`~reid.engine.state.TrainState`; here it holds a
linear "objective", SGD and a step schedule, and a loader of four fixed batches. What a full
``train()`` adds (pre-flight, MLflow) is tested in tests/test_trainer.py and tests/test_resume.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from reid.config import validate
from reid.engine.callbacks import Callback
from reid.engine.checkpointing import CheckpointSaver
from reid.engine.device import amp_policy
from reid.engine.distributed import init_from_env
from reid.engine.metrics_log import MetricsLog, read_metrics_log
from reid.engine.monitor import TrainMonitor
from reid.engine.state import RESUME_KEYS, TrainState, require_resume_keys, restore_state
from reid.engine.trainer import fit
from reid.errors import CheckpointError, NonFiniteLossError, ReidError


class TinyObjective(nn.Module):
    """A linear classifier with the objective's interface: ``(losses, outputs)`` from ``(images, labels)``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = scale

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        logits = self.fc(images.flatten(1)) * self.scale
        return {"id": nn.functional.cross_entropy(logits, labels)}, {"logits": logits}

    def extra_state_dict(self) -> dict:
        return {}


class TinyLoader:
    """Four batches of two 1x2x2 images per epoch; remembers the epochs it was set to."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(2, 1, 2, 2, generator=generator), torch.tensor([0, 1])) for _ in range(4)]
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)

    def state_dict(self) -> dict:
        return {"epochs": list(self.epochs)}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = list(state["epochs"])


def tiny_state(epochs: int = 2, eval_every: int = 2, scale: float = 1.0, log_every: int = 2) -> TrainState:
    config = validate({"train": {"epochs": epochs, "eval_every": eval_every, "device": "cpu",
                                 "log_every_steps": log_every, "seed": 3}})
    objective = TinyObjective(scale)
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.1)
    cpu = torch.device("cpu")
    amp = amp_policy("off", cpu)
    return TrainState(config=config, device=cpu, ctx=init_from_env(cpu), num_classes=3, model=objective,
                      objective=objective, optimizer=optimizer, center_optimizer=None,
                      scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5 ** epoch),
                      scaler=amp.grad_scaler(cpu), amp=amp, loader=TinyLoader(), channels_last=False,
                      step_module=objective)


class Recorder(Callback):
    """Every hook call as a tuple; ``evaluate`` records a score so a finished run has metrics."""

    def __init__(self, fail_evaluation: BaseException | None = None, interrupt_at_step: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_evaluation, self.interrupt_at_step = fail_evaluation, interrupt_at_step

    def on_train_start(self, state):
        self.calls.append(("train_start", state.epoch))

    def on_epoch_start(self, state, epoch, steps):
        self.calls.append(("epoch_start", epoch, steps))

    def on_step_end(self, state, output, step):
        self.calls.append(("step", state.global_step))
        if self.interrupt_at_step == state.global_step:
            raise KeyboardInterrupt("test")

    def on_epoch_end(self, state, completed):
        self.calls.append(("epoch_end", completed, state.epoch))

    def evaluate(self, state, completed):
        self.calls.append(("evaluate", completed, state.scheduler.last_epoch))
        if self.fail_evaluation is not None:
            raise self.fail_evaluation
        state.summary.last_metrics = {"mAP": 0.5, "epoch": completed}

    def on_epoch_saved(self, state, completed):
        self.calls.append(("saved", completed, state.scheduler.last_epoch))
        state.saved_epoch = completed

    def on_evaluation_failed(self, state, completed, exc):
        self.calls.append(("evaluation_failed", completed, state.scheduler.last_epoch))

    def on_interrupt(self, state, exc):
        self.calls.append(("interrupt", state.global_step))

    def on_train_end(self, state):
        self.calls.append(("train_end", state.epoch))


def test_fit_calls_every_point_in_order() -> None:
    state, recorder = tiny_state(epochs=2, eval_every=2), Recorder()
    fit(state, [recorder])
    steps = lambda first: [("step", first + i) for i in range(1, 5)]  # noqa: E731
    assert recorder.calls == [
        ("train_start", 0),
        ("epoch_start", 0, 4), *steps(0), ("epoch_end", 1, 1), ("saved", 1, 1),
        # evaluated before the scheduler step (last_epoch still 1), checkpointed after it
        ("epoch_start", 1, 4), *steps(4), ("epoch_end", 2, 2), ("evaluate", 2, 1), ("saved", 2, 2),
        ("train_end", 2),
    ]
    assert state.loader.epochs == [0, 1] and state.global_step == 8


def test_fit_continues_from_the_states_epoch() -> None:
    """A resumed state (epoch 1 done) trains epoch 2 only, from its global step."""
    state, recorder = tiny_state(epochs=2), Recorder()
    state.epoch, state.global_step = 1, 4
    fit(state, [recorder])
    assert [c for c in recorder.calls if c[0] == "epoch_start"] == [("epoch_start", 1, 4)]
    assert state.global_step == 8 and state.loader.epochs == [1]


def test_nothing_to_train_is_evaluated_once_and_saved() -> None:
    state, recorder = tiny_state(epochs=0), Recorder()
    fit(state, [recorder])
    assert recorder.calls == [("train_start", 0), ("evaluate", 0, 0), ("saved", 0, 0), ("train_end", 0)]


def test_a_failed_evaluation_keeps_the_epoch_then_raises() -> None:
    state, recorder = tiny_state(epochs=1, eval_every=1), Recorder(fail_evaluation=ReidError("no query left"))
    with pytest.raises(ReidError, match="no query left"):
        fit(state, [recorder])
    # The scheduler was stepped as after a good epoch, so the saved state resumes exactly.
    assert recorder.calls[-2:] == [("evaluate", 1, 0), ("evaluation_failed", 1, 1)]
    assert not any(c[0] in ("saved", "train_end") for c in recorder.calls)


def test_an_interrupt_reaches_the_callbacks_and_goes_on() -> None:
    state, recorder = tiny_state(epochs=2), Recorder(interrupt_at_step=6)
    with pytest.raises(KeyboardInterrupt):
        fit(state, [recorder])
    assert recorder.calls[-1] == ("interrupt", 6) and state.epoch == 1


def test_the_epoch_randomness_depends_on_seed_and_epoch_only() -> None:
    """Each epoch reseeds the global generators from (train.seed, epoch, rank): a resumed epoch replays."""

    class Draw(Callback):
        def __init__(self):
            self.draws = []

        def on_epoch_start(self, state, epoch, steps):
            self.draws.append(torch.rand(1).item())

    full, resumed = Draw(), Draw()
    fit(tiny_state(epochs=2), [full, Recorder()])
    state = tiny_state(epochs=2)
    state.epoch = 1
    torch.manual_seed(12345)  # whatever the generators hold before, epoch 2 draws the same
    fit(state, [resumed, Recorder()])
    assert resumed.draws == full.draws[1:]


def test_monitor_logs_step_and_epoch_metrics_to_the_sink(tmp_path: Path) -> None:
    state = tiny_state(epochs=1, eval_every=1, log_every=2)
    log = MetricsLog(tmp_path / "metrics.jsonl", new=True)
    lines: list[str] = []
    monitor = TrainMonitor(log, lines.append, num_images=8, last_path=tmp_path / "last.pt", progress=False)
    fit(state, [monitor, Recorder()])
    steps = read_metrics_log(tmp_path / "metrics.jsonl", prefix="train_step/")
    assert [row["step"] for row in steps] == [2, 4]  # every log_every_steps and the epoch's last step
    assert all(set(row) >= {"train_step/loss", "train_step/loss_id", "train_step/acc", "train_step/lr"} for row in steps)
    (epoch,) = read_metrics_log(tmp_path / "metrics.jsonl", prefix="train/")
    assert epoch["step"] == 1 and math.isclose(epoch["train/loss"], (steps[0]["train_step/loss"] + steps[1]["train_step/loss"]) / 2)
    assert state.summary.timing["train_images"] == 8 and state.summary.timing["train_time_s"] > 0
    assert lines[0].startswith("training ") and "epochs 1..1" in lines[0]


def test_monitor_stops_a_non_finite_loss_naming_the_step(tmp_path: Path) -> None:
    state = tiny_state(epochs=1, scale=float("inf"), log_every=1)
    monitor = TrainMonitor(MetricsLog(tmp_path / "m.jsonl", new=True), lambda m: None, num_images=8,
                           last_path=tmp_path / "last.pt", progress=False)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1 of 4 \(global step 1\).*no checkpoint"):
        fit(state, [monitor])


def test_checkpoint_saver_writes_what_restore_needs(tmp_path: Path) -> None:
    state = tiny_state(epochs=1, eval_every=1)
    saver = CheckpointSaver(tmp_path / "last.pt", lambda: {"mlflow_run_id": "r1"}, lambda m: None)
    fit(state, [Recorder(), saver])
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(RESUME_KEYS) <= set(checkpoint) and checkpoint["epoch"] == 1 and checkpoint["mlflow_run_id"] == "r1"
    assert checkpoint["metrics"] == {"mAP": 0.5, "epoch": 1} and state.saved_epoch == 1
    fresh = tiny_state(epochs=1)
    restore_state(fresh, checkpoint, tmp_path / "last.pt")
    assert fresh.epoch == 1 and fresh.global_step == 4 and fresh.saved_epoch == 1
    assert torch.equal(fresh.model.fc.weight, state.model.fc.weight)
    assert fresh.scheduler.last_epoch == state.scheduler.last_epoch and fresh.loader.epochs == [0]


def test_a_checkpoint_of_other_code_names_the_missing_key(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="lacks 'timing'.*not written by this version"):
        require_resume_keys({k: 0 for k in RESUME_KEYS if k != "timing"}, tmp_path / "old.pt")
