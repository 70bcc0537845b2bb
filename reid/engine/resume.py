"""What ``reid train --resume`` accepts and refuses: one rule, here, for every caller.

A checkpoint holds what the epochs already done learned from: the recipe (model, losses, optimiser,
schedule, sampler, augmentation, seed) and the *training* samples. Resume refuses a change to either,
and accepts everything else (docs/RELIABILITY.md, "What resume accepts"). The keys fall in three groups:

* :data:`OBSERVATION_KEYS`: how a run is evaluated, observed, stored or executed (``eval.*``,
  ``tracking.*``, output folder, device, loader workers, ``data.corrupt_images``, ...). They never
  change the weights a step computes from a batch, so they may change anywhere: on resume, and between
  runs that are still "the same model" (:func:`recipe_differences`, for the MLflow ``variant`` tag).
* :data:`CONTINUATION_KEYS`: how long training goes on (``train.epochs``), where the first weights came
  from (``model.pretrained*``: a resumed run starts from the checkpoint instead), and how the data is
  located and read (``data.root``, ``data.manifest``, ``data.format``, reader options). The data is
  judged by its effect instead: the manifest's training samples (:func:`reid.data.manifest.training_hash`)
  must be the ones the checkpoint learned from, while its query and gallery may differ (a corrupt test
  image deleted and the dataset re-prepared).
* every other key is training-relevant: a difference refuses the resume, naming each key.

``data.corrupt_images`` is an observation key: a run that completed epochs under ``fail`` met no
corrupt training image in them, so switching to ``skip`` changes nothing already learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from reid.config import Config, flatten
from reid.errors import CheckpointError

OBSERVATION_KEYS: tuple[str, ...] = (
    "train.eval_every", "train.log_every_steps", "train.output_dir", "train.device", "train.compile",
    "train.nproc", "train.gpu_busy",
    "data.num_workers", "data.test_batch_size", "data.input_pipeline", "data.corrupt_images", "eval.", "tracking.",
)
CONTINUATION_KEYS: tuple[str, ...] = (
    "train.epochs", "model.pretrained", "model.pretrained_path",
    "data.root", "data.manifest", "data.format", "data.sources", "data.allow_id_overlap", "data.cameras",
    "data.cuhk03_variant", "data.msmt17_use_val", "data.vehicleid_test_size",
)
# Dotted keys (or "section." prefixes) that may differ between a checkpoint and the resuming run.
RESUMABLE_CHANGES: tuple[str, ...] = OBSERVATION_KEYS + CONTINUATION_KEYS
REQUIRED_RESUME_KEYS = ("config", "num_classes", "epoch", "global_step", "model", "optimizers", "schedulers")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in patterns)


def training_relevant(key: str) -> bool:
    """True for a dotted key whose change refuses a resume (the one rule; see the module docstring)."""
    return not _matches(key, RESUMABLE_CHANGES)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], ignored: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    a, b = flatten(dict(old)), flatten(dict(new))
    return {key: (a.get(key, "<absent>"), b.get(key, "<absent>")) for key in sorted(set(a) | set(b))
            if not _matches(key, ignored) and a.get(key, "<absent>") != b.get(key, "<absent>")}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved, current)}`` for every differing training-relevant key."""
    return _differences(saved, current, RESUMABLE_CHANGES)


def recipe_differences(base: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys that make ``current`` another model than ``base`` (everything but :data:`OBSERVATION_KEYS`):
    a run whose overrides change one of them is not the params variant it started from."""
    return _differences(base, current, OBSERVATION_KEYS)


def check_resumable(state: Mapping[str, Any], config: Config, path: Path) -> None:
    """Refuse a checkpoint that cannot continue this configuration, naming what differs."""
    missing = [k for k in REQUIRED_RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} cannot be resumed: it lacks {', '.join(missing)} "
            "(only last.pt written by `reid train` holds the optimiser and sampler state; best.pt does not)"
        )
    saved = state["config"]
    saved_backbone = (saved.get("model") or {}).get("backbone")
    if saved_backbone != config.model.backbone:
        raise CheckpointError(
            f"{path} was trained with backbone {saved_backbone!r}, this run uses {config.model.backbone!r}; "
            "resume with the configuration it was trained with, or start a new run in another train.output_dir"
        )
    diffs = config_differences(saved, config.model_dump(mode="json"))
    if diffs:
        lines = "\n".join(f"  - {k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"cannot resume from {path}: the configuration differs in keys that change training:\n{lines}\n"
            f"Undo these changes to resume (keys that may change: {', '.join(RESUMABLE_CHANGES)}; "
            "see docs/RELIABILITY.md), or train without --resume / into another train.output_dir"
        )


@dataclass(frozen=True)
class TrainingData:
    """What a run trains on, as a checkpoint records it (and a resume compares it)."""

    manifest: str          # the manifest file the samples were read from
    content_hash: str | None  # the whole manifest (train, query, gallery)
    train_hash: str        # the training samples alone (reid.data.manifest.training_hash)
    num_classes: int
    num_images: int

    @classmethod
    def of(cls, manifest: Any, manifest_path: Path | str) -> "TrainingData":
        from reid.data.manifest import training_hash

        train = list(manifest.train)
        root = str(getattr(manifest, "root", "") or "/")
        return cls(manifest=str(manifest_path), content_hash=getattr(manifest, "content_hash", None),
                   train_hash=training_hash(train, root), num_classes=int(manifest.num_classes),
                   num_images=len(train))

    def entries(self) -> dict[str, Any]:
        """Checkpoint keys: ``data_hash`` (the whole manifest: ``reid evaluate`` tells the model's own data
        from another dataset by it, and the export contract records it), ``train_data_hash``,
        ``data_manifest``, ``num_train_images``."""
        return {"data_hash": self.content_hash, "train_data_hash": self.train_hash, "data_manifest": self.manifest,
                "num_train_images": self.num_images}


def check_same_data(state: Mapping[str, Any], data: TrainingData, path: Path) -> None:
    """Refuse a resume on other training samples; the error names the manifest the checkpoint learned from.

    Checkpoints written before ``train_data_hash`` existed are compared by the whole manifest's hash.
    """
    saved_manifest = state.get("data_manifest") or ((state.get("config") or {}).get("data") or {}).get("manifest")
    trained_on = f"{saved_manifest}" if saved_manifest else "the manifest it was trained on"
    if int(state["num_classes"]) != int(data.num_classes):
        raise CheckpointError(
            f"{path} has a classifier for {state['num_classes']} identities but the training data of {data.manifest} "
            f"has {data.num_classes}; it was trained on {trained_on}: resume with that manifest "
            "(-o data.manifest=PATH), or train without --resume / into another train.output_dir"
        )
    saved_train = state.get("train_data_hash")
    if saved_train:
        same, what, old, new = saved_train == data.train_hash, "training samples", saved_train, data.train_hash
    else:
        saved_hash = state.get("data_hash")
        same = not (saved_hash and data.content_hash and saved_hash != data.content_hash)
        what, old, new = "manifest", str(saved_hash), str(data.content_hash)
    if not same:
        counts = (f" ({state['num_train_images']} training images then, {data.num_images} now)"
                  if state.get("num_train_images") is not None else "")
        raise CheckpointError(
            f"{path} was trained on other data: the {what} of {data.manifest} differ from those of {trained_on} "
            f"it was trained on (hash {old[:12]}, now {new[:12]}){counts}. Resume with the manifest it was trained "
            f"on (-o data.manifest=PATH, or re-prepare the same training split), or train without --resume / into "
            "another train.output_dir. A changed query or gallery alone does not block a resume"
        )
