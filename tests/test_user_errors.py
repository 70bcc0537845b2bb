"""What real custom datasets ran into (issue 12): each test fails without its fix.

Single-camera data, corrupt test images under ``skip``, train/test identity overlap, implausible
cameras, skipped queries, misleading messages, progress in log files, the untrained reference point
and identities with fewer than K images.
"""

from __future__ import annotations

import json
import os
import re
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reid.config import ConfigError, load_config, validate
from reid.data.samples import Sample
from reid.errors import CheckpointError, DatasetError, EvaluationError

from conftest import folder_dataset, good_layout, image, params_file, prepare, runner


# -- 2: single-camera data ------------------------------------------------------------------------------
def single_camera(manifest):
    return manifest.model_copy(update={
        "query": [Sample(s.path, s.pid, 1) for s in manifest.query],
        "gallery": [Sample(s.path, s.pid, 1) for s in manifest.gallery]})


def test_prepare_warns_when_query_and_gallery_share_one_camera(tmp_path: Path) -> None:
    layout = good_layout(gallery={f"p{i}": ["cam1_5.jpg", "cam1_6.jpg"] for i in range(3)})
    result = prepare(params_file(tmp_path, folder_dataset(tmp_path / "ds", layout)))
    assert result.exit_code == 0, result.output
    assert "single camera" in result.stderr and "eval.cross_camera=false" in result.stderr


def test_train_refuses_single_camera_data_before_the_first_step(tiny_config, synthetic_manifest) -> None:
    from reid.engine.trainer import train

    with pytest.raises(EvaluationError, match=r"(?s)Nothing was trained.*eval\.cross_camera=false"):
        train(tiny_config, single_camera(synthetic_manifest), progress=False)
    assert not Path(tiny_config.train.output_dir).exists()  # no step, no config.yaml, no checkpoint
    # Counting same-camera matches is the documented way out, and then training goes ahead.
    from reid.data.checks import check_evaluable

    check_evaluable(single_camera(synthetic_manifest), cross_camera=False)


def test_a_failed_evaluation_keeps_the_trained_weights(tiny_config, synthetic_manifest,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.checkpoint import load_checkpoint
    from reid.engine.trainer import train
    import reid.evaluation.runner as runner_module

    def broken(*args, **kwargs):
        raise EvaluationError("evaluation broke")

    monkeypatch.setattr(runner_module, "evaluate_model", broken)
    config = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"epochs": 1})})
    with pytest.raises(EvaluationError, match=r"evaluation broke(?s:.*)last\.pt"):
        train(config, synthetic_manifest, progress=False)
    state = load_checkpoint(Path(config.train.output_dir) / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == 3 and "model" in state


# -- 3: corrupt test images under skip --------------------------------------------------------------------
def test_skipped_corrupt_test_images_are_dropped_from_the_protocol(tmp_path: Path) -> None:
    from reid.evaluation.runner import evaluate_model, write_outputs

    query = [Sample(str(tmp_path / "q" / f"{p}.jpg"), p, 1) for p in range(1, 5)]
    gallery = [Sample(str(tmp_path / "g" / f"{p}_{c}.jpg"), p, c) for p in range(1, 5) for c in (2, 3)]
    for i, s in enumerate(query + gallery):
        image(Path(s.path), i)
    Path(query[1].path).write_bytes(b"not an image")
    Path(gallery[4].path).write_bytes(b"")
    config = validate({"data": {"height": 32, "width": 16, "num_workers": 0, "test_batch_size": 3,
                                "corrupt_images": "skip"}, "eval": {"num_ranked_lists": 2}})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.warns(UserWarning, match="skipping corrupt image"):
        result = evaluate_model(model, types.SimpleNamespace(query=query, gallery=gallery), config, "cpu")
    assert result.num_queries == 3 and result.skipped_images == [query[1].path, gallery[4].path]
    metrics = json.loads(write_outputs(result, tmp_path / "out")["metrics"].read_text())
    assert metrics["num_skipped_images"] == 2 and metrics["skipped_images"] == [query[1].path, gallery[4].path]


def test_prepare_table_agrees_with_statistics_json_under_skip(tmp_path: Path) -> None:
    root = folder_dataset(tmp_path / "ds", good_layout())
    (root / "gallery" / "p0" / "cam2_1.jpg").write_bytes(b"\xff\xd8 truncated")
    result = prepare(params_file(tmp_path, root, corrupt_images="skip"), "--check-images")
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "m" / "statistics.json").read_text())
    for split in ("train", "query", "gallery"):
        row = re.search(rf"^\s*{split}\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\d+)", result.stdout, re.M)
        assert row is not None, result.stdout
        assert [int(x) for x in row.groups()] == [stats[split][k] for k in ("ids", "images", "cameras")]
    assert stats["gallery"]["images"] == 5


# -- 5: train/test identity overlap in the folder format -----------------------------------------------
def test_folder_identity_in_train_and_query_is_refused_unless_allowed(tmp_path: Path) -> None:
    from reid.data.datasets import read_dataset

    layout = good_layout()
    layout["train"]["p1"] = ["cam1_9.jpg", "cam2_9.jpg"]
    root = folder_dataset(tmp_path / "ds", layout)
    with pytest.raises(DatasetError, match=r"p1 appear in train/ and in query/ or gallery/.*data\.allow_id_overlap=true"):
        read_dataset("folder", root)
    assert len(read_dataset("folder", root, allow_id_overlap=True).train) == 18
    assert prepare(params_file(tmp_path, root)).exit_code == 2
    assert prepare(params_file(tmp_path, root, allow_id_overlap=True)).exit_code == 0


# -- 6: implausible cameras -----------------------------------------------------------------------------
def test_prepare_warns_about_camera_labels_that_are_not_cameras(tmp_path: Path) -> None:
    layout = good_layout(query={f"p{i}": ["car_0001_cam1.jpg"] for i in range(3)},
                         gallery={f"p{i}": ["car_0002_cam2.jpg"] for i in range(3)})
    result = prepare(params_file(tmp_path, folder_dataset(tmp_path / "ds", layout)))
    assert result.exit_code == 0, result.output
    assert "'car'" in result.stderr and "do not look like cameras" in result.stderr


def test_no_valid_query_error_suspects_the_camera_parse_when_cameras_match_ids() -> None:
    from reid.evaluation.metrics import evaluate_distances

    pids, cams = [1, 2, 3, 4], [1, 2, 3, 4]  # every identity its own camera: the parse is wrong
    with pytest.raises(EvaluationError) as err:
        evaluate_distances(np.zeros((4, 4)), pids, pids, cams, cams)
    message = str(err.value)
    assert "look wrong (4 cameras for 4 identities)" in message and "rename the files" in message
    assert message.index("rename the files") < message.index("eval.cross_camera=false")


# -- 7: skipped queries are named ----------------------------------------------------------------------
def test_skipped_queries_are_named_in_the_result_and_metrics_json(tmp_path: Path) -> None:
    from reid.evaluation.runner import evaluate_sample_features, write_outputs

    query = [Sample(f"/q/{p}.jpg", p, 1) for p in (1, 2, 9)]  # identity 9 is not in the gallery
    gallery = [Sample(f"/g/{p}.jpg", p, 2) for p in (1, 2, 3)]
    feats = torch.eye(4)
    config = validate({"eval": {"num_ranked_lists": 0}}).eval
    result = evaluate_sample_features(feats[[1, 2, 3]], feats[[1, 2, 3]], query, gallery, config)
    assert result.num_skipped_queries == 1 and result.skipped_queries == ["/q/9.jpg"]
    assert "/q/9.jpg" in result.skipped_report()
    metrics = json.loads(write_outputs(result, tmp_path)["metrics"].read_text())
    assert metrics["skipped_queries"] == ["/q/9.jpg"] and metrics["num_skipped_queries"] == 1


# -- 8: messages ---------------------------------------------------------------------------------------
def test_missing_manifest_hint_names_the_params_file_given(tmp_path: Path) -> None:
    from reid.cli import app

    params = params_file(tmp_path, tmp_path / "nowhere")
    result = runner.invoke(app, ["train", "--params", str(params)])
    assert result.exit_code == 2
    assert f"reid prepare --params {params}" in result.stderr


def test_a_yaml_passed_as_checkpoint_is_not_a_reid_checkpoint(tmp_path: Path) -> None:
    from reid.checkpoint import load_checkpoint

    path = tmp_path / "params.yaml"
    path.write_text("data:\n  root: x\n")
    with pytest.raises(CheckpointError, match="is not a reid checkpoint") as err:
        load_checkpoint(path)
    assert "pickle" not in str(err.value)


def test_interrupt_in_the_first_epoch_does_not_claim_a_checkpoint(tmp_path: Path) -> None:
    from reid.commands.train import interrupted_message
    from reid.checkpoint import save_checkpoint

    last, params = tmp_path / "last.pt", Path("p.yaml")
    message = interrupted_message("SIGTERM", last, params, None, False, time.time())
    assert "nothing to resume" in message and "holds" not in message and "--resume" not in message
    save_checkpoint({"epoch": 3}, last)
    old = time.time() - 100
    os.utime(last, (old, old))
    message = interrupted_message("SIGTERM", last, params, None, False, time.time())
    assert "earlier run" in message and "holds" not in message
    assert "holds epoch 3" in interrupted_message("SIGTERM", last, params, "sd", True, time.time())


def test_an_override_typo_is_blamed_on_the_override(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("train:\n  epochs: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(params, overrides=["train.epoch=3"])
    assert "override(s) train.epoch=3" in str(err.value) and "train.epoch: unknown key" in str(err.value)
    params.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match=rf"invalid parameters in {re.escape(str(params))}:"):
        load_config(params, overrides=["train.epochs=3"])


# -- 9: one rule for relative paths --------------------------------------------------------------------
def test_relative_paths_are_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.commands._common import project_base
    from reid.commands.prepare import dataset_root
    from reid.config import TrackingConfig
    from reid.tracking.mlflow_tracker import Tracker

    params = tmp_path / "configs" / "custom.yaml"  # a params file elsewhere than the working directory
    params.parent.mkdir()
    params.write_text("{}\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    tracking = TrackingConfig(uri="sqlite:///mlflow.db", artifact_root=Path("mlruns"))
    assert dataset_root(Path("data/ds")) == work / "data" / "ds"
    tracker = Tracker(tracking, base=project_base(params))
    assert tracker.uri == f"sqlite:///{work / 'mlflow.db'}" and tracker.artifact_root == work / "mlruns"
    # Inside a DVC stage the shared things (dataset, MLflow store) are anchored at the repository root.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert dataset_root(Path("data/ds")) == tmp_path / "repo" / "data" / "ds"
    assert project_base(params) == tmp_path / "repo"
    reference = (Path(__file__).resolve().parents[1] / "docs" / "PARAMETERS.md").read_text()
    assert "**Relative paths** follow one rule" in reference and "relative to the repository root" not in reference


# -- 10: progress in a log file ------------------------------------------------------------------------
def test_progress_prints_a_line_every_log_interval_when_not_on_a_terminal() -> None:
    import io

    from reid.engine.progress import EpochProgress

    log = io.StringIO()
    bar = EpochProgress(1, 2, 5, stream=log, log_every=2)
    for step in range(1, 6):
        bar.update(step, {"loss": 1.0})
    bar.close(5)
    lines = log.getvalue().splitlines()
    assert [line.split("]")[1].split()[0] for line in lines] == ["2/5", "4/5", "5/5"]


# -- 11: the untrained reference point -----------------------------------------------------------------
def test_zero_epochs_evaluates_the_initial_model(tiny_config, synthetic_manifest) -> None:
    from reid.checkpoint import load_checkpoint
    from reid.engine.trainer import train

    config = validate({**tiny_config.model_dump(mode="json"), "train": {**tiny_config.train.model_dump(mode="json"),
                                                                        "epochs": 0}})
    result = train(config, synthetic_manifest, progress=False)
    assert result.epochs == 0 and result.global_step == 0 and 0 <= result.metrics["mAP"] <= 1
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["epoch"] == 0 and metrics["mAP"] == result.metrics["mAP"]
    assert load_checkpoint(result.last_checkpoint)["epoch"] == 0  # the untrained model, for `reid evaluate`


# -- 12: identities with fewer than K images -----------------------------------------------------------
def test_prepare_reports_identities_with_fewer_than_k_images(tmp_path: Path) -> None:
    layout = good_layout()
    layout["train"]["t0"] = ["cam1_0.jpg", "cam2_0.jpg"]
    result = prepare(params_file(tmp_path, folder_dataset(tmp_path / "ds", layout), instances_per_id=4))
    assert result.exit_code == 0, result.output
    assert "1 training identity has fewer than K=4 images" in result.stderr and "with replacement" in result.stderr
