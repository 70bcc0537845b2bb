"""Export the inference module to ONNX or TorchScript, and check the export against PyTorch.

Exporters: torch's own. ONNX uses the TorchScript-based exporter (``dynamo=False``): the newer
``torch.export`` path needs ``onnxscript``, which this project does not depend on, and the classic
exporter handles every backbone here (plain ResNets and IBN-a). The model is exported in eval mode
(``TrainingMode.EVAL``: BatchNorm folds its running statistics). IBN-a's ``InstanceNorm2d`` keeps no
running statistics, so in eval mode it still normalises each image by its own statistics, which is
what ONNX ``InstanceNormalization`` computes; torch warns "instance_norm is set to train=True" for
it, which is therefore expected and silenced here (the parity check is the proof).

The batch dimension is dynamic (``batch``); height and width are fixed at the configured input size,
which the contract in the file's metadata states (:mod:`reid.deploy.contract`).

Parity check (:func:`parity_check`): the same real images go through the checkpoint's PyTorch model
and through the exported file (ONNX Runtime or TorchScript), in batches of a size other than the
export's example batch (exercising the dynamic axis); reported are the max absolute difference of the
raw embeddings and the minimum cosine similarity per image. Below ``tolerance`` (default 0.9999 in
fp32) the check fails with :class:`ParityError`.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn

from reid.atomic import atomic_target, write_text_atomic
from reid.deploy.contract import INPUT_NAME, OUTPUT_NAME, save_onnx_with_metadata
from reid.errors import ReidError

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
#: Trackers an export can be made for (``reid export --for``): the file, its sidecar and a load check.
CONSUMERS: tuple[str, ...] = ("boxmot",)
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 0.9999
EXAMPLE_BATCH = 2  # traced with 2 images; parity runs other batch sizes
PARITY_BATCH = 5


class ParityError(ReidError):
    """The exported model's features differ from PyTorch's beyond the tolerance."""


@dataclass
class ParityReport:
    """What :func:`parity_check` measured; ``passed`` is ``min_cosine >= tolerance``."""

    format: str
    file: str
    num_images: int
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float
    tolerance: float
    passed: bool
    #: ``--for boxmot``: BoxMOT's own backend on the exported file (:func:`reid.deploy.boxmot_compat.load_check`).
    consumer: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        text = (f"parity {verdict}: {self.num_images} images, PyTorch vs {self.format}: max |diff| "
                f"{self.max_abs_diff:.3g}, min cosine {self.min_cosine:.6f} (tolerance {self.tolerance})")
        found = self.consumer or {}
        if "skipped" in found:
            text += f"\n{found['consumer']} load check skipped: {found['skipped']}"
        elif "min_cosine_contract_resize" in found:
            text += (f"\nBoxMOT {found['boxmot_version']} loads it: min cosine vs PyTorch "
                     f"{found['min_cosine_contract_resize']:.6f} with reid_preprocess='reid_bilinear_antialias', "
                     f"{found['min_cosine_boxmot_resize']:.6f} with BoxMOT's default resize (cv2 INTER_LINEAR, "
                     "no antialiasing; see docs/TRACKING.md)")
        return text


def check_writable(path: Path) -> None:
    """Fail now, with the path and the fix, if ``path`` cannot be written (before a long export)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ReidError(f"cannot write {path} ({exc.strerror or exc}); choose a writable --output") from None
    if path.is_dir():
        raise ReidError(f"--output {path} is a folder; give a file name (e.g. {path / 'model.onnx'})")


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's known, harmless warnings (see the module docstring)."""
    with warnings.catch_warnings():
        for pattern in (".*legacy TorchScript-based ONNX export.*", ".*instance_norm.*train=True.*",
                        ".*Converting a tensor to a Python boolean.*", ".*torch.jit.trace.*is deprecated.*",
                        ".*The feature will be removed.*", ".*torch.jit.*deprecated.*"):
            warnings.filterwarnings("ignore", message=pattern)
        yield


def export_module(module: nn.Module, fmt: ExportFormat, output: Path | str, metadata: dict[str, str],
                  input_size: tuple[int, int], opset: int = DEFAULT_OPSET) -> Path:
    """Write ``module`` (eval mode, CPU, float32) to ``output`` with ``metadata``; atomically."""
    if fmt not in FORMATS:
        raise ReidError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    output = Path(output)
    check_writable(output)
    module = module.to("cpu").float().eval()
    example = torch.zeros(EXAMPLE_BATCH, 3, int(input_size[0]), int(input_size[1]))
    meta = {**metadata, "export_format": fmt}
    with atomic_target(output) as tmp, _quiet_export(), torch.no_grad():
        if fmt == "onnx":
            meta["opset"] = str(opset)
            _export_onnx(module, example, tmp, meta, opset)
        else:
            from reid.deploy.embedder import TS_META_FILE

            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={TS_META_FILE: json.dumps(meta, sort_keys=True)})
    return output


def _export_onnx(module: nn.Module, example: torch.Tensor, tmp: Path, meta: dict[str, str], opset: int) -> None:
    try:
        import onnx
    except ImportError:
        raise ReidError("ONNX export needs onnx: pip install 'reid-toolkit[export]' (or pip install onnx onnxruntime)") from None
    torch.onnx.export(
        module, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
        training=torch.onnx.TrainingMode.EVAL, do_constant_folding=True, dynamo=False,
    )
    save_onnx_with_metadata(onnx.load(str(tmp)), meta, tmp, "reid inference model")



def parity_check(reference: Any, exported: Any, images: Sequence[Any], tolerance: float = DEFAULT_TOLERANCE,
                 batch_size: int = PARITY_BATCH) -> ParityReport:
    """Compare two embedders (:mod:`reid.deploy.embedder`) on ``images``; see the module docstring.

    Both run without flip and without normalisation, so the comparison is of the graphs themselves.
    """
    if not images:
        raise ParityError("the parity check got no images; give some with --images")
    ref_flip, exp_flip = reference.flip, exported.flip
    reference.flip = exported.flip = False
    try:
        a = reference.embed(images, batch_size=batch_size, normalize=False).astype(np.float64)
        b = exported.embed(images, batch_size=batch_size, normalize=False).astype(np.float64)
    finally:
        reference.flip, exported.flip = ref_flip, exp_flip
    if a.shape != b.shape:
        raise ParityError(f"{exported.source}: embeddings of shape {b.shape}, PyTorch gives {a.shape}")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return ParityReport(format=exported.kind, file=str(exported.source), num_images=int(a.shape[0]),
                        max_abs_diff=float(np.abs(a - b).max()), min_cosine=float(cosine.min()),
                        mean_cosine=float(cosine.mean()), tolerance=float(tolerance),
                        passed=bool(cosine.min() >= tolerance))


def write_report(report: ParityReport, path: Path | str, metadata: dict[str, str]) -> Path:
    """The parity report (and the contract) as JSON: DVC's metrics file of the export stage."""
    return write_text_atomic(path, json.dumps({**report.to_dict(), "metadata": metadata}, indent=2) + "\n")


def parity_images(manifest: Path | str | None, given: Sequence[Path] | None, count: int) -> list[str]:
    """The images of the parity check: ``given`` paths (files or folders), else ``count`` of the
    manifest's query images spread evenly over the list (deterministic)."""
    if given:
        from reid.deploy.inputs import collect_images

        return collect_images([Path(p) for p in given])[:max(count, 1)]
    if manifest is None or not Path(manifest).is_file():
        raise ReidError(f"the parity check needs real images: the manifest {manifest} does not exist; "
                        "give --manifest or --images FOLDER")
    from reid.data.manifest import load_manifest

    query = load_manifest(manifest).query
    if not query:
        raise ReidError(f"{manifest} has no query images for the parity check; give --images FOLDER")
    picks = np.unique(np.linspace(0, len(query) - 1, min(count, len(query))).round().astype(int))
    return [query[i].path for i in picks]


def _checked_targets(checkpoint: Path | str, fmt: str, output: Path | str, report_path: Path | str | None,
                     for_consumer: str | None) -> tuple[Path, Path, Any, Any, dict[str, Any]]:
    """What every export checks before any work: both output files writable, a known consumer whose
    constraints the format meets; then the checkpoint's inference module, config and contract."""
    from reid.deploy.module import load_checkpoint_module

    output = Path(output)
    check_writable(output)
    report_file = Path(report_path) if report_path else output.with_name(output.stem + ".parity.json")
    check_writable(report_file)
    if for_consumer is not None and for_consumer not in CONSUMERS:
        raise ReidError(f"--for {for_consumer!r} is not supported; use one of {', '.join(CONSUMERS)}")
    _, module, config, meta = load_checkpoint_module(checkpoint, "cpu")
    if for_consumer == "boxmot":
        from reid.deploy import boxmot_compat

        boxmot_compat.check_exportable(fmt, output, config.data.mean, config.data.std)
    return output, report_file, module, config, meta


def export_checkpoint(checkpoint: Path | str, fmt: ExportFormat, output: Path | str, *,
                      images: Sequence[Any] | None = None, manifest: Path | str | None = None,
                      num_images: int = 32, tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET,
                      report_path: Path | str | None = None, for_consumer: str | None = None
                      ) -> tuple[Path, dict[str, str], ParityReport, Path]:
    """Export ``checkpoint`` and check parity: ``(file, metadata, report, report file)``.

    The report is written whatever the outcome; a failed check then raises :class:`ParityError`
    (the exported file stays for inspection, and the message says so). ``for_consumer="boxmot"``
    first refuses what BoxMOT cannot use (suffix, normalisation), then writes the sidecar BoxMOT reads
    (:func:`reid.deploy.boxmot_compat.sidecar_path`) and, when BoxMOT is installed, loads the file with
    BoxMOT's own backend and compares its features too (``report.consumer``).
    """
    from reid.deploy import boxmot_compat
    from reid.deploy.embedder import TorchEmbedder, load_model

    output, report_file, module, config, meta = _checked_targets(checkpoint, fmt, output, report_path, for_consumer)
    paths = parity_images(manifest or config.data.manifest, images, num_images)
    size = (int(config.data.height), int(config.data.width))
    export_module(module, fmt, output, meta, size, opset)
    exported = load_model(output, device="cpu", flip=False)
    reference = TorchEmbedder(Path(checkpoint), module, meta, torch.device("cpu"), False, kind="pytorch")
    report = parity_check(reference, exported, paths, tolerance)
    if report.passed and for_consumer == "boxmot":
        boxmot_compat.write_sidecar(output, exported.metadata, fmt)
        if boxmot_compat.boxmot_available():
            report.consumer = boxmot_compat.load_check(output, reference, paths, tolerance)
            report.passed = bool(report.consumer["passed"])
        else:
            report.consumer = {"consumer": "boxmot", "skipped": f"BoxMOT is not installed: {boxmot_compat.INSTALL_HINT}"}
    write_report(report, report_file, exported.metadata)
    if not report.passed:
        raise ParityError(f"{report.summary()}. The export {output} does not reproduce the PyTorch features; "
                          f"do not use it (report: {report_file}).")
    return output, exported.metadata, report, report_file


def export_int8(checkpoint: Path | str, output: Path | str, *, manifest: Path | str | None = None,
                images: Sequence[Any] | None = None, num_images: int = 32, tolerance: float = DEFAULT_TOLERANCE,
                opset: int = DEFAULT_OPSET, report_path: Path | str | None = None, for_consumer: str | None = None,
                calibration_images: int = 256, seed: int = 0, activations: str = "auto",
                max_map_drop: float = 1.0, split: str = "test", speed_batch: int = 32,
                speed_seconds: float = 3.0
                ) -> tuple[Path, dict[str, str], ParityReport, Any, Path]:
    """The int8 export of ``checkpoint`` (:mod:`reid.deploy.quantize`): ``(file, metadata, fp32 parity, int8 report, report file)``.

    First the fp32 graph is exported (to a temporary folder) and checked against PyTorch as an fp32
    export is; a failure there raises :class:`ParityError` before any quantisation. Then the graph is
    quantised with ranges calibrated on ``calibration_images`` training images drawn with ``seed``, and
    both graphs are scored on ``split``: ``test`` (the manifest's query/gallery) or ``val`` (the
    training identities ``eval.val_ids`` holds out; calibration then draws from the rest). The report
    (one JSON: ``fp32_parity``, ``int8``, ``metadata``) is written whatever the warnings say.
    """
    import tempfile

    from reid.data.manifest import load_manifest
    from reid.deploy import quantize
    from reid.deploy.embedder import TorchEmbedder, load_model

    quantize.import_quantization()
    acts = quantize.resolve_activations(activations)
    if split not in ("test", "val"):
        raise ReidError(f"--int8-eval {split!r} is not supported; use test (query/gallery) or val (eval.val_ids)")
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ReidError(f"int8 export writes ONNX: give --output with the .onnx suffix (e.g. {output.with_suffix('.onnx')})")
    output, report_file, module, config, meta = _checked_targets(checkpoint, "onnx", output, report_path, for_consumer)
    where = Path(manifest or config.data.manifest)
    if not where.is_file():
        raise ReidError(f"int8 calibration and its report need the manifest {where}, which does not exist; give --manifest")
    full = load_manifest(where)
    if split == "val":
        if int(config.eval.val_ids) < 1:
            raise ReidError("--int8-eval val scores held-out training identities, but the checkpoint was trained with "
                            "eval.val_ids=0; use --int8-eval test")
        from reid.data.validation import hold_out_identities

        train_part, scored = hold_out_identities(full, int(config.eval.val_ids), int(config.train.seed))
        train_samples = train_part.train
    else:
        scored, train_samples = full, full.train
    if not scored.query or not scored.gallery:
        raise ReidError(f"{where} has no query/gallery to score the int8 model on ({split}); give another --manifest")
    paths = parity_images(where, images, num_images)
    reference = TorchEmbedder(Path(checkpoint), module, meta, torch.device("cpu"), False, kind="pytorch")
    with tempfile.TemporaryDirectory(prefix="reid-int8-") as tmp:
        fp32_file = export_module(module, "onnx", Path(tmp) / "fp32.onnx", meta, (int(config.data.height),
                                                                                 int(config.data.width)), opset)
        fp32 = load_model(fp32_file, device="cpu", flip=False)
        parity = parity_check(reference, fp32, paths, tolerance)
        if not parity.passed:
            write_report(parity, report_file, fp32.metadata)
            raise ParityError(f"{parity.summary()}. The fp32 graph does not reproduce the PyTorch features, so it is "
                              f"not quantised (report: {report_file}).")
        calib = quantize.calibration_paths([s.path for s in train_samples], calibration_images, seed)
        batches = quantize.preprocessed_batches(fp32, calib)
        int8_meta = {**fp32.metadata, "precision": "int8", "int8_format": "QDQ, per-channel int8 weights",
                     "int8_activations": acts,
                     "int8_target": ("x86 with VNNI (U8S8)" if acts == "uint8" else "any CPU (S8S8)"),
                     "int8_calibration": f"{len(calib)} training images of {where.name}, seed {seed}, MinMax"}
        quantize.quantize_file(fp32_file, output, batches, int8_meta, acts)
        int8 = load_model(output, device="cpu")
        fp32.flip = int8.flip  # both scored as the evaluation scores the model (eval.flip)
        fp32_result, fp32_feats = quantize.accuracy(fp32, scored.query, scored.gallery, config.eval,
                                                    scored.has_cameras, scored.protocol)
        int8_result, int8_feats = quantize.accuracy(int8, scored.query, scored.gallery, config.eval,
                                                    scored.has_cameras, scored.protocol)
        cosine = quantize.feature_cosine(int8_feats, fp32_feats)
        pool = np.concatenate(batches)
        speed = pool[np.arange(speed_batch) % pool.shape[0]]
        fp32_speed = quantize.images_per_second(fp32_file, speed, speed_seconds)
        int8_speed = quantize.images_per_second(output, speed, speed_seconds)
    report = quantize.Int8Report(
        file=str(output), fp32_file="(temporary, same checkpoint)", activations=acts, calibration_images=len(calib),
        calibration_seed=int(seed), split="query/gallery" if split == "test" else f"eval.val_ids={config.eval.val_ids} held-out identities",
        num_query=len(scored.query), num_gallery=len(scored.gallery), fp32_mAP=fp32_result.mAP, int8_mAP=int8_result.mAP,
        fp32_rank1=fp32_result.ranks.get(1, float(fp32_result.cmc[0])), int8_rank1=int8_result.ranks.get(1, float(int8_result.cmc[0])),
        mean_cosine=float(cosine.mean()), min_cosine=float(cosine.min()), fp32_img_per_s=fp32_speed,
        int8_img_per_s=int8_speed, speed_batch=int(speed_batch), max_map_drop=float(max_map_drop))
    report.warnings = quantize.judge(report)
    if for_consumer == "boxmot":
        from reid.deploy import boxmot_compat

        boxmot_compat.write_sidecar(output, int8.metadata, "onnx")
        if boxmot_compat.boxmot_available():
            int8.flip = False
            report.consumer = boxmot_compat.load_check(output, int8, paths, tolerance)
        else:
            report.consumer = {"consumer": "boxmot", "skipped": f"BoxMOT is not installed: {boxmot_compat.INSTALL_HINT}"}
    write_text_atomic(report_file, json.dumps({"fp32_parity": parity.to_dict(), "int8": report.to_dict(),
                                               "metadata": int8.metadata}, indent=2) + "\n")
    if report.consumer and report.consumer.get("passed") is False:
        raise ParityError(f"{report.summary()}\nBoxMOT's features of {output} differ from reid's beyond "
                          f"{tolerance}; do not use it in BoxMOT (report: {report_file}).")
    return output, int8.metadata, parity, report, report_file
