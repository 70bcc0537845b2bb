"""A manifest as an MLflow dataset input, so that the runs table's Dataset column and filter work.

Why not only tags: MLflow's UI fills the Dataset column (and its Datasets filter, and the dataset
drawer of a run) from *dataset inputs* (``log_inputs``), never from tags or artifacts. A run of the
pipeline therefore records the manifest it trained on as an input with context ``train``, and
``reid evaluate --target`` records each cross-domain target as an input with context ``eval``.

What identifies the data is the manifest's content hash (the same hash that checkpoints carry as
``data_hash`` and that decides whether an evaluation is cross-domain): its first
:data:`DIGEST_CHARS` characters are the digest (MLflow allows 36), the full hash is in the profile
beside the split sizes. The source is the dataset's root folder (a ``local`` source).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: MLflow's input-tag key for what a dataset was used for (``mlflow.data.context``).
CONTEXT_TAG = "mlflow.data.context"
TRAIN_CONTEXT = "train"
EVAL_CONTEXT = "eval"
DIGEST_CHARS = 12  # as the commands print hashes; MLflow allows up to 36


def dataset_profile(manifest: Any) -> dict[str, Any]:
    """Split sizes and identity counts of a manifest, the profile MLflow shows with the dataset."""

    splits = {name: list(getattr(manifest, name, None) or []) for name in ("train", "query", "gallery")}
    profile: dict[str, Any] = {}
    for name, samples in splits.items():
        profile[f"{name}_images"] = len(samples)
        profile[f"{name}_ids"] = len({s.pid for s in samples})
    return {
        **profile,
        "num_classes": int(getattr(manifest, "num_classes", 0) or 0),
        "format": str(getattr(manifest, "format", "") or ""),
        "protocol": str(getattr(manifest, "protocol", "standard")),
        "content_hash": str(getattr(manifest, "content_hash", "") or ""),
    }


def dataset_input(manifest: Any, context: str, name: str | None = None) -> Any:
    """The :class:`mlflow.entities.DatasetInput` of ``manifest`` (named ``name`` or the manifest's name)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    content_hash = str(getattr(manifest, "content_hash", "") or "")
    root = str(getattr(manifest, "root", "") or "")
    dataset = Dataset(
        name=name or str(getattr(manifest, "name", "") or Path(root).name or "dataset"),
        digest=content_hash[:DIGEST_CHARS] or "unknown",
        source_type="local",
        source=json.dumps({"uri": root}),
        profile=json.dumps(dataset_profile(manifest)),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(key=CONTEXT_TAG, value=context)])


def log_dataset(client: Any, run_id: str, manifest: Any, context: str, name: str | None = None) -> None:
    """Record ``manifest`` as an input of run ``run_id`` (``client``: an ``MlflowClient``)."""
    client.log_inputs(run_id, datasets=[dataset_input(manifest, context, name)])
