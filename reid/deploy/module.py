"""The inference-only module of a trained model, and its contract, from a ``reid train`` checkpoint.

Export and embedding both start here, so the graph that is exported, the weights hash in its
metadata and the features ``load_model(checkpoint)`` computes are the same thing by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reid.models.inference import InferenceModule, weights_hash
from reid.models.reid_model import ReIDModel


def load_checkpoint_module(checkpoint: Path | str, device: torch.device | str = "cpu"
                           ) -> tuple[ReIDModel, InferenceModule, Any, dict[str, str]]:
    """``(full model, inference module, training config, contract)`` of a checkpoint, in eval mode.

    Raises :class:`reid.errors.CheckpointError` for a file that is not a ``reid train`` checkpoint.
    """
    from reid.deploy.contract import build_contract
    from reid.checkpoint import read_entry
    from reid.models.inference import load_inference_model

    path = Path(checkpoint)
    model, config = load_inference_model(path, device)
    module = InferenceModule(model)
    contract = build_contract(config, model.embedding_dim, data_hash=read_entry(path, "data_hash"),
                              run_id=read_entry(path, "mlflow_run_id"), checkpoint=path.name,
                              weights=weights_hash(module))
    return model, module, config, contract
