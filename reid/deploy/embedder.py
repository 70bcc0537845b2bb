"""``load_model(path)``: embed images with a checkpoint, an ONNX file or a TorchScript file.

Every embedder applies the evaluation's preprocessing (as :class:`reid.data.transforms.TestTransform`:
antialiased bilinear resize of the uint8 image to the model's size, ``/ 255``, mean/std) to whatever it
is given, then runs the model; with ``flip`` it adds the embedding of the mirrored image, as
:func:`reid.evaluation.features.extract_features` does. So ``load_model(last.pt).embed(query paths,
normalize=False)`` is the evaluation's query feature matrix.

Accepted images: paths (decoded by :func:`reid.data.images.decode_image`, the one decoder of the
toolkit), PIL images, uint8 numpy arrays or tensors in HWC or CHW (or a 4-D batch of either), of any
size. Arrays and tensors are RGB unless the caller says ``channel_order="bgr"`` (what OpenCV and the
trackers hand over: ``frame[y1:y2, x1:x2]`` of a ``cv2.imread`` / video frame); paths and PIL images
carry their own order and are always read as RGB.

The resize is the contract's (``resize`` in the metadata, :mod:`reid.deploy.resize`);
``load_model(..., resize="opencv-linear")`` instead resizes as BoxMOT and most trackers do, to
reproduce their features or measure what their resize costs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from reid.deploy.contract import mean_std, normalizes, require_contract
from reid.errors import ReidError

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".jit")
TS_META_FILE = "reid_metadata.json"
ChannelOrder = Literal["rgb", "bgr"]
CHANNEL_ORDERS = ("rgb", "bgr")


def to_uint8_chw(image: Any, channel_order: str = "rgb") -> torch.Tensor:
    """One image as a uint8 ``[3, H, W]`` RGB tensor (see the module docstring for what is accepted);
    ``channel_order`` says what an array or tensor holds (``bgr`` ones are reversed)."""
    from reid.data.images import decode_image

    if channel_order not in CHANNEL_ORDERS:
        raise ReidError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {channel_order!r}")
    if isinstance(image, (str, Path)):
        return decode_image(str(image))
    if type(image).__module__.startswith("PIL."):
        image = np.asarray(image.convert("RGB"))
        channel_order = "rgb"
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise ReidError(f"cannot embed a {type(image).__name__}: give paths, PIL images or uint8 arrays/tensors")
    if image.dtype != torch.uint8:
        raise ReidError(f"images must be uint8 (0..255 RGB), got {image.dtype}; convert with (x * 255).round().to(uint8)"
                        " if it is in 0..1")
    if image.dim() == 3 and image.shape[-1] == 3 and image.shape[0] != 3:
        image = image.permute(2, 0, 1)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ReidError(f"an image must be [H, W, 3] or [3, H, W] RGB, got shape {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ReidError(f"an image must have at least one pixel, got shape {tuple(image.shape)} (an empty crop: "
                        "check that the box lies inside the frame)")
    if channel_order == "bgr":
        image = image.flip(0)
    return image.contiguous()


def _as_list(images: Any) -> list[Any]:
    """A batch (4-D array/tensor), one image, or an iterable of images -> a list of images."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, Path)) or type(images).__module__.startswith("PIL."):
        return [images]
    return list(images)


class Embedder:
    """Base of the three embedders: preprocessing, batching, flip and normalisation.

    Attributes: ``metadata`` (the contract, :mod:`reid.deploy.contract`), ``input_size`` ``(H, W)``,
    ``device``, ``embedding_dim``, ``flip`` (default: the ``eval.flip`` the model was evaluated with),
    ``normalize`` (whether :meth:`embed` L2-normalises by default: ``eval.normalize`` or a cosine
    distance), ``source`` (the file).
    """

    kind = "model"

    def __init__(self, source: Path, metadata: dict[str, str], device: torch.device, flip: bool | None,
                 resize: str | None = None) -> None:
        from reid.deploy.resize import CONTRACT_RESIZE, check_method

        self.source = Path(source)
        self.metadata = require_contract(metadata, source)
        self.device = torch.device(device)
        self.input_size = (int(self.metadata["input_height"]), int(self.metadata["input_width"]))
        self.embedding_dim = int(self.metadata["embedding_dim"])
        self.flip = (self.metadata.get("eval_flip") == "true") if flip is None else bool(flip)
        self.normalize = normalizes(self.metadata)
        self.mean, self.std = mean_std(self.metadata)
        # Files exported before the resize was written down used the same resize as now.
        self.resize = check_method(resize or self.metadata.get("resize", CONTRACT_RESIZE))

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        """The model on a normalised float batch on ``self.device`` -> float32 ``[B, D]``."""
        raise NotImplementedError

    def embed_batch(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw embeddings (float32 ``[B, D]``, CPU) of uint8 CHW images, flip included when set."""
        from reid.data.transforms import normalize
        from reid.deploy.resize import resize_batch

        batch = normalize(resize_batch([img.to(self.device) for img in images], self.input_size, self.resize),
                          self.mean, self.std)
        feats = self._run(batch)
        if self.flip:
            feats = feats + self._run(torch.flip(batch, dims=[3]))
        return feats.float().cpu()

    def embed(self, images: Any, batch_size: int = 64, normalize: bool | None = None,
              channel_order: ChannelOrder = "rgb") -> np.ndarray:
        """Embeddings of ``images`` as float32 ``[N, D]``, L2-normalised when ``normalize`` (default
        :attr:`normalize`), in input order. ``channel_order="bgr"`` for OpenCV crops (module docstring)."""
        items = _as_list(images)
        if not items:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        chunks = [self.embed_batch([to_uint8_chw(x, channel_order) for x in items[i:i + batch_size]])
                  for i in range(0, len(items), batch_size)]
        return finish(torch.cat(chunks), self.normalize if normalize is None else normalize)

    def embed_paths(self, paths: Sequence[str], batch_size: int = 64, policy: str = "fail",
                    normalize: bool | None = None, progress: bool = False) -> tuple[np.ndarray, list[int]]:
        """``(features, kept)`` of image files; ``kept[i]`` indexes ``paths`` (``data.corrupt_images``
        ``skip`` leaves corrupt files out with a warning, ``fail`` raises naming the file).

        With ``progress`` a bar and a final throughput line go to stderr.
        """
        from reid.data.images import load_images
        from reid.data.samples import Sample

        started, chunks, kept = time.perf_counter(), [], []
        total = len(paths)
        for start in range(0, total, batch_size):
            part = [Sample(str(p), -1, -1) for p in paths[start:start + batch_size]]
            images, ok = load_images(part, policy)  # type: ignore[arg-type]
            if images:
                chunks.append(self.embed_batch(images))
                kept.extend(start + i for i in ok)
            if progress:
                _progress(min(start + batch_size, total), total, started)
        elapsed = time.perf_counter() - started
        if progress:
            print(f"\nembedded {len(kept)} images in {elapsed:.1f} s ({len(kept) / max(elapsed, 1e-9):.1f} img/s, "
                  f"{self.kind} on {self.device}, batch {batch_size}{', flip' if self.flip else ''})", file=sys.stderr)
        feats = torch.cat(chunks) if chunks else torch.zeros((0, self.embedding_dim))
        return finish(feats, self.normalize if normalize is None else normalize), kept

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.source}, backbone={self.metadata.get('backbone')}, "
                f"input_size={self.input_size}, dim={self.embedding_dim}, resize={self.resize}, device={self.device})")


def finish(feats: torch.Tensor, normalize: bool) -> np.ndarray:
    if normalize:
        feats = torch.nn.functional.normalize(feats.float(), p=2, dim=1)
    return feats.float().numpy()


def _progress(done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    rate = done / max(time.perf_counter() - started, 1e-9)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images, {rate:.1f} img/s", end="",
          file=sys.stderr, flush=True)


class TorchEmbedder(Embedder):
    """A ``reid train`` checkpoint or a TorchScript export, run by PyTorch."""

    def __init__(self, source: Path, module: Callable[[torch.Tensor], torch.Tensor], metadata: dict[str, str],
                 device: torch.device, flip: bool | None, kind: str, resize: str | None = None) -> None:
        super().__init__(source, metadata, device, flip, resize)
        self.module, self.kind = module, kind

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(batch).float().clone()


class OnnxEmbedder(Embedder):
    """An ONNX export run by ONNX Runtime (CUDA provider on a CUDA device when it is installed)."""

    kind = "onnxruntime"

    def __init__(self, source: Path, device: torch.device, flip: bool | None, resize: str | None = None) -> None:
        ort = import_onnxruntime()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            device = torch.device("cpu")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(source), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ReidError(f"{source} is not a loadable ONNX model ({str(exc).splitlines()[0]}); "
                            "export it again with `reid export`") from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        super().__init__(source, meta, device, flip, resize)
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: batch.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ReidError("onnxruntime is not installed: pip install 'reid-toolkit[export]' (or pip install onnx onnxruntime)") from None
    return onnxruntime


def read_torchscript(path: Path, device: torch.device) -> tuple[Any, dict[str, str]]:
    """A TorchScript file and its contract (``_extra_files``); errors name the file and the fix."""
    import json

    extra = {TS_META_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch.jit raises RuntimeError/ValueError variants
        raise ReidError(f"{path} is not a TorchScript file ({str(exc).splitlines()[0]}); export one with "
                        "`reid export CHECKPOINT --format torchscript`") from None
    try:
        meta = json.loads(extra[TS_META_FILE] or "{}")
    except ValueError:
        meta = {}
    return module.eval(), {str(k): str(v) for k, v in meta.items()}


def load_model(path: Path | str, device: str | torch.device = "auto", flip: bool | None = None,
               resize: str | None = None) -> Embedder:
    """An embedder for ``path``: ``.onnx`` (ONNX Runtime), ``.ts``/``.torchscript``/``.jit``
    (TorchScript), anything else a ``reid train`` checkpoint. ``device``: ``auto`` (CUDA, else MPS,
    else CPU), ``cpu``, ``cuda``, ``cuda:N``; ``flip`` defaults to the model's ``eval.flip``; ``resize``
    to the contract's (``bilinear-antialias``; ``opencv-linear`` resizes as BoxMOT does).

    Example::

        from reid import load_model
        model = load_model("pipeline/models/baseline/last.pt")
        feats = model.embed(["a.jpg", "b.jpg"])        # float32 [2, D], L2-normalised
        print(float(feats[0] @ feats[1]))              # cosine similarity
    """
    from reid.engine.device import resolve_device

    path = Path(path)
    if not path.is_file():
        raise ReidError(f"model file {path} does not exist (give a checkpoint, .onnx or .ts file)")
    dev = resolve_device(str(device))
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return OnnxEmbedder(path, dev, flip, resize)
    if suffix in TORCHSCRIPT_SUFFIXES:
        module, meta = read_torchscript(path, dev)
        return TorchEmbedder(path, module, meta, dev, flip, kind="torchscript", resize=resize)
    from reid.deploy.module import load_checkpoint_module

    _, module, _, meta = load_checkpoint_module(path, dev)
    return TorchEmbedder(path, module, meta, dev, flip, kind="pytorch", resize=resize)

