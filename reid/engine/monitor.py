"""What a person and the metric sinks see of the training steps: progress, losses, speed, cost.

:class:`TrainMonitor` is the callback that turns steps into numbers. Loss terms and accuracy stay on
the device (:class:`~reid.engine.stats.StepStats`) and reach the host once per
``train.log_every_steps`` steps, where they go to the progress bar and, as ``train_step/*`` at the
global step, to the sinks; each epoch ends with ``train/*`` (means over the epoch, images/s, seconds)
at the epoch number. A non-finite loss stops the run at the next such point
(:class:`~reid.errors.NonFiniteLossError`, naming the first bad step). The seconds and images of the
steps add up in ``state.summary.timing``, which checkpoints carry across resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from reid.engine.callbacks import Callback
from reid.engine.metrics_log import MetricSink
from reid.engine.optim import schedule_warnings
from reid.engine.progress import EpochProgress
from reid.engine.state import TrainState
from reid.engine.stats import StepStats, format_losses
from reid.engine.step import StepOutput
from reid.errors import NonFiniteLossError


class TrainMonitor(Callback):
    """Progress bar, ``train_step/*`` and ``train/*`` metrics, timing and the non-finite watch."""

    def __init__(self, sink: MetricSink, say: Callable[[str], None], *, num_images: int, last_path: Path,
                 progress: bool = True) -> None:
        self.sink, self.say, self.num_images, self.last_path = sink, say, num_images, last_path
        self.progress = progress

    def on_train_start(self, state: TrainState) -> None:
        cfg, epochs = state.config, state.config.train.epochs
        if epochs == 0:
            self.say(f"train.epochs=0: evaluating the initial {cfg.model.backbone} (seed {cfg.train.seed}, "
                     f"model.pretrained={cfg.model.pretrained}) as a reference point; nothing is trained")
        elif state.epoch >= epochs:
            self.say(f"nothing to train: {state.epoch} of {epochs} epoch(s) already done")
        else:
            workers = f" x{state.ctx.world_size}" if state.ctx.distributed else ""
            self.say(f"training {cfg.model.backbone} on {self.num_images} images of {state.num_classes} ids | "
                     f"device {state.device}{workers}, amp {state.amp.name}, batch {cfg.data.batch_size}, "
                     f"epochs {state.epoch + 1}..{epochs} | output {self.last_path.parent}")
            for warning in schedule_warnings(cfg.optim, epochs):
                self.say(f"warning: {warning}")

    def on_epoch_start(self, state: TrainState, epoch: int, steps: int) -> None:
        self.epoch, self.steps, self.lr = epoch, steps, state.lr
        self.first_step = state.global_step
        self.bar = EpochProgress(epoch + 1, state.config.train.epochs, steps,
                                 enabled=self.progress and state.ctx.is_main, log_every=state.config.train.log_every_steps)
        self.stats: StepStats | None = None
        self.sums: dict[str, float] = {}
        self.correct, self.images, self.counted_steps = 0.0, 0, 0
        self.shown: dict[str, float] = {}
        self.start = self.tick = time.perf_counter()

    def on_step_end(self, state: TrainState, output: StepOutput, step: int) -> None:
        if self.stats is None:
            self.stats = StepStats(list(output.losses), state.device)
            self.stats.set_global_step(state.global_step - 1)
        self.stats.add(output.total, output.losses, output.logits, output.labels)
        if state.global_step % state.config.train.log_every_steps == 0 or step == self.steps - 1:
            self._flush(state)
        self.bar.update(step + 1, self.shown)

    def _flush(self, state: TrainState) -> None:
        assert self.stats is not None
        flushed = self.stats.flush(state.ctx.world_size)
        if flushed["nonfinite"]:
            self._raise_nonfinite(state)
        now = time.perf_counter()
        ips = flushed["images"] / max(now - self.tick, 1e-9)
        self.tick = now
        for name, value in flushed["losses"].items():
            self.sums[name] = self.sums.get(name, 0.0) + value * flushed["steps"]
        self.counted_steps += flushed["steps"]
        self.images += flushed["images"]
        metrics = {f"train_step/{k}": v for k, v in flushed["losses"].items()}
        self.shown = {"loss": flushed["losses"]["loss"]}
        if flushed["acc"] is not None:
            self.correct += flushed["acc"] * flushed["images"]
            metrics["train_step/acc"] = self.shown["acc"] = flushed["acc"]
        self.shown.update({"lr": self.lr, "img/s": ips})
        metrics.update({"train_step/lr": self.lr, "train_step/img_per_s": ips})
        self.sink.log_metrics(metrics, step=state.global_step)

    def on_epoch_end(self, state: TrainState, completed: int) -> None:
        elapsed = time.perf_counter() - self.start
        timing = state.summary.timing
        timing["train_time_s"] += elapsed
        timing["train_images"] += self.images
        metrics: dict[str, Any] = {f"train/{k}": v / max(self.counted_steps, 1) for k, v in self.sums.items()}
        if self.stats is not None and self.stats.has_acc:
            metrics["train/acc"] = self.correct / max(self.images, 1)
        metrics.update({"train/lr": self.lr, "train/img_per_s": self.images / max(elapsed, 1e-9),
                        "train/epoch_time_s": elapsed})
        shown = {"loss": metrics.get("train/loss", float("nan"))}
        if "train/acc" in metrics:
            shown["acc"] = metrics["train/acc"]
        shown.update({"lr": self.lr, "img/s": metrics["train/img_per_s"]})
        self.bar.close(self.steps, shown)
        self.sink.log_metrics(metrics, step=completed)

    def _raise_nonfinite(self, state: TrainState) -> None:
        assert self.stats is not None
        report = self.stats.nonfinite_report()
        epoch, bad_step = self.epoch + 1, report["first_bad"]
        if bad_step >= 0:
            where = (f"epoch {epoch}, step {bad_step - self.first_step} of {self.steps} (global step {bad_step}): "
                     f"{format_losses(report['bad'])}")
        else:
            where = f"epoch {epoch} on another process of the distributed run"
        last_ok = (f"last finite values (global step {report['last_finite_step']}): {format_losses(report['last_finite'])}"
                   if report["last_finite_step"] >= 0 else "no finite loss was seen before it in this epoch")
        kept = (f"the last good checkpoint {self.last_path} (after epoch {state.saved_epoch}) is kept"
                if state.saved_epoch else "no checkpoint of this run had been written yet")
        raise NonFiniteLossError(
            f"the training loss became non-finite at {where}; {last_ok}. Training stopped and {kept}. "
            "Lower optim.lr, check the data (corrupt images?) or try train.amp=off.")
