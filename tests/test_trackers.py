"""Using an exported model in a tracker: the resize contract, BGR crops, ``reid export --for boxmot`` loaded by
the real BoxMOT ReID backend, the tracking example script and its identity-switch scoring, the resize benchmark.

The BoxMOT tests need the trackers extra (``pip install -e '.[trackers]'``; CI installs it) and are skipped
with that reason without it. The models are trained for two steps on synthetic images at a 128 x 64 input,
so the 64 x 32 synthetic crops are *enlarged* as Market-1501's crops are at 256 x 128; crops drawn at
256 x 128 give the *shrinking* case of video frames.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy_models import deploy_config, save_trained, train_steps
from reid.errors import ReidError

HAS_BOXMOT = importlib.util.find_spec("boxmot") is not None
HAS_MOTMETRICS = importlib.util.find_spec("motmetrics") is not None
needs_boxmot = pytest.mark.skipif(not HAS_BOXMOT, reason="BoxMOT is not installed: pip install -e '.[trackers]'")
needs_motmetrics = pytest.mark.skipif(not HAS_MOTMETRICS, reason="motmetrics is not installed: pip install -e '.[trackers]'")
REPO = Path(__file__).resolve().parents[1]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a.astype(np.float64) * b).sum(axis=1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, synthetic_manifest) -> Path:
    from reid.data.manifest import write_manifest

    out = tmp_path_factory.mktemp("trackers")
    write_manifest(synthetic_manifest, out / "manifest.json")
    return out


@pytest.fixture(scope="module")
def exported(workdir: Path, synthetic_root: Path, synthetic_manifest):
    """``backbone -> (last.pt, model.onnx, parity report)``: trained briefly at 128 x 64, exported ``--for boxmot``."""
    from reid.deploy.export import export_checkpoint

    done: dict[str, tuple] = {}

    def get(backbone: str):
        if backbone not in done:
            config = deploy_config(synthetic_root, workdir, backbone, tracked=False, height=128, width=64)
            model = train_steps(config, synthetic_manifest)
            ckpt = save_trained(model, config, synthetic_manifest, "last.pt")
            kwargs = {"for_consumer": "boxmot"} if HAS_BOXMOT else {}
            path, _, report, _ = export_checkpoint(ckpt, "onnx", workdir / "export" / f"{backbone}.onnx", num_images=4,
                                                   **kwargs)
            done[backbone] = (ckpt, path, report)
        return done[backbone]

    return get


def _frame_with_people(crops_rgb: list[np.ndarray], size=(300, 400)) -> tuple[np.ndarray, np.ndarray]:
    """A BGR frame with the crops pasted side by side on a noisy background, and their integer boxes."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    boxes, x = [], 3
    for crop in crops_rgb:
        h, w = crop.shape[:2]
        frame[5:5 + h, x:x + w] = crop[:, :, ::-1]  # RGB -> BGR, as OpenCV holds frames
        boxes.append((x, 5, x + w, 5 + h))
        x += w + 7
    return frame, np.asarray(boxes, dtype=np.float32)


# -- the contract and the embedder's inputs ---------------------------------------------------------
def test_the_contract_states_the_resize_next_to_the_normalisation(tiny_config) -> None:
    from reid.data.transforms import resize_uint8
    from reid.deploy.contract import build_contract
    from reid.deploy.resize import CONTRACT_RESIZE, resize_hwc

    meta = build_contract(tiny_config, 512, data_hash=None, run_id=None, checkpoint=None, weights="0")
    assert meta["resize"] == CONTRACT_RESIZE and meta["resize_antialias"] == "true"
    assert meta["resize_align_corners"] == "false" and "half-to-even" in meta["resize_rounding"]
    assert "aspect ratio not kept" in meta["resize_aspect"] and meta["channel_order"] == "RGB"
    crop = np.random.default_rng(1).integers(0, 256, (97, 41, 3), dtype=np.uint8)
    expected = resize_uint8(torch.from_numpy(crop).permute(2, 0, 1)[None], (64, 32))[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(resize_hwc(crop, (64, 32), CONTRACT_RESIZE), expected)
    with pytest.raises(ReidError, match="unknown resize"):
        resize_hwc(crop, (64, 32), "nearest")


def test_opencv_resize_agrees_when_enlarging_and_aliases_when_shrinking() -> None:
    pytest.importorskip("cv2")
    from reid.deploy.resize import CONTRACT_RESIZE, OPENCV_RESIZE, resize_hwc

    crop = np.random.default_rng(2).integers(0, 256, (128, 64, 3), dtype=np.uint8)
    up = np.abs(resize_hwc(crop, (256, 128), CONTRACT_RESIZE).astype(int) - resize_hwc(crop, (256, 128), OPENCV_RESIZE))
    down = np.abs(resize_hwc(crop, (64, 32), CONTRACT_RESIZE).astype(int) - resize_hwc(crop, (64, 32), OPENCV_RESIZE))
    assert up.max() <= 1  # uint8 rounding only: antialiasing does nothing when enlarging
    assert down.mean() > 5  # on noise, a 2x shrink without antialiasing differs a lot


@pytest.mark.slow
def test_embed_takes_bgr_crops_of_any_size(exported) -> None:
    from reid.deploy.embedder import load_model

    ckpt, _, _ = exported("resnet18")
    model = load_model(ckpt, device="cpu", flip=False)
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((37, 19), (300, 101), (128, 64))]
    rgb = model.embed(crops, normalize=False)
    bgr = model.embed([c[:, :, ::-1] for c in crops], normalize=False, channel_order="bgr")
    np.testing.assert_array_equal(rgb, bgr)
    assert not np.allclose(rgb, model.embed([c[:, :, ::-1] for c in crops], normalize=False))  # the order matters
    with pytest.raises(ReidError, match="channel_order"):
        model.embed(crops, channel_order="BGRA")  # type: ignore[arg-type]
    with pytest.raises(ReidError, match="at least one pixel"):
        model.embed([np.zeros((0, 5, 3), np.uint8)])


# -- reid export --for boxmot -----------------------------------------------------------------------
def test_for_boxmot_refuses_what_boxmot_cannot_load(tmp_path: Path) -> None:
    from reid.deploy.boxmot_compat import BOXMOT_MEAN, BOXMOT_STD, check_exportable

    check_exportable("onnx", tmp_path / "m.onnx", BOXMOT_MEAN, BOXMOT_STD)
    check_exportable("torchscript", tmp_path / "m.torchscript", BOXMOT_MEAN, BOXMOT_STD)
    with pytest.raises(ReidError, match=r"m\.torchscript"):
        check_exportable("torchscript", tmp_path / "m.ts", BOXMOT_MEAN, BOXMOT_STD)
    with pytest.raises(ReidError, match=r"ImageNet's mean"):
        check_exportable("onnx", tmp_path / "m.onnx", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_export_help_names_the_tracker_option() -> None:
    from typer.testing import CliRunner

    from reid.cli import app

    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--for" in result.output and "boxmot" in result.output


@needs_boxmot
@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50_ibn_a"])
def test_boxmot_loads_the_export_with_the_features_of_embed(exported, synthetic_manifest, tmp_path: Path,
                                                            backbone: str) -> None:
    """BoxMOT's own backend, cropping and resizing as it does inside its trackers, against ``embed``."""
    from PIL import Image

    from reid.data.synthetic import generate_synthetic
    from reid.deploy import boxmot_compat
    from reid.deploy.embedder import load_model

    ckpt, onnx_file, report = exported(backbone)
    sidecar = json.loads(boxmot_compat.sidecar_path(onnx_file).read_text())
    assert sidecar["model_kwargs"]["img_size"] == [128, 64] and sidecar["reid"]["resize"] == "bilinear-antialias"
    assert report.passed and report.consumer["passed"] and report.consumer["min_cosine_contract_resize"] >= 0.9999
    ours = load_model(ckpt, device="cpu", flip=False)
    ours_opencv = load_model(ckpt, device="cpu", flip=False, resize="opencv-linear")
    default = boxmot_compat.load_backend(onnx_file)  # what BotSort(reid_weights=onnx_file) builds
    exact = boxmot_compat.load_backend(onnx_file, boxmot_compat.register_preprocess())
    assert tuple(default.input_shape) == (128, 64)

    # Enlarged crops (64 x 32 synthetic people, as Market's 128 x 64 crops at 256 x 128).
    small = [np.asarray(Image.open(s.path).convert("RGB")) for s in synthetic_manifest.query[:6]]
    frame, boxes = _frame_with_people(small)
    cuts = boxmot_compat.crops_as_boxmot_cuts(frame, boxes)
    reference = ours.embed(cuts, channel_order="bgr")
    cos_default = _cosine(boxmot_compat.features(default, frame, boxes), reference)
    cos_exact = _cosine(boxmot_compat.features(exact, frame, boxes), reference)
    assert cos_default.min() >= 0.999, cos_default  # the bar, with BoxMOT's own resize
    assert cos_exact.min() >= 0.9999, cos_exact
    # The rest of the gap is the resize: with BoxMOT's resize on our side it vanishes too.
    assert _cosine(boxmot_compat.features(default, frame, boxes), ours_opencv.embed(cuts, channel_order="bgr")).min() >= 0.9999

    # Shrunk crops (people drawn at 256 x 128 into a 128 x 64 input, as video crops often are).
    big_root = generate_synthetic(tmp_path / "big", num_train_ids=2, num_test_ids=1, num_cameras=2, images_per_id=2,
                                  height=256, width=128, seed=5)
    big = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((big_root / "bounding_box_train").glob("*.jpg"))[:3]]
    frame, boxes = _frame_with_people(big, size=(270, 420))
    cuts = boxmot_compat.crops_as_boxmot_cuts(frame, boxes)
    reference = ours.embed(cuts, channel_order="bgr")
    assert _cosine(boxmot_compat.features(exact, frame, boxes), reference).min() >= 0.9999
    shrunk_default = _cosine(boxmot_compat.features(default, frame, boxes), reference)
    print(f"{backbone}: BoxMOT default resize vs embed, min cosine {cos_default.min():.6f} enlarged, "
          f"{shrunk_default.min():.6f} shrunk; with {boxmot_compat.PREPROCESS_NAME}: {cos_exact.min():.6f}")


@needs_boxmot
@pytest.mark.slow
def test_boxmot_loads_a_torchscript_export_too(exported, workdir: Path) -> None:
    from reid.deploy.boxmot_compat import sidecar_path
    from reid.deploy.export import export_checkpoint

    ckpt, _, _ = exported("resnet18")
    path, _, report, _ = export_checkpoint(ckpt, "torchscript", workdir / "ts" / "model.torchscript", num_images=4,
                                           for_consumer="boxmot")
    assert sidecar_path(path).name == "model.torchscript.metadata.json" and sidecar_path(path).is_file()
    assert report.consumer["passed"] and report.consumer["min_cosine_contract_resize"] >= 0.9999


# -- tracking a sequence --------------------------------------------------------------------------------
@needs_motmetrics
def test_identity_metrics_count_a_swap(tmp_path: Path) -> None:
    from reid.deploy.mot import TrackingRun, identity_metrics

    gt = tmp_path / "gt.txt"
    rows = [f"{f},{pid},{10 + 100 * pid},20,30,60,1,1,1" for f in range(1, 7) for pid in (1, 2)]
    gt.write_text("\n".join(rows) + "\n")
    run = TrackingRun()
    for f in range(1, 7):
        for pid in (1, 2):
            track = pid if f <= 3 else 3 - pid  # the two identities swap tracks at frame 4
            run.rows.append((f, track, 10.0 + 100 * pid, 20.0, 30.0, 60.0, 0.9))
    scores = identity_metrics(gt, run)
    assert scores["num_switches"] == 2 and scores["mota"] == pytest.approx(1 - 2 / 12)
    steady = TrackingRun(rows=[(f, pid, 10.0 + 100 * pid, 20.0, 30.0, 60.0, 0.9) for f in range(1, 7) for pid in (1, 2)])
    assert identity_metrics(gt, steady)["num_switches"] == 0 and identity_metrics(gt, steady)["idf1"] == 1.0


def test_a_sequence_without_detections_is_a_clear_error(tmp_path: Path) -> None:
    from reid.deploy.mot import read_mot_boxes

    with pytest.raises(ReidError, match="det/det.txt"):
        read_mot_boxes(tmp_path / "det" / "det.txt")
    bad = tmp_path / "det.txt"
    bad.write_text("1,2,3\n")
    with pytest.raises(ReidError, match="at least 7 columns"):
        read_mot_boxes(bad)


@needs_boxmot
@needs_motmetrics
@pytest.mark.slow
def test_track_script_runs_botsort_on_a_synthetic_sequence(exported, tmp_path: Path, capsys) -> None:
    import importlib.util as iu

    from reid.data.synthetic_sequence import generate_sequence
    from reid.deploy.mot import read_mot_boxes

    _, onnx_file, _ = exported("resnet18")
    info = generate_sequence(tmp_path / "seq", num_pairs=1, num_frames=24, frame_size=(80, 200), person_size=(64, 32))
    gt = read_mot_boxes(info.root / "gt" / "gt.txt")
    assert len(gt[1]) == 2 and min(len(v) for v in gt.values()) == 1  # one person hides the other at times
    spec = iu.spec_from_file_location("track_boxmot", REPO / "scripts" / "track_boxmot.py")
    script = iu.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main([str(info.root), "--model", str(onnx_file), "--output", str(tmp_path / "tracks.txt"),
                        "--metrics", str(tmp_path / "scores.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("frame")]
    assert len(lines) == 24 and lines[0].startswith("frame    1: ids")
    assert "identity switches" in out and len((tmp_path / "tracks.txt").read_text().splitlines()) > 20
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["num_frames"] == 24 and scores["mota"] > 0.5  # ideal detections: most boxes are tracked
    # A model file BoxMOT cannot use is refused with the fix.
    assert script.main([str(info.root), "--model", str(tmp_path / "missing.onnx")]) == 2


# -- the resize benchmark -----------------------------------------------------------------------------
@pytest.mark.slow
def test_resize_benchmark_evaluates_both_resizes(exported, synthetic_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    spec = importlib.util.spec_from_file_location("bench_resize", REPO / "benchmarks" / "bench_resize.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ckpt, _, _ = exported("resnet18")
    out = tmp_path / "resize.json"
    assert bench.main(["--checkpoint", str(ckpt), "--root", str(synthetic_root), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["contract_resize"]["resize"] == "bilinear-antialias" and result["opencv_linear"]["resize"] == "opencv-linear"
    for key in ("contract_resize", "opencv_linear"):
        assert 0.0 < result[key]["mAP"] <= 1.0 and result[key]["num_valid_queries"] > 0
    # 64 x 32 crops into a 128 x 64 input: the resizes differ by rounding, so the features barely move.
    assert result["feature_cosine"]["min"] > 0.99 and result["input_size"] == [128, 64]
    assert result["delta_mAP"] == pytest.approx(result["opencv_linear"]["mAP"] - result["contract_resize"]["mAP"])
