"""The points of the training loop where the rest of a run plugs in.

:func:`reid.engine.trainer.fit` knows how to train and nothing else. Progress, metric logging,
evaluation and checkpoints are :class:`Callback` objects called at fixed points, each testable alone
with a hand-made :class:`~reid.engine.state.TrainState`. Callbacks run in the order given, on every
rank (a callback that writes files or logs checks ``state.ctx.is_main`` itself), and share state only
through the ``TrainState`` (its ``summary`` holds what a checkpoint must carry).

The points, in the order a run meets them::

    on_train_start
    per epoch:  on_epoch_start -> on_step_end (each step) -> on_epoch_end
                -> evaluate (when due) -> on_epoch_saved  (after the scheduler step)
    on_evaluation_failed   (instead of on_epoch_saved when an evaluation raised)
    on_interrupt           (Ctrl-C / SIGTERM anywhere in the loop; the exception goes on)
    on_train_end           (after the last epoch, also when nothing was left to train)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from reid.engine.state import TrainState
    from reid.engine.step import StepOutput


class Callback:
    """Every hook is a no-op here: a callback overrides only the points it cares about."""

    def on_train_start(self, state: "TrainState") -> None:
        """Before the first epoch of this process (after a resume: before the first epoch left)."""

    def on_epoch_start(self, state: "TrainState", epoch: int, steps: int) -> None:
        """``epoch`` is 0-based; ``steps`` is how many steps the epoch will take."""

    def on_step_end(self, state: "TrainState", output: "StepOutput", step: int) -> None:
        """After the optimiser step; ``step`` is 0-based in the epoch, ``state.global_step`` already counts it."""

    def on_epoch_end(self, state: "TrainState", completed: int) -> None:
        """After the epoch's last step, before its evaluation; ``completed`` is 1-based."""

    def evaluate(self, state: "TrainState", completed: int) -> None:
        """The evaluation after epoch ``completed`` (only called when one is due)."""

    def on_epoch_saved(self, state: "TrainState", completed: int) -> None:
        """After the scheduler step: the state is the one the next epoch starts from (checkpoint time)."""

    def on_evaluation_failed(self, state: "TrainState", completed: int, exc: BaseException) -> None:
        """An evaluation raised (or was interrupted); the exception is re-raised afterwards."""

    def on_interrupt(self, state: "TrainState", exc: BaseException) -> None:
        """Ctrl-C or SIGTERM during the loop; the exception is re-raised afterwards."""

    def on_train_end(self, state: "TrainState") -> None:
        """After the last epoch."""


class CallbackList(Callback):
    """Calls each hook of every callback, in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, state: "TrainState") -> None:
        for callback in self.callbacks:
            callback.on_train_start(state)

    def on_epoch_start(self, state: "TrainState", epoch: int, steps: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(state, epoch, steps)

    def on_step_end(self, state: "TrainState", output: "StepOutput", step: int) -> None:
        for callback in self.callbacks:
            callback.on_step_end(state, output, step)

    def on_epoch_end(self, state: "TrainState", completed: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(state, completed)

    def evaluate(self, state: "TrainState", completed: int) -> None:
        for callback in self.callbacks:
            callback.evaluate(state, completed)

    def on_epoch_saved(self, state: "TrainState", completed: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_saved(state, completed)

    def on_evaluation_failed(self, state: "TrainState", completed: int, exc: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_evaluation_failed(state, completed, exc)

    def on_interrupt(self, state: "TrainState", exc: BaseException) -> None:
        for callback in self.callbacks:
            callback.on_interrupt(state, exc)

    def on_train_end(self, state: "TrainState") -> None:
        for callback in self.callbacks:
            callback.on_train_end(state)
