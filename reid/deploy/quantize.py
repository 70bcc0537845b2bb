"""int8 export: a statically quantised ONNX model, calibrated on training images, with its measured cost.

Static quantisation (ONNX Runtime's ``quantize_static``) stores int8 weights and fixed activation
ranges in the graph as QuantizeLinear/DequantizeLinear pairs (QDQ), which ONNX Runtime fuses into
integer kernels on the CPU. Choices, and why:

* **QDQ, per-channel weights** (symmetric int8 per output channel): per-tensor weight scales cost
  BN-folded ResNets several mAP points; QDQ is the portable form (any ONNX runtime reads it).
* **Calibration**: MinMax ranges over ``calibration_images`` training images (default 256) drawn
  with ``seed`` from the manifest's training split, preprocessed exactly as the contract says (the
  embedder's resize and normalisation), so the ranges are those of the images the model will see.
  Training images, not query/gallery ones: the accuracy report below is then not fitted to its own
  test set.
* **Activations** (:data:`ACTIVATION_TYPES`): ``uint8`` (U8S8) is what the integer kernels of
  x86 CPUs with VNNI run fastest; on CPUs without VNNI, U8S8 may saturate intermediate sums (ONNX
  Runtime's documentation), where ``int8`` (S8S8) is safe. ``auto`` picks ``uint8`` when this CPU
  reports VNNI (``avx512_vnni`` / ``avx_vnni`` in /proc/cpuinfo) and ``int8`` otherwise; the file
  records what it was made for (``int8_activations``, ``int8_target``) and the report measures it.

The file keeps the fp32 export's contract (same input, resize, normalisation, output; same
``weights_hash``: it is the same model, so a gallery extracted with the fp32 file can be searched with
int8 queries and vice versa) plus ``precision=int8`` and the calibration's provenance.

The report (:class:`Int8Report`) states what a user must know before shipping the file: mAP and
rank-1 of the int8 and of the fp32 model on the dataset's query/gallery (or on held-out training
identities, ``eval.val_ids``), the cosine of int8 features to fp32 ones (mean, minimum), and img/s of
both on this machine. When int8 is slower than fp32, or loses more than ``max_map_drop`` mAP points,
the report's ``warnings`` say so and the command prints them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from reid.errors import ReidError

DEPLOY_HINT = "pip install 'reid-toolkit[deploy]' (or pip install onnx onnxruntime faiss-cpu)"
ACTIVATION_TYPES = ("auto", "uint8", "int8")
DEFAULT_CALIBRATION_IMAGES = 256
DEFAULT_MAX_MAP_DROP = 1.0  # mAP points
CALIBRATION_BATCH = 32


def import_quantization() -> Any:
    """``onnxruntime.quantization``, or a :class:`ReidError` naming the extra to install."""
    import importlib

    try:
        importlib.import_module("onnx")
        quantization = importlib.import_module("onnxruntime.quantization")
    except ImportError:
        raise ReidError(f"int8 export needs ONNX Runtime's quantisation tooling: {DEPLOY_HINT}") from None
    return quantization


def cpu_has_vnni() -> bool:
    """Whether this CPU reports VNNI (the int8 dot-product instructions U8S8 kernels need to be fast and exact)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def resolve_activations(choice: str) -> str:
    if choice not in ACTIVATION_TYPES:
        raise ReidError(f"--int8-activations {choice!r} is not supported; use one of {', '.join(ACTIVATION_TYPES)}")
    if choice == "auto":
        return "uint8" if cpu_has_vnni() else "int8"
    return choice


def calibration_paths(train_paths: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` training images drawn without replacement with ``seed`` (all of them when fewer)."""
    if not train_paths:
        raise ReidError("int8 calibration needs training images, and the manifest lists none; "
                        "give a manifest with a training split (--manifest)")
    if count < 1:
        raise ReidError(f"--calibration-images must be >= 1, got {count}")
    rng = np.random.default_rng(int(seed))
    picks = np.sort(rng.choice(len(train_paths), size=min(count, len(train_paths)), replace=False))
    return [str(train_paths[i]) for i in picks]


def preprocessed_batches(embedder: Any, paths: Sequence[str], batch_size: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    """The model inputs of ``paths`` as the contract makes them (resize, /255, mean/std): float32 NCHW batches."""
    from reid.data.images import load_images
    from reid.data.samples import Sample
    from reid.data.transforms import normalize
    from reid.deploy.resize import resize_batch

    out = []
    for start in range(0, len(paths), batch_size):
        images, _ = load_images([Sample(str(p), -1, -1) for p in paths[start:start + batch_size]], "fail")
        batch = normalize(resize_batch(images, embedder.input_size, embedder.resize), embedder.mean, embedder.std)
        out.append(batch.numpy().astype(np.float32))
    return out


def quantize_file(fp32_file: Path, output: Path, batches: Sequence[np.ndarray], metadata: dict[str, str],
                  activations: str) -> Path:
    """Write the static int8 QDQ model of ``fp32_file`` to ``output`` (atomically) with ``metadata``."""
    import onnx

    from reid.atomic import atomic_target

    q = import_quantization()

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{metadata.get("input_name", "images"): b} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    act = q.QuantType.QUInt8 if activations == "uint8" else q.QuantType.QInt8
    with atomic_target(output) as tmp, _quiet_quantizer():
        tmp_model = tmp.with_name(tmp.name + ".onnx")
        prepared = tmp.with_name(tmp.name + ".onnx.pre.onnx")
        try:
            # Shape inference and graph fusions first, as ONNX Runtime's tooling recommends.
            q.quant_pre_process(str(fp32_file), str(prepared), skip_symbolic_shape=False)
            q.quantize_static(str(prepared), str(tmp_model), Reader(), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, activation_type=act, weight_type=q.QuantType.QInt8,
                              calibrate_method=q.CalibrationMethod.MinMax)
            proto = onnx.load(str(tmp_model))
        finally:
            for leftover in tmp_model.parent.glob(tmp_model.name + "*"):
                leftover.unlink(missing_ok=True)
        from reid.deploy.contract import save_onnx_with_metadata

        save_onnx_with_metadata(proto, metadata, tmp, "reid inference model (int8)")
    return output


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantiser logs advice on the root logger (pre-processing, which is done; the BN-neck's 1-D scale,
    which has no channel axis and is quantised per tensor); keep it out of the command's output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def images_per_second(file: Path, batch: np.ndarray, seconds: float = 3.0, min_iters: int = 2) -> float:
    """Throughput of the graph alone (ONNX Runtime, CPU, default threads) on ``batch``, after one untimed call."""
    from reid.deploy.embedder import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: batch})
    done, started = 0, time.perf_counter()
    while done < min_iters or time.perf_counter() - started < seconds:
        session.run(None, {name: batch})
        done += 1
    return float(done * batch.shape[0] / (time.perf_counter() - started))


@dataclass
class Int8Report:
    """What an int8 export costs and gains, measured; ``warnings`` is empty when neither limit is crossed."""

    file: str
    fp32_file: str
    activations: str
    calibration_images: int
    calibration_seed: int
    split: str
    num_query: int
    num_gallery: int
    fp32_mAP: float
    int8_mAP: float
    fp32_rank1: float
    int8_rank1: float
    mean_cosine: float
    min_cosine: float
    fp32_img_per_s: float
    int8_img_per_s: float
    speed_batch: int
    max_map_drop: float
    warnings: list[str] = field(default_factory=list)
    consumer: dict[str, Any] | None = None

    @property
    def speedup(self) -> float:
        return self.int8_img_per_s / max(self.fp32_img_per_s, 1e-12)

    @property
    def map_drop(self) -> float:
        return 100.0 * (self.fp32_mAP - self.int8_mAP)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": self.speedup, "map_drop_points": self.map_drop}

    def summary(self) -> str:
        lines = [
            f"int8 ({self.activations} activations, calibrated on {self.calibration_images} training images, "
            f"seed {self.calibration_seed}) vs fp32 on {self.split} ({self.num_query} query / {self.num_gallery} gallery):",
            f"  mAP {100 * self.int8_mAP:.2f} vs {100 * self.fp32_mAP:.2f} ({-self.map_drop:+.2f} points), "
            f"rank-1 {100 * self.int8_rank1:.2f} vs {100 * self.fp32_rank1:.2f}",
            f"  feature cosine to fp32: mean {self.mean_cosine:.5f}, min {self.min_cosine:.5f}",
            f"  speed on this machine (batch {self.speed_batch}, ONNX Runtime CPU): int8 {self.int8_img_per_s:.1f} "
            f"vs fp32 {self.fp32_img_per_s:.1f} img/s ({self.speedup:.2f}x)",
        ]
        found = self.consumer or {}
        if "skipped" in found:
            lines.append(f"  {found['consumer']} load check skipped: {found['skipped']}")
        elif "min_cosine_contract_resize" in found:
            lines.append(f"  BoxMOT {found['boxmot_version']} loads it: min cosine to reid's int8 features "
                         f"{found['min_cosine_contract_resize']:.6f} (reid_preprocess='reid_bilinear_antialias')")
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def judge(report: Int8Report) -> list[str]:
    """The plain warnings of :class:`Int8Report` (slower than fp32; more mAP lost than allowed)."""
    out = []
    if report.int8_img_per_s <= report.fp32_img_per_s:
        out.append(f"int8 is not faster than fp32 on this machine ({report.int8_img_per_s:.1f} vs "
                   f"{report.fp32_img_per_s:.1f} img/s); keep the fp32 file here, or try "
                   f"--int8-activations {'int8' if report.activations == 'uint8' else 'uint8'}")
    if report.map_drop > report.max_map_drop:
        out.append(f"int8 loses {report.map_drop:.2f} mAP points (more than --max-map-drop {report.max_map_drop}); "
                   "try more --calibration-images or the other --int8-activations, or keep fp32")
    return out


def feature_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def accuracy(embedder: Any, query: Sequence[Any], gallery: Sequence[Any], eval_cfg: Any, has_cameras: bool,
             protocol: str, batch_size: int = 64) -> tuple[Any, np.ndarray]:
    """``(EvalResult, raw query+gallery features)`` of ``embedder`` on samples, scored as ``reid evaluate`` does."""
    import torch

    from reid.evaluation.runner import evaluate_sample_features

    feats, kept = embedder.embed_paths([s.path for s in [*query, *gallery]], batch_size=batch_size, normalize=False)
    if len(kept) != len(query) + len(gallery):
        raise ReidError("an image of the query/gallery could not be read; fix the dataset before the int8 report")
    qf, gf = torch.from_numpy(feats[:len(query)]), torch.from_numpy(feats[len(query):])
    cfg = eval_cfg.model_copy(update={"num_ranked_lists": 0, "rerank": False})
    result = evaluate_sample_features(qf, gf, list(query), list(gallery), cfg, has_cameras=has_cameras,
                                      protocol=protocol)
    return result, feats
