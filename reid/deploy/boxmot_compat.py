"""What BoxMOT's ReID backend needs from an exported file, and a check that it gets it (``reid export --for boxmot``).

Read from BoxMOT 25.0.0's own code (``boxmot/reid/core/runtime.py``, ``core/formats.py``,
``core/artifacts.py``, ``core/crops.py``, ``core/preprocessing.py``, ``backends/base_backend.py``,
``backends/onnx_backend.py``, ``backends/torchscript_backend.py``):

* the backend is picked from the file's suffix alone: ``.onnx`` (ONNX Runtime) or ``.torchscript``
  (``torch.jit.load``); ``.pt`` makes it build one of *its* architectures (it cannot build a BNNeck
  model: that is why strong-baseline checkpoints never loaded) and ``.ts`` is refused;
* a sidecar ``<file>.metadata.json`` (``<file>`` with its suffix, e.g. ``model.onnx.metadata.json``)
  gives ``model_name`` and ``model_kwargs.img_size`` ([H, W], schema version 1). With a ``model_name``
  there BoxMOT never ``torch.load``s the file to guess one (which it would do with ``weights_only=False``)
  nor matches the file name against its architectures; without ``img_size`` it assumes 256 x 128 and
  logs that the ONNX graph's fixed size overrides it;
* ONNX: the first input and first output of the graph, whatever their names, NCHW float32, any batch
  (a fixed batch is honoured too);
* crops: boxes rounded to integer pixels and clipped to the frame (``frame[y1:y2, x1:x2]``, BGR),
  ``cv2.resize(crop, (W, H), interpolation=cv2.INTER_LINEAR)`` (no antialiasing; the alternative
  ``resize_pad`` keeps the aspect ratio), BGR -> RGB, ``/ 255``, then ImageNet mean/std, fixed in the
  code (``mean_array``/``std_array``: no file can change them);
* output: L2-normalised by BoxMOT after the graph (so our un-normalised output is what it expects);
  no flip averaging.

So a model of ours fits as it is when it was trained with ImageNet mean/std (the recipe's default), once
its file has the BoxMOT suffix and the sidecar. One difference remains, the resize: BoxMOT's
``INTER_LINEAR`` is not the contract's antialiased bilinear. :func:`register_preprocess` adds the
contract's resize to BoxMOT's preprocessing registry under :data:`PREPROCESS_NAME`, so a tracker built
with ``reid_preprocess=PREPROCESS_NAME`` computes the features of ``embed`` exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reid.errors import ReidError

#: BoxMOT's fixed normalisation (``boxmot/reid/backends/base_backend.py``: ``mean_array``, ``std_array``).
BOXMOT_MEAN = (0.485, 0.456, 0.406)
BOXMOT_STD = (0.229, 0.224, 0.225)
#: The suffix BoxMOT maps to each of our export formats (``boxmot/reid/core/formats.py``).
BOXMOT_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript"}
#: The name :func:`register_preprocess` gives the contract's resize in BoxMOT's preprocessing registry.
PREPROCESS_NAME = "reid_bilinear_antialias"
#: BoxMOT's own default preprocessing (``cv2.INTER_LINEAR``, no antialiasing).
BOXMOT_DEFAULT_PREPROCESS = "resize"
SIDECAR_SCHEMA_VERSION = 1  # boxmot.reid.core.artifacts.ARTIFACT_METADATA_SCHEMA_VERSION
MODEL_KWARGS_SCHEMA_VERSION = 1  # boxmot.reid.core.artifacts.MODEL_KWARGS_SCHEMA_VERSION
INSTALL_HINT = "pip install 'reid-toolkit[trackers]' (or pip install boxmot)"


def check_exportable(fmt: str, output: Path | str, mean: Sequence[float], std: Sequence[float]) -> None:
    """Refuse, before exporting, what BoxMOT would load wrongly or not at all (the error says the fix)."""
    output = Path(output)
    wanted = BOXMOT_SUFFIX.get(fmt)
    if wanted is None:
        raise ReidError(f"--for boxmot: BoxMOT loads {', '.join(BOXMOT_SUFFIX)} exports, not {fmt!r}")
    if output.suffix.lower() != wanted:
        raise ReidError(f"--for boxmot: BoxMOT picks its backend from the file suffix and needs {wanted!r} for "
                        f"{fmt}; got {output.name!r}. Use --output {output.with_suffix(wanted)}")
    if not (np.allclose(mean, BOXMOT_MEAN, atol=1e-6) and np.allclose(std, BOXMOT_STD, atol=1e-6)):
        raise ReidError(
            f"--for boxmot: the model was trained with data.mean={list(mean)} data.std={list(std)}, but BoxMOT "
            f"always normalises with ImageNet's mean={list(BOXMOT_MEAN)} std={list(BOXMOT_STD)} (fixed in its "
            "code), so its features would be wrong. Train with the default data.mean/data.std to use it in BoxMOT.")


def sidecar_path(model_file: Path | str) -> Path:
    """``model.onnx`` -> ``model.onnx.metadata.json`` (``boxmot.reid.core.artifacts.artifact_metadata_path``)."""
    path = Path(model_file)
    return path.with_suffix(f"{path.suffix}.metadata.json")


def write_sidecar(model_file: Path | str, meta: Mapping[str, str], fmt: str) -> Path:
    """The metadata file BoxMOT reads beside ``model_file``; our whole contract rides along under ``reid``."""
    from reid.atomic import write_text_atomic

    model_file = Path(model_file)
    size = [int(meta["input_height"]), int(meta["input_width"])]
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    payload = {
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "format": fmt,
        # Not one of BoxMOT's architecture names: it builds nothing for ONNX/TorchScript and must not try.
        "model_name": f"reid_{meta.get('backbone', 'model')}",
        "model_kwargs_schema_version": MODEL_KWARGS_SCHEMA_VERSION,
        "model_kwargs": {"img_size": size},
        "img_size": size,
        "preprocess": BOXMOT_DEFAULT_PREPROCESS,
        "input_name": meta.get("input_name", ""),
        "output_name": meta.get("output_name", ""),
        "dynamic_batch": True,
        "precision": "int8" if meta.get("precision") == "int8" else "float32",
        "artifact_sha256": digest,
        "source": meta.get("checkpoint", ""),
        "reid": dict(meta),
    }
    return write_text_atomic(sidecar_path(model_file), json.dumps(payload, indent=2, sort_keys=True) + "\n")


def import_boxmot() -> Any:
    try:
        import boxmot
    except ImportError:
        raise ReidError(f"BoxMOT is not installed: {INSTALL_HINT}") from None
    logging.getLogger("boxmot").setLevel(logging.WARNING)  # its INFO lines would drown our output
    return boxmot


def boxmot_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("boxmot") is not None


def _contract_resize(crop: np.ndarray, target_shape: tuple[int, int]) -> np.ndarray:
    from reid.deploy.resize import CONTRACT_RESIZE, resize_hwc

    return resize_hwc(crop, target_shape, CONTRACT_RESIZE)


def register_preprocess() -> str:
    """Add the contract's resize to BoxMOT's preprocessing registry; returns its name (:data:`PREPROCESS_NAME`).

    Pass the name as ``reid_preprocess=`` to a BoxMOT tracker (or ``preprocess_name=`` to its ``ReID``)
    and its crops are resized exactly as ``reid`` resizes them; idempotent.
    """
    import_boxmot()
    from boxmot.reid.core import preprocessing

    preprocessing.PREPROCESS_REGISTRY[PREPROCESS_NAME] = _contract_resize
    return PREPROCESS_NAME


def load_backend(model_file: Path | str, preprocess: str | None = None, device: str = "cpu") -> Any:
    """BoxMOT's own ReID backend for ``model_file``, as its trackers build it (``ReID(...).model``)."""
    import_boxmot()
    from boxmot.reid.core import ReID

    if preprocess == PREPROCESS_NAME:
        register_preprocess()
    return ReID(weights=Path(model_file), device=device, half=False, preprocess_name=preprocess).model


def features(backend: Any, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """BoxMOT's features of ``boxes_xyxy`` in a BGR frame: its own cropping, resize and L2 normalisation."""
    return np.asarray(backend.get_features(np.asarray(boxes_xyxy, dtype=np.float32), frame_bgr), dtype=np.float32)


def crops_as_boxmot_cuts(frame: np.ndarray, boxes_xyxy: np.ndarray) -> list[np.ndarray]:
    """The crops BoxMOT cuts for ``boxes_xyxy``: corners rounded to pixels, clipped to the frame."""
    height, width = frame.shape[:2]
    out = []
    for x1, y1, x2, y2 in np.asarray(boxes_xyxy, dtype=np.float32).round().astype(int):
        out.append(frame[max(0, y1):min(height, y2), max(0, x1):min(width, x2)])
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a.astype(np.float64) * b).sum(axis=1)


def load_check(model_file: Path | str, reference: Any, images: Sequence[str], tolerance: float) -> dict[str, Any]:
    """Load ``model_file`` with BoxMOT's backend and compare its features with ``reference`` (an embedder of
    the checkpoint, flip off) on ``images``, each a frame holding one box around the whole image.

    Two numbers: ``min_cosine_contract_resize`` (BoxMOT with :data:`PREPROCESS_NAME`: must reach
    ``tolerance``, else the file does not load as intended) and ``min_cosine_boxmot_resize`` (BoxMOT's
    default ``cv2.INTER_LINEAR``: how far its features sit from ours on these images; informative).
    """
    import cv2

    boxmot = import_boxmot()
    frames = [cv2.imread(str(p)) for p in images]
    if any(f is None for f in frames):
        raise ReidError(f"BoxMOT load check: OpenCV cannot read one of {list(images)[:3]}...")
    ours = reference.embed([f for f in frames], channel_order="bgr", normalize=True)
    result: dict[str, Any] = {"consumer": "boxmot", "boxmot_version": str(boxmot.__version__),
                              "num_images": len(frames), "tolerance": float(tolerance)}
    for label, preprocess in (("contract_resize", PREPROCESS_NAME), ("boxmot_resize", None)):
        backend = load_backend(model_file, preprocess)
        theirs = np.concatenate([features(backend, f, np.array([[0, 0, f.shape[1], f.shape[0]]])) for f in frames])
        cos = _cosine(ours, theirs)
        result[f"min_cosine_{label}"] = float(cos.min())
        result[f"mean_cosine_{label}"] = float(cos.mean())
    result["input_size"] = [int(v) for v in backend.input_shape]
    result["passed"] = bool(result["min_cosine_contract_resize"] >= tolerance)
    return result
