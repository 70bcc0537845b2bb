"""The inference-only module of a trained model, and its contract, from a ``reid train`` checkpoint.

Export and embedding both start here, so the graph that is exported, the weights hash in its
metadata and the features ``load_model(checkpoint)`` computes are the same thing by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reid.models.reid_model import ReIDModel, global_average_pool


class InferenceModule(nn.Module):
    """Backbone -> global average pooling -> BN-neck (when the test feature is taken after it).

    Holds only what the eval-mode embedding uses: the classifier and every distillation head are left
    out, so an exported file carries no training-only weights (and no class count). It computes
    exactly :meth:`ReIDModel.embed`; the parity check of :mod:`reid.deploy.export` verifies that on
    real images after every export.
    """

    def __init__(self, model: ReIDModel) -> None:
        super().__init__()
        self.backbone = model.backbone
        use_neck = model.neck_type == "bnneck" and model.neck_feat == "after"
        self.neck: nn.Module = model.neck if use_neck else nn.Identity()
        self.embedding_dim = model.embedding_dim
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.neck(global_average_pool(self.backbone(images)))


def load_checkpoint_module(checkpoint: Path | str, device: torch.device | str = "cpu"
                           ) -> tuple[ReIDModel, InferenceModule, Any, dict[str, str]]:
    """``(full model, inference module, training config, contract)`` of a checkpoint, in eval mode.

    Raises :class:`reid.errors.CheckpointError` for a file that is not a ``reid train`` checkpoint.
    """
    from reid.deploy.contract import build_contract, weights_hash
    from reid.checkpoint import read_entry
    from reid.models.inference import load_inference_model

    path = Path(checkpoint)
    model, config = load_inference_model(path, device)
    module = InferenceModule(model)
    contract = build_contract(config, model.embedding_dim, data_hash=read_entry(path, "data_hash"),
                              run_id=read_entry(path, "mlflow_run_id"), checkpoint=path.name,
                              weights=weights_hash(module))
    return model, module, config, contract


def model_identity(model: ReIDModel, backbone: str) -> dict[str, str]:
    """What a measurement of ``model`` belongs to (e.g. its same-identity threshold): the ``weights_hash``
    its export's contract will carry, and the backbone; a stand-in without a backbone gets the backbone only."""
    from reid.deploy.contract import weights_hash

    try:
        return {"weights_hash": weights_hash(InferenceModule(model)), "backbone": str(backbone)}
    except AttributeError:
        return {"backbone": str(backbone)}
