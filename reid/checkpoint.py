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

#: The file names ``reid train`` writes in ``train.output_dir``; everything else refers to these
#: (dvc.yaml and the params files spell them out, and tests/test_pipeline.py checks they agree).
#: ``last.pt`` is the model of the last completed epoch, the one the recipe reports, evaluates,
#: exports and distils from; it also holds what ``--resume`` needs.
LAST_CHECKPOINT = "last.pt"
#: Only with a validation split held out of the training identities (``eval.val_ids``): the epoch with
#: the best validation mAP. Never selected on query / gallery (the test split).
BEST_CHECKPOINT = "best.pt"


def save_checkpoint(payload: dict[str, Any], path: Path | str) -> Path:
    """Atomically write ``payload`` to ``path`` (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    payload = {"format": FORMAT, **payload}
    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        # A Python file handle, closed on failure: a full disk then frees the partial file's blocks at
        # once, and atomic_target reports it as reid.errors.DiskFullError naming the path.
        torch.save(payload, handle)
    return path


def load_state(path: Path | str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what went wrong and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not _looks_like_torch_file(path):
        # Without this, torch.load reports a YAML or text file as "needs pickle", which sends the
        # user after the wrong problem.
        raise CheckpointError(
            f"{path} is not a reid checkpoint (nor any file written by torch.save): a params YAML or another file "
            f"passed where a checkpoint belongs? Pass the best.pt or last.pt that `reid train` wrote "
            f"(or, for model.pretrained_path, a .pth state dict)"
        )
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


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTO = 0x80          # torch.save(..., _use_new_zipfile_serialization=False): a pickle stream


def _looks_like_torch_file(path: Path) -> bool:
    """True when the file starts like something ``torch.save`` writes (zip archive or pickle stream)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return True  # let torch.load report the I/O problem
    return not head or head == _ZIP_MAGIC or head[0] == _PICKLE_PROTO  # empty: torch.load says "truncated"


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
