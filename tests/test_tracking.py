"""MLflow tracking: store resolution and checks, run lifecycle and statuses, a tracked training run, and
the variant tag that says what a run is (baseline, a named run, or the baseline plus overrides)."""

from __future__ import annotations

import json

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from reid.config import Config, TrackingConfig
from reid.errors import TrackingError
from reid.engine.signals import Terminated, sigterm_as_interrupt
from reid.tracking.mlflow_tracker import (
    Tracker,
    check_store,
    git_commit,
    resolve_store_uri,
    run_tags,
)

from conftest import app, runner, save_params, tweak


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_for(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def tracking(tmp_path: Path, **kw) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "mlruns",
                          experiment="unit", **kw)


def test_relative_store_and_artifacts_are_anchored_at_dvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    t = Tracker(TrackingConfig(uri="sqlite:///mlflow.db", artifact_root=Path("mlruns")), base=tmp_path / "elsewhere")
    assert t.uri == f"sqlite:///{(tmp_path / 'repo' / 'mlflow.db').resolve()}"
    assert t.artifact_root == (tmp_path / "repo" / "mlruns").resolve()
    monkeypatch.delenv("DVC_ROOT")
    t = Tracker(TrackingConfig(uri="sqlite:///mlflow.db"), base=tmp_path)
    assert t.uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert resolve_store_uri("http://host:5000", tmp_path) == "http://host:5000"
    assert resolve_store_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"


def test_unreachable_http_store_and_unwritable_sqlite_folder_are_clear_errors(tmp_path: Path) -> None:
    port = closed_port()
    with pytest.raises(TrackingError, match=rf"127\.0\.0\.1:{port} is not reachable.*tracking.enabled=false"):
        check_store(f"http://127.0.0.1:{port}", timeout=2)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingError, match="cannot create folder"):
        check_store(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}")
    check_store(f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")  # a creatable folder is fine


def test_disabled_or_non_zero_rank_tracker_does_nothing(tmp_path: Path) -> None:
    for t in (Tracker(tracking(tmp_path, enabled=False)), Tracker(tracking(tmp_path), rank=1)):
        t.check()
        with t.start(run_name="x"):
            t.log_params({"a": 1})
            t.log_metrics({"m": 1.0}, step=1)
        assert t.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_run_lifecycle_params_tags_and_statuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    monkeypatch.setenv("DVC_STAGE", "train_kd@sd_003")
    config = Config()
    flat = {**config.flat(), **{f"extra.p{i}": i for i in range(30)}}
    assert len(flat) > 100  # more than one log_batch of params
    t = Tracker(tracking(tmp_path))
    t.check()
    tags = run_tags(config, variant="sd_003", dataset="Market-1501", base=tmp_path)
    with t.start(run_name="first", tags=tags):
        t.log_params({**flat, "long": "x" * 7000})
        t.log_metrics({"train/loss": 1.5}, step=1)
        t.log_metrics({"train/loss": 1.0}, step=2)
    client = client_for(tmp_path)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.milestones"] == "[40, 70]"
    assert run.data.params["kd.feature_loss_coefficient"] == "0.03"
    assert len(run.data.params["long"]) == 6000
    assert set(flat) <= set(run.data.params)
    assert run.data.tags["variant"] == "sd_003" and run.data.tags["backbone"] == "resnet50"
    assert run.data.tags["dvc_exp"] == "exp-1" and run.data.tags["dvc_stage"] == "train_kd@sd_003"
    assert run.data.tags["kd_mode"] == "none" and run.data.tags["dataset"] == "Market-1501"
    assert [m.value for m in client.get_metric_history(t.run_id, "train/loss")] == [1.5, 1.0]
    experiment = client.get_experiment(run.info.experiment_id)
    assert Path(experiment.artifact_location.removeprefix("file://")).is_absolute()

    # Resume: the same run goes back to RUNNING and ends FINISHED again; a changed param becomes a tag.
    resumed = Tracker(tracking(tmp_path))
    with resumed.start(run_id=t.run_id):
        assert client.get_run(t.run_id).info.status == "RUNNING"
        resumed.log_params({**flat, "train.epochs": 200})
    assert resumed.run_id == t.run_id and resumed.resumed
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "120"
    assert run.data.tags["reid.resume.changed.train.epochs"] == "120 -> 200"

    failed = Tracker(tracking(tmp_path))
    with pytest.raises(ValueError), failed.start(run_name="boom"):
        raise ValueError("broken batch")
    run = client.get_run(failed.run_id)
    assert run.info.status == "FAILED" and "broken batch" in run.data.tags["reid.error"]

    killed = Tracker(tracking(tmp_path))
    with pytest.raises(Terminated), sigterm_as_interrupt(), killed.start(run_name="term"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert client.get_run(killed.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_resume_of_an_unknown_run_starts_a_new_one(tmp_path: Path) -> None:
    t = Tracker(tracking(tmp_path))
    with pytest.warns(UserWarning, match="not in"), t.start(run_id="0" * 32):
        pass
    run = client_for(tmp_path).get_run(t.run_id)
    assert t.run_id != "0" * 32 and run.data.tags["reid.resumed_from_run"] == "0" * 32


def test_git_commit_outside_a_repository_is_none(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    commit = git_commit(Path(__file__).resolve().parent)
    assert commit is None or len(commit) == 40


@pytest.mark.slow
def test_training_run_is_fully_tracked(tiny_config, synthetic_manifest, tmp_path: Path) -> None:
    from reid.engine.trainer import train

    result = train(tiny_config, synthetic_manifest, variant="tiny_variant", progress=False)
    client = client_for(tmp_path)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone"] == "resnet18"
    assert run.data.params["data.ids_per_batch"] == "4"
    assert set(tiny_config.flat()) <= set(run.data.params)
    assert run.data.params["kd.feature_loss_coefficient"] == "-"  # the baseline distils nothing
    tags = run.data.tags
    assert tags["variant"] == "tiny_variant" and tags["backbone"] == "resnet18" and tags["kd_mode"] == "none"
    assert tags["dataset"] and tags["num_classes"] == str(synthetic_manifest.num_classes)
    # The manifest is the run's dataset input: what fills the runs table's Dataset column and filter.
    (data_input,) = run.inputs.dataset_inputs
    dataset = data_input.dataset
    assert dataset.digest == synthetic_manifest.content_hash[:12] and dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"] == str(synthetic_manifest.root)
    profile = json.loads(dataset.profile)
    assert (profile["train_images"], profile["query_images"], profile["gallery_images"]) == (
        len(synthetic_manifest.train), len(synthetic_manifest.query), len(synthetic_manifest.gallery))
    assert profile["content_hash"] == synthetic_manifest.content_hash
    assert {t.key: t.value for t in data_input.tags}["mlflow.data.context"] == "train"

    metrics = run.data.metrics
    loss_terms = [k for k in metrics if k.startswith("train/loss_")]
    assert loss_terms, sorted(metrics)  # each named loss term separately
    # The query/gallery evaluations during training are a monitoring curve (eval_epoch/*), never a model selection.
    for key in ("train/loss", "train/acc", "train/lr", "train/img_per_s", "eval_epoch/mAP", "eval_epoch/rank1", "eval_epoch/mINP",
                "train_step/loss"):
        assert key in metrics, (key, sorted(metrics))
    epochs = tiny_config.train.epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, epochs + 1))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_epoch/mAP")] == list(range(1, epochs + 1))
    assert not any(k.startswith("best") for k in metrics)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_step/loss")]
    assert steps == list(range(1, epochs * tiny_config.train.max_steps_per_epoch + 1))  # log_every_steps=1
    assert metrics["eval_epoch/mAP"] == pytest.approx(result.metrics["mAP"])  # its last point is the final result
    # One name per quantity: the AP variant that *is* mAP is not logged again (reid.evaluation.naming).
    assert "eval_epoch/mAP_standard" not in metrics and "eval_epoch/mAP_trapezoidal" in metrics
    assert not {"mAP", "rank1", "mINP"} & set(metrics)

    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "checkpoints"} <= artifacts, artifacts
    assert [f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    local = Path(client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path / "dl")))
    from reid.checkpoint import load_checkpoint

    state = load_checkpoint(local)  # a weights-only state dict file, not a pickled MLflow model
    assert state["mlflow_run_id"] == run.info.run_id and state["epoch"] == epochs  # the run's model: the last epoch


def test_inactive_feature_keys_follow_the_features_the_run_uses() -> None:
    """One rule (Config.inactive_keys) for MLflow and `reid compare`: a key counts only when read."""
    from reid.config import INACTIVE, validate

    baseline = Config()
    flat = baseline.active_flat()
    assert flat["kd.feature_loss_coefficient"] == INACTIVE and flat["kd.temperature"] == INACTIVE
    assert flat["loss.center_lr"] == 0.5 and flat["kd.self_distill"] is False and flat["loss.id_weight"] == 1.0
    assert validate({"loss": {"center_weight": 0.0}}).active_flat()["loss.center_lr"] == INACTIVE
    assert set(flat) == set(baseline.flat())

    sd = validate({"kd": {"self_distill": True, "feature_loss_coefficient": 0.05}}).active_flat()
    assert sd["kd.feature_loss_coefficient"] == 0.05 and sd["kd.teacher_stage"] == "layer3"
    assert sd["kd.logit_weight"] == INACTIVE and sd["kd.temperature"] == INACTIVE  # no logit term reads it

    offline = validate({"kd": {"teacher_checkpoint": "t.pt", "logit_weight": 1.0, "temperature": 8.0},
                        "loss": {"center_weight": 5e-4}}).active_flat()
    assert offline["kd.temperature"] == 8.0 and offline["kd.symmetric"] is False
    assert offline["kd.feature_distance"] == INACTIVE  # teacher_feature_weight is 0
    assert offline["kd.feature_loss_coefficient"] == INACTIVE and offline["loss.center_lr"] == 0.5


@pytest.mark.slow
def test_logged_params_show_inactive_distillation_keys_as_inactive(tiny_config, synthetic_manifest,
                                                                    tmp_path: Path) -> None:
    """MLflow's compare view: the baseline must not show an active-looking distillation coefficient."""
    from reid.config import validate
    from reid.engine.trainer import train

    runs = {}
    for name, kd in (("baseline", {}), ("sd", {"self_distill": True, "feature_loss_coefficient": 0.05})):
        tree = tiny_config.model_dump(mode="json")
        tree["train"].update({"epochs": 1, "max_steps_per_epoch": 1, "output_dir": str(tmp_path / name)})
        tree["kd"].update(kd)
        result = train(validate(tree, name), synthetic_manifest, variant=name, progress=False)
        runs[name] = client_for(tmp_path).get_run(result.mlflow_run_id).data
    assert runs["baseline"].params["kd.feature_loss_coefficient"] == "-"
    assert runs["baseline"].params["kd.teacher_stage"] == "-" and runs["baseline"].tags["kd_mode"] == "none"
    assert runs["sd"].params["kd.feature_loss_coefficient"] == "0.05" and runs["sd"].tags["kd_mode"] == "self"
    assert runs["sd"].params["kd.teacher_stage"] == "layer3" and runs["sd"].params["kd.logit_weight"] == "-"


def test_comparison_view_names_the_latest_run_of_each_variant_best_map_first(tmp_path: Path) -> None:
    """The shared view `reid ui` links to: one run per variant (the newest), sorted by eval/mAP, with the
    compared columns; written where MLflow's UI reads shared views (experiment tag)."""
    from mlflow.tracking import MlflowClient

    from reid.tracking.ui_view import SHARED_VIEW_TAG_PREFIX, VIEW_KEY, comparison_url, publish_comparison_view

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    eid = client.create_experiment("cmp", artifact_location=(tmp_path / "art").as_uri())
    made = {}
    for name, value in (("baseline", 0.30), ("sd_003", 0.50), ("baseline", 0.40)):  # baseline rerun: newest counts
        run = client.create_run(eid, run_name=name, tags={"variant": name, "reid.command": "train"})
        client.log_metric(run.info.run_id, "eval/mAP", value)
        client.log_metric(run.info.run_id, "eval/synth_b/mAP", value / 2)
        made.setdefault(name, []).append(run.info.run_id)
        time.sleep(0.01)  # distinct start times
    other = client.create_run(eid, run_name="evaluate-x", tags={"variant": "x", "reid.command": "evaluate"})
    view = publish_comparison_view(client, "cmp")
    assert view.names == ["sd_003", "baseline"] and view.runs == [made["sd_003"][0], made["baseline"][1]]
    state = json.loads(client.get_experiment(eid).tags[SHARED_VIEW_TAG_PREFIX + VIEW_KEY])
    assert state["orderByKey"] == "metrics.`eval/mAP`" and state["orderByAsc"] is False
    assert made["baseline"][0] not in state["searchFilter"] and other.info.run_id not in state["searchFilter"]
    columns = state["selectedColumns"]
    assert columns[:3] == ["metrics.`eval/mAP`", "metrics.`eval/rank1`", "metrics.`eval/mINP`"]
    assert {"metrics.`eval/synth_b/mAP`", "tags.`kd_mode`", "params.`kd.feature_loss_coefficient`",
            "params.`kd.teacher_stage`", "params.`kd.teacher_checkpoint`", "attributes.`Dataset`",
            "attributes.`Models`"} <= set(columns)
    url = comparison_url("http://localhost:5000/", view)
    assert url == (f"http://localhost:5000/#/experiments/{eid}/runs?viewStateShareKey={VIEW_KEY}"
                   "&workflowType=machine_learning")
    with pytest.raises(TrackingError, match="'nope' is not in this store"):
        publish_comparison_view(client, "nope")


def test_the_variant_tag_says_what_the_run_is(tmp_path: Path, tiny_config, synthetic_manifest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from reid.data.manifest import write_manifest

    monkeypatch.chdir(tmp_path)
    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = save_params(tmp_path / "p.yaml", tiny_config)
    runs = {"untrained": ["-o", "train.epochs=0", "--run-name", "untrained"],
            "moved": ["-o", "train.epochs=0", "-o", "train.eval_every=3"]}
    for name, args in runs.items():
        result = runner.invoke(app(), ["train", "--params", str(params), "-o", f"train.output_dir={tmp_path / name}",
                                       *args])
        assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)
    experiment = client.get_experiment_by_name(tiny_config.tracking.experiment)
    tags = {r.info.run_name: r.data.tags for r in client.search_runs([experiment.experiment_id])}
    assert tags["untrained"]["variant"] == "untrained" and tags["untrained"]["reid.overrides"] == "train.epochs=0"
    assert tags["moved"]["variant"] == "baseline+train.epochs=0" and tags["moved"]["reid.based_on"] == "baseline"
    from reid.commands.train import identity_tags

    same = save_params(tmp_path / "q.yaml", tiny_config)
    config = tweak(tiny_config, train={"output_dir": str(tmp_path / "x"), "device": "cpu"})
    assert identity_tags(same, None, [f"train.output_dir={tmp_path / 'x'}"], None, config) == {}  # still the baseline
