"""The preprocessing contract of an exported model, stored in the file and checked before use.

The recurring export bug in ReID code bases is not the graph but its inputs: features computed on
images normalised twice, in BGR, at another size, or compared with a gallery of another model. Every
exported file therefore carries, as string key/values (ONNX ``metadata_props``, TorchScript
``_extra_files``), what a caller must do to an image before the graph and what comes out:

* input: ``input_height`` x ``input_width``, ``channel_order`` RGB, layout NCHW float32, value
  ``(uint8 / 255 - mean) / std`` (``mean``/``std`` as JSON lists); the batch size is free;
* resize (how a crop of any size gets to ``input_height`` x ``input_width``; a tracker must copy it or
  accept the difference, :mod:`reid.deploy.resize`): ``resize`` (the method's name,
  ``bilinear-antialias``), ``resize_interpolation`` bilinear, ``resize_antialias`` true,
  ``resize_align_corners`` false (half-pixel centres), ``resize_rounding`` (float32 result rounded
  half-to-even to uint8 before ``/ 255``), ``resize_aspect`` (stretched, aspect ratio not kept, no padding);
* output: ``embedding_dim`` floats per image, *not* L2-normalised (``output_l2_normalized``: the
  graph is the evaluation's model; the distance normalises, see ``eval_normalize``/``eval_distance``);
* ``flip``: test-time flip averaging (``eval.flip``) is not in the graph: run the graph on the image
  and on its mirror and sum the two embeddings, as the evaluation does (``eval_flip`` is the setting
  the model was evaluated with);
* where it came from: ``backbone``, ``data_hash`` (the training manifest), ``mlflow_run_id``,
  ``checkpoint``, ``weights_hash`` (:func:`weights_hash` of the inference module), ``reid_version``,
  ``format`` (:data:`FORMAT`, the marker that the rest is there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from reid.deploy.resize import CONTRACT_RESIZE
from reid.errors import ReidError
from reid.version import __version__

FORMAT = "reid-export-v1"
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
VALUE_RANGE = "uint8 RGB / 255, then (x - mean) / std per channel"
FLIP_NOTE = "not in the graph: with eval_flip, embed the image and its left-right mirror and sum"

#: The resize of the contract, spelled out (what :func:`reid.data.transforms.resize_uint8` does).
RESIZE_CONTRACT = {
    "resize": CONTRACT_RESIZE,
    "resize_interpolation": "bilinear",
    "resize_antialias": "true",
    "resize_align_corners": "false",
    "resize_rounding": "computed in float32 on the uint8 values, rounded half-to-even and clamped to uint8, then / 255",
    "resize_aspect": "stretched to input_height x input_width (aspect ratio not kept, no padding)",
    "resize_reference": "torch.nn.functional.interpolate(x.float(), (H, W), mode='bilinear', align_corners=False, "
                        "antialias=True).round().clamp(0, 255).to(uint8)",
}

#: Keys a feature file and a model must agree on to be compared.
COMPATIBILITY_KEYS = ("embedding_dim", "backbone", "input_height", "input_width", "mean", "std", "data_hash",
                      "weights_hash")


class ContractError(ReidError):
    """A model file without our metadata, or a gallery extracted by another model."""


def build_contract(config: Any, embedding_dim: int, *, data_hash: str | None, run_id: str | None,
                   checkpoint: Path | str | None, weights: str) -> dict[str, str]:
    """The metadata of a model trained with ``config`` (a :class:`reid.config.Config`)."""
    return {
        "format": FORMAT,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_height": str(int(config.data.height)),
        "input_width": str(int(config.data.width)),
        "channel_order": "RGB",
        "layout": "NCHW float32",
        "value_range": VALUE_RANGE,
        **RESIZE_CONTRACT,
        "mean": json.dumps([float(v) for v in config.data.mean]),
        "std": json.dumps([float(v) for v in config.data.std]),
        "embedding_dim": str(int(embedding_dim)),
        "output_l2_normalized": "false",
        "eval_normalize": str(bool(config.eval.normalize)).lower(),
        "eval_distance": str(config.eval.distance),
        "eval_flip": str(bool(config.eval.flip)).lower(),
        "flip": FLIP_NOTE,
        "backbone": str(config.model.backbone),
        "neck_feat": str(config.model.neck_feat) if config.model.neck == "bnneck" else "before",
        "data_hash": str(data_hash or ""),
        "weights_hash": weights,
        "mlflow_run_id": str(run_id or ""),
        "checkpoint": str(checkpoint or ""),
        "reid_version": __version__,
    }


def require_contract(meta: Mapping[str, str], path: Path | str) -> dict[str, str]:
    """``meta`` as a dict when it carries our contract; else a :class:`ContractError` naming ``path``."""
    meta = dict(meta)
    if meta.get("format") != FORMAT:
        raise ContractError(
            f"{path} has no reid metadata (key 'format' = {FORMAT!r} missing): it was not written by "
            "`reid export`, so its input size, normalisation and channel order are unknown. Export the "
            "checkpoint with `reid export CHECKPOINT --format onnx --output FILE`."
        )
    missing = [k for k in ("input_height", "input_width", "mean", "std", "embedding_dim") if not meta.get(k)]
    if missing:
        raise ContractError(f"{path}: reid metadata lacks {', '.join(missing)}; re-export it with `reid export`")
    return meta


def mean_std(meta: Mapping[str, str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(json.loads(meta["mean"])), tuple(json.loads(meta["std"]))


def normalizes(meta: Mapping[str, str]) -> bool:
    """Whether features are L2-normalised before distances (cosine always normalises)."""
    return meta.get("eval_normalize", "true") == "true" or meta.get("eval_distance", "cosine") == "cosine"


def check_same_model(gallery_meta: Mapping[str, str], model_meta: Mapping[str, str], gallery_path: Path | str,
                     model_path: Path | str) -> None:
    """Raise :class:`ContractError` when features of ``model_path`` cannot be compared with the gallery.

    Features of two different models live in different spaces even at the same dimension; comparing
    them gives confident nonsense, so every key of :data:`COMPATIBILITY_KEYS` must agree.
    """
    diffs = [f"{k}: gallery {gallery_meta.get(k, '?')!s}, model {model_meta.get(k, '?')!s}"
             for k in COMPATIBILITY_KEYS if str(gallery_meta.get(k, "")) != str(model_meta.get(k, ""))]
    if diffs:
        raise ContractError(
            f"gallery {gallery_path} was extracted by another model than {model_path} ({'; '.join(diffs)}). "
            f"Re-extract it with this model: reid extract ... --model {model_path} --output {gallery_path}"
        )


def save_onnx_with_metadata(proto: Any, meta: dict[str, str], path: Path, title: str) -> None:
    """Replace ``proto``'s metadata with ``meta`` (the contract every consumer reads), check it, save it."""
    import onnx

    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    proto.doc_string = f"{title}: " + json.dumps(meta, sort_keys=True)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
