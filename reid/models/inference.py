"""A trained model back from a reid checkpoint, ready for feature extraction or as a KD teacher, and its
inference-only view (:class:`InferenceModule`, what an export holds) with the hash that names its weights.

The model is rebuilt from the configuration stored *in the checkpoint* (not today's params), so a
checkpoint always describes itself; its weights are then loaded strictly. Before that,
:func:`check_compatible` turns PyTorch's long ``load_state_dict`` error into the one or two facts that
matter ("checkpoint has 751 classes, model has 16", "was trained with backbone resnet50, the model
is resnet18") plus the first mismatching keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from reid.config import Config, ConfigError, validate
from reid.checkpoint import load_checkpoint
from reid.errors import CheckpointError
from reid.models.backbones import infer_backbone_name
from reid.models.reid_model import ReIDModel, build_model, global_average_pool

_SHOWN = 6  # keys listed per kind of mismatch


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:_SHOWN]) + (f", ... (+{len(keys) - _SHOWN})" if len(keys) > _SHOWN else "")


def check_compatible(state_dict: Mapping[str, Any], model: ReIDModel, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming why ``state_dict`` cannot be loaded strictly into ``model``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {list(v.shape)} vs {list(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and isinstance(v, Tensor) and v.shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    facts: list[str] = []
    saved_backbone = infer_backbone_name(state_dict, "backbone.")
    if saved_backbone is not None and saved_backbone != model.backbone_name:
        facts.append(f"{source} was trained with backbone {saved_backbone}, the model is {model.backbone_name}")
    weight = state_dict.get("classifier.weight")
    if isinstance(weight, Tensor) and weight.dim() == 2 and weight.shape[0] != model.num_classes:
        facts.append(f"{source} has {weight.shape[0]} classes, the model has {model.num_classes}")
    saved_neck = any(k.startswith("neck.") for k in state_dict)
    model_neck = any(k.startswith("neck.") for k in own)
    if saved_neck != model_neck:
        facts.append(f"{source} {'has' if saved_neck else 'has no'} BN-neck, the model "
                     f"{'has one' if model_neck else 'has none'} (model.neck)")
    details = []
    if shapes:
        details.append(f"shape mismatches: {_some(shapes)}")
    if missing:
        details.append(f"missing from {source}: {_some(missing)}")
    if unexpected:
        details.append(f"not in the model: {_some(unexpected)}")
    raise CheckpointError(
        f"{source} does not fit the model: " + ("; ".join(facts) + ". " if facts else "") + "; ".join(details)
    )


def load_inference_model(checkpoint_path: Path | str, device: torch.device | str) -> tuple[ReIDModel, Config]:
    """The checkpoint's model in eval mode on ``device``, and the configuration it was trained with.

    On CUDA the model is put in channels-last memory format when its configuration asks for it, as the
    trainer does (faster convolutions); this changes no value.
    """
    path = Path(checkpoint_path)
    state = load_checkpoint(path, map_location="cpu")
    absent = [k for k in ("config", "num_classes", "model") if k not in state]
    if absent:
        raise CheckpointError(f"{path} lacks {', '.join(absent)}; was it written by `reid train`?")
    try:
        config = validate(state["config"], f"the configuration stored in {path}")
    except ConfigError as exc:
        raise CheckpointError(f"{exc}\n(was {path} written by another version of reid?)") from None
    num_classes = int(state["num_classes"])
    weights = state["model"]
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path}: 'model' is a {type(weights).__name__}, not a state dict")
    model = build_model(config, num_classes)
    check_compatible(weights, model, source=str(path))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied; shapes and names were checked above
        raise CheckpointError(f"{path}: the weights do not load: {exc}") from None
    device = torch.device(device)
    model = model.to(device)
    if device.type == "cuda" and config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    return model, config


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


def weights_hash(module: Any) -> str:
    """SHA-256 (first 16 hex digits) of a module's state dict: names, dtypes, shapes and bytes.

    Two checkpoints of one run (``best.pt``, ``last.pt``) share a run id and a data hash but not their
    weights; this is what tells their features apart.
    """
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def model_identity(model: ReIDModel, backbone: str) -> dict[str, str]:
    """What a measurement of ``model`` belongs to (e.g. its same-identity threshold): the ``weights_hash``
    its export's contract will carry, and the backbone; a stand-in without a backbone gets the backbone only.

    Called during training too (the validation threshold), so the modes of the model's modules, which
    :class:`InferenceModule` switches to eval, are put back as they were."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        return {"weights_hash": weights_hash(InferenceModule(model)), "backbone": str(backbone)}
    except AttributeError:
        return {"backbone": str(backbone)}
    finally:
        for m, training in modes:
            m.training = training
