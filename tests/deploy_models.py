"""Briefly trained models saved as ``reid train`` checkpoints, for the tests of exported models.

A few optimiser steps on synthetic images move the BatchNorm running statistics and the weights away
from their initial values, so an export that used batch statistics, or lost a layer, shows; the full
trainer is not used (its end-of-run evaluation would double the time on a shared 2-core CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def deploy_config(root: Path, out: Path, backbone: str, tracked: bool, height: int = 64, width: int = 32):
    """A CPU-sized config of ``backbone`` on the synthetic data at ``root``; outputs under ``out``."""
    from reid.config import validate

    return validate({
        "data": {"root": str(root), "manifest": str(out / "manifest.json"), "height": height, "width": width,
                 "padding": 4, "ids_per_batch": 4, "instances_per_id": 4, "test_batch_size": 64, "num_workers": 0,
                 "input_pipeline": "cpu"},
        "model": {"backbone": backbone, "pretrained": "none", "channels_last": False},
        "optim": {"warmup_epochs": 1, "milestones": [2]},
        "train": {"epochs": 1, "eval_every": 1, "device": "cpu", "amp": "off", "max_steps_per_epoch": 2,
                  "output_dir": str(out / "models" / backbone), "log_every_steps": 1},
        "eval": {"num_ranked_lists": 0},
        "tracking": {"enabled": tracked, "uri": f"sqlite:///{out / 'mlflow.db'}",
                     "artifact_root": str(out / "mlruns"), "experiment": "deploy-tests"},
    }, "deploy test config")


def train_steps(config, manifest, steps: int = 2):
    """A model after a few optimiser steps on synthetic training images, as a ``reid train`` checkpoint.

    The steps move the BatchNorm running statistics and the weights away from their initial values,
    so an export that used batch statistics, or lost a layer, shows in the parity check.
    """
    from reid.data.images import load_images
    from reid.data.transforms import TestTransform
    from reid.models.reid_model import build_model

    torch.manual_seed(0)
    model = build_model(config, manifest.num_classes).train()
    picks = list(range(0, len(manifest.train), max(1, len(manifest.train) // 8)))[:8]
    images, _ = load_images([manifest.train[i] for i in picks])
    batch = TestTransform(config.data)(images)
    labels = torch.as_tensor([manifest.train_labels[i] for i in picks])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(batch)["logits"], labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def save_trained(model, config, manifest, name: str = "last.pt", run_id: str | None = None) -> Path:
    """``model`` as a ``reid train`` checkpoint ``<train.output_dir>/<name>`` (epoch 1, two steps)."""
    from reid.checkpoint import save_checkpoint

    return save_checkpoint({
        "config": config.model_dump(mode="json"), "num_classes": manifest.num_classes,
        "epoch": 1, "global_step": 2, "model": model.state_dict(), "mlflow_run_id": run_id,
        "data_hash": manifest.content_hash,
    }, Path(config.train.output_dir) / name)
