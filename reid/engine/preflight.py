"""Everything a training run checks before its first step, in the order it checks it.

A run that cannot finish should fail in seconds, before an MLflow run is opened or a file is written,
not after hours of training. :func:`preflight` is the whole list; each check names what is wrong and
the fix (the errors are :class:`~reid.errors.ReidError` subclasses, which ``reid train`` prints
without a traceback, exit code 2).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reid.checkpoint import LAST_CHECKPOINT, load_checkpoint, read_entry
from reid.config import Config
from reid.data.images import ImageCheck
from reid.data.manifest import Manifest
from reid.engine import distributed as dist_utils
from reid.engine.resume import TrainingData, check_resumable, check_same_data
from reid.errors import CheckpointError
from reid.tracking.mlflow_tracker import Tracker


@dataclass
class Prepared:
    """What the checks found and the run goes on with."""

    checkpoint: dict[str, Any] | None   # the last.pt to resume from (None: a new run)
    tracker: Tracker                    # checked, not started
    manifest: Manifest                  # the samples the run trains and evaluates on
    val_manifest: Manifest | None       # held-out training identities (eval.val_ids), which choose best.pt
    training_data: TrainingData         # what the checkpoints record about the training samples
    image_check: ImageCheck | None = None  # corrupt images left out under data.corrupt_images=skip


def preflight(config: Config, manifest: Manifest | None, resume: bool, ctx: dist_utils.DistContext,
              tracking_base: Path | None, say: Callable[[str], None]) -> Prepared:
    """Run the checks in order; return what the run needs. Nothing is written here."""
    last = Path(config.train.output_dir) / LAST_CHECKPOINT
    # 1. The global batch splits evenly over the processes (P x K per rank).
    dist_utils.check_batch_split(config.data.ids_per_batch, ctx)
    # 2. A resume has a checkpoint of this configuration (the one resume rule: reid.engine.resume).
    checkpoint = _resume_checkpoint(config, last, resume, ctx)
    # 3. A new run's starting weights are on disk: an offline node fails now, with the fixes.
    if checkpoint is None:
        from reid.models.pretrained import require_pretrained

        require_pretrained(config.model)
    # 4. The tracking store answers and is writable.
    tracker = Tracker(config.tracking, rank=ctx.rank, base=tracking_base)
    tracker.check()
    # 5. The MLflow run of a last.pt this run replaces is closed if a SIGKILL left it RUNNING.
    if checkpoint is None and last.is_file() and ctx.is_main:
        abandoned = read_entry(last, "mlflow_run_id")
        if tracker.close_abandoned(abandoned):
            say(f"MLflow run {abandoned} of the replaced {last} was left RUNNING; marked KILLED")
    # 6. The data: the manifest, then an evaluation that can work and images of every split that decode.
    if manifest is None:
        from reid.data.manifest import load_manifest

        manifest = load_manifest(config.data.manifest)
    image_check = None
    if checkpoint is None or int(checkpoint.get("epoch", 0)) < config.train.epochs:
        image_check = _check_data(config, manifest, say)
    # 7. The validation split, held out of the training identities.
    val_manifest = None
    if config.eval.val_ids > 0:
        from reid.data.validation import hold_out_identities

        manifest, val_manifest = hold_out_identities(manifest, config.eval.val_ids, config.train.seed)
        say(f"validation split: {config.eval.val_ids} training identities held out "
            f"({len(val_manifest.query)} query / {len(val_manifest.gallery)} gallery images); "
            "best.pt is chosen on them")
    # 8. The run's identity: the training samples a resume must share with its checkpoint.
    training_data = TrainingData.of(manifest, config.data.manifest)
    if checkpoint is not None:
        check_same_data(checkpoint, training_data, last)
    return Prepared(checkpoint, tracker, manifest, val_manifest, training_data, image_check)


def _resume_checkpoint(config: Config, last: Path, resume: bool, ctx: dist_utils.DistContext) -> dict[str, Any] | None:
    if not resume:
        if last.is_file() and ctx.is_main:
            warnings.warn(f"{last} exists and will be overwritten by this new run; "
                          "pass --resume to continue it instead", stacklevel=4)
        return None
    if not last.is_file():
        raise CheckpointError(f"nothing to resume: {last} does not exist; train without --resume "
                              "(or set train.output_dir to the folder of the run to continue)")
    checkpoint = load_checkpoint(last, map_location="cpu")
    check_resumable(checkpoint, config, last)
    return checkpoint


def _check_data(config: Config, manifest: Manifest, say: Callable[[str], None]) -> ImageCheck:
    """An evaluation that cannot work must not cost a training run; every corrupt image of every split
    is found now, all at once (one error listing them under ``fail``; named once each under ``skip``).

    Data without camera ids (``manifest.has_cameras`` false) is scored without the same-camera rule.
    """
    from reid.data.checks import check_evaluable
    from reid.data.images import check_split_images

    check_evaluable(manifest, config.eval.cross_camera and manifest.has_cameras)
    found = check_split_images(manifest, config.data.corrupt_images)
    for warning in found.warnings():
        say(f"warning: {warning}")
    return found
