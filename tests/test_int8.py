"""int8 export: a statically quantised ONNX graph with its parity report, and BoxMOT loading it as it is.

The model is a ResNet-18 trained for two steps on synthetic images (64 x 32) and saved as a ``reid train``
checkpoint (``tests/deploy_models.py``); calibration draws from the synthetic training split. The numbers
of a two-step model say nothing about int8 on a trained one (``benchmarks/bench_int8.py`` measures that);
these tests check that the graph is quantised, keeps the contract, is scored honestly, and warns.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from deploy_models import deploy_config, save_trained, train_steps  # noqa: E402
from reid.errors import ReidError  # noqa: E402

HAS_BOXMOT = importlib.util.find_spec("boxmot") is not None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, synthetic_manifest) -> Path:
    from reid.data.manifest import write_manifest

    out = tmp_path_factory.mktemp("int8")
    write_manifest(synthetic_manifest, out / "manifest.json")
    return out


@pytest.fixture(scope="module")
def checkpoint(workdir: Path, synthetic_root: Path, synthetic_manifest) -> Path:
    config = deploy_config(synthetic_root, workdir, "resnet18", tracked=False)
    return save_trained(train_steps(config, synthetic_manifest), config, synthetic_manifest, "last.pt")


@pytest.fixture(scope="module")
def int8_export(checkpoint: Path, workdir: Path):
    from reid.deploy.export import export_int8

    return export_int8(checkpoint, workdir / "export" / "model-int8.onnx", num_images=4, calibration_images=48,
                       seed=3, for_consumer="boxmot" if HAS_BOXMOT else None, speed_batch=8, speed_seconds=0.3)


def test_calibration_draw_is_seeded_and_from_training_images() -> None:
    from reid.deploy.quantize import calibration_paths

    train = [f"t{i}.jpg" for i in range(500)]
    a, b, c = calibration_paths(train, 100, 0), calibration_paths(train, 100, 0), calibration_paths(train, 100, 1)
    assert a == b and a != c and len(set(a)) == 100 and set(a) <= set(train)
    assert calibration_paths(train[:7], 100, 0) == train[:7]  # fewer than asked: all of them
    with pytest.raises(ReidError, match="training images"):
        calibration_paths([], 10, 0)


def test_int8_graph_is_quantised_and_keeps_the_contract(int8_export, checkpoint: Path) -> None:
    import onnx

    from reid.deploy.embedder import load_model

    path, meta, parity, report, report_file = int8_export
    assert parity.passed  # the fp32 graph was checked against PyTorch before quantisation
    proto = onnx.load(str(path))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights, "the convolution weights are not stored as int8"
    # per-channel: a weight's scale has one entry per output channel
    scales = {t.name: len(onnx.numpy_helper.to_array(t).reshape(-1)) for t in proto.graph.initializer}
    assert max(scales.values()) > 1
    fp32_meta = load_model(checkpoint, device="cpu").metadata
    for key in ("input_height", "input_width", "mean", "std", "resize", "embedding_dim", "weights_hash", "backbone"):
        assert meta[key] == fp32_meta[key], key
    assert meta["precision"] == "int8" and meta["int8_activations"] in ("uint8", "int8")
    assert "seed 3" in meta["int8_calibration"] and "48 training images" in meta["int8_calibration"]
    model = load_model(path, device="cpu")
    assert model.embed(np.zeros((2, 64, 32, 3), dtype=np.uint8)).shape == (2, 512)
    saved = json.loads(report_file.read_text())
    assert saved["fp32_parity"]["passed"] is True and saved["metadata"]["precision"] == "int8"


def test_int8_report_scores_both_graphs_on_query_gallery(int8_export, checkpoint: Path, synthetic_manifest) -> None:
    from reid.deploy.embedder import load_model
    from reid.deploy.quantize import feature_cosine

    path, _, _, report, report_file = int8_export
    assert report.num_query == len(synthetic_manifest.query) and report.num_gallery == len(synthetic_manifest.gallery)
    assert 0.0 <= report.int8_mAP <= 1.0 and 0.0 <= report.fp32_mAP <= 1.0
    assert report.fp32_img_per_s > 0 and report.int8_img_per_s > 0
    assert -1.0 <= report.min_cosine <= report.mean_cosine <= 1.0
    # The cosine is recomputable: int8 file vs the checkpoint's PyTorch features (fp32 graph == PyTorch).
    paths = [s.path for s in synthetic_manifest.query[:6]]
    a = load_model(path, device="cpu").embed(paths, normalize=False)
    b = load_model(checkpoint, device="cpu").embed(paths, normalize=False)
    assert feature_cosine(a, b).min() >= report.min_cosine - 1e-4
    # Quantisation changes the features (a no-op "int8" file would give cosine 1.0) but keeps them close.
    assert report.mean_cosine < 0.999999 and report.mean_cosine > 0.9
    saved = json.loads(report_file.read_text())["int8"]
    assert saved["int8_mAP"] == report.int8_mAP and saved["speedup"] == pytest.approx(report.speedup)


def test_warnings_say_when_int8_is_slower_or_loses_too_much(int8_export) -> None:
    from dataclasses import replace

    from reid.deploy.quantize import judge

    report = int8_export[3]
    assert report.warnings == judge(report)  # what the export printed is what the rule says
    slow = replace(report, int8_img_per_s=report.fp32_img_per_s * 0.8, fp32_mAP=0.5, int8_mAP=0.499, max_map_drop=1.0)
    assert len(judge(slow)) == 1 and "not faster" in judge(slow)[0]
    lossy = replace(report, int8_img_per_s=report.fp32_img_per_s * 3, fp32_mAP=0.5, int8_mAP=0.47, max_map_drop=1.0)
    assert len(judge(lossy)) == 1 and "3.00 mAP points" in judge(lossy)[0]
    fine = replace(lossy, max_map_drop=5.0)
    assert judge(fine) == []


@pytest.mark.skipif(not HAS_BOXMOT, reason="BoxMOT is not installed: pip install -e '.[trackers]'")
def test_boxmot_loads_the_int8_file_as_it_is(int8_export) -> None:
    from reid.deploy import boxmot_compat

    path, _, _, report, _ = int8_export
    sidecar = json.loads(boxmot_compat.sidecar_path(path).read_text())
    assert sidecar["precision"] == "int8" and sidecar["img_size"] == [64, 32]
    found = report.consumer
    assert found is not None and found["passed"] and found["min_cosine_contract_resize"] >= 0.9999
    backend = boxmot_compat.load_backend(path)  # what BotSort(reid_weights=path) builds
    frame = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    feats = boxmot_compat.features(backend, frame, np.array([[5, 5, 40, 100], [40, 10, 85, 110]], dtype=np.float32))
    assert feats.shape == (2, 512) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-4)


def test_int8_refuses_what_it_cannot_do(checkpoint: Path, workdir: Path) -> None:
    from reid.deploy.export import export_int8

    with pytest.raises(ReidError, match=r"\.onnx suffix"):
        export_int8(checkpoint, workdir / "bad" / "model.ts")
    with pytest.raises(ReidError, match="eval.val_ids=0"):
        export_int8(checkpoint, workdir / "bad" / "model.onnx", split="val")
    with pytest.raises(ReidError, match="int8-activations"):
        export_int8(checkpoint, workdir / "bad" / "model.onnx", activations="int4")
    with pytest.raises(ReidError, match="does not exist"):
        export_int8(checkpoint, workdir / "bad" / "model.onnx", manifest=workdir / "absent.json")


def test_missing_deploy_extra_names_it(monkeypatch: pytest.MonkeyPatch, checkpoint: Path, workdir: Path) -> None:
    import sys

    from typer.testing import CliRunner

    from reid.cli import app

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # as if the tooling were absent
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--output", str(workdir / "x.onnx"),
                                      "--precision", "int8", "--params", str(workdir / "absent.yaml")])
    assert result.exit_code == 2 and "reid-toolkit[deploy]" in result.output


def test_int8_command_prints_the_report(checkpoint: Path, workdir: Path) -> None:
    from typer.testing import CliRunner

    from reid.cli import app

    out = workdir / "cli" / "model-int8.onnx"
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--output", str(out), "--precision", "int8",
                                      "--calibration-images", "16", "--num-images", "4", "--max-map-drop", "-1000",
                                      "--params", str(workdir / "absent.yaml")])
    assert result.exit_code == 0, result.output
    assert "int8 (" in result.output and "feature cosine to fp32" in result.output and "img/s" in result.output
    # A drop threshold no model can meet: the loss is stated plainly, not hidden.
    assert "WARNING: int8 loses" in result.output
    assert out.is_file()
