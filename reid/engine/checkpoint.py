"""Checkpoints that survive a kill and never need pickle.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, written with
``torch.save`` to a temporary file and renamed into place, so a run killed while saving leaves the
previous checkpoint intact. Loading always uses ``weights_only=True``: a file that needs pickle is
refused instead of executing whatever it contains.

Keys written by the trainer (``FORMAT`` marks the layout):
    format, config (resolved Config as JSON-able dict), num_classes, epoch (completed epochs),
    global_step, model (state dict), objective (state dict of training-only heads), optimizers,
    schedulers, sampler, rng, mlflow_run_id, best_metric, metrics.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from reid.atomic import atomic_target
from reid.errors import CheckpointError

FORMAT = "reid-checkpoint-v1"


def save_checkpoint(payload: dict[str, Any], path: Path | str) -> Path:
    """Atomically write ``payload`` to ``path`` (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    payload = {"format": FORMAT, **payload}
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_state(path: Path | str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what went wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} needs pickle to load, which could run arbitrary code, so it is refused "
            f"(weights_only=True). Re-save it as a plain state dict: torch.save(model.state_dict(), path). "
            f"Detail: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable torch file (truncated or corrupt?): {exc}") from None


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and check its layout."""
    state = load_state(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a reid checkpoint (expected format {FORMAT!r}); "
            "for plain backbone weights use model.pretrained=file with model.pretrained_path"
        )
    return state


def read_entry(path: Path | str, key: str) -> Any:
    """One small entry of a checkpoint (e.g. ``mlflow_run_id``) without reading its tensors.

    Memory-maps the file, so asking a multi-GB checkpoint for its run id is instant. Returns None
    when the file is missing, unreadable or lacks the key: callers use it for bookkeeping, and the
    real loaders report broken files properly.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    return state.get(key) if isinstance(state, dict) else None
