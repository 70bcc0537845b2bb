"""``last.pt`` after every epoch, and after an epoch whose evaluation failed.

The checkpoint holds everything ``--resume`` needs to continue exactly (weights, optimisers, schedule,
every rank's sampler and RNG state, the run's bookkeeping and identity) and is written atomically by
rank 0 (:func:`reid.checkpoint.save_checkpoint`), so a kill while saving leaves the previous one.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Callable, Mapping

from reid.checkpoint import save_checkpoint
from reid.engine.callbacks import Callback
from reid.engine.device import rng_state
from reid.engine.state import TrainState, checkpoint_payload
from reid.errors import ReidError
from reid.parallel import all_gather_objects


class CheckpointSaver(Callback):
    """Writes ``last.pt`` at each epoch's end (after the scheduler step) and keeps a failed evaluation's epoch."""

    def __init__(self, last_path: Path, identity: Callable[[], Mapping[str, Any]], say: Callable[[str], None],
                 resume_command: str | None = None) -> None:
        self.last_path, self.identity, self.say = last_path, identity, say
        self.resume_command = resume_command

    def save(self, state: TrainState) -> None:
        """Every rank takes part (its sampler and RNG states are gathered); rank 0 writes."""
        samplers = all_gather_objects(state.loader.state_dict() if state.loader is not None else None)
        rngs = all_gather_objects(rng_state())
        if not state.ctx.is_main:
            return
        payload = checkpoint_payload(state, full=True, extra=self.identity())
        payload["sampler"], payload["rng"] = samplers[0], rngs[0]
        if state.ctx.distributed:
            payload["sampler_ranks"], payload["rng_ranks"] = samplers, rngs
        save_checkpoint(payload, self.last_path)
        state.saved_epoch = state.epoch

    def on_epoch_saved(self, state: TrainState, completed: int) -> None:
        self.save(state)

    def on_evaluation_failed(self, state: TrainState, completed: int, exc: BaseException) -> None:
        """Keep the epoch's trained weights: ``--resume`` continues from them (evaluating again) and
        ``reid evaluate last.pt`` scores them; the error's message says where they are."""
        self.save(state)
        again = self.resume_command or "reid train --resume (with the same parameters)"
        note = (f"The weights after epoch {completed} are saved in {self.last_path}: evaluate them with "
                f"`{shlex.join(['reid', 'evaluate', str(self.last_path)])}` or, once the cause is fixed, "
                f"continue with `{again}`")
        if isinstance(exc, ReidError) and exc.args:
            exc.args = (f"{exc.args[0]}\n{note}", *exc.args[1:])
        else:
            self.say(f"evaluation after epoch {completed} failed; {note}")
