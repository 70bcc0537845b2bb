"""Evaluation outputs (metrics.json, cmc.csv, pictures), MLflow logging, the runner on Sample lists,
``reid evaluate`` using the checkpoint's protocol unless overridden, and ``reid evaluate`` end to end
(skipped until the data and model modules it needs exist)."""

from __future__ import annotations

import importlib
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reid.config import EvalConfig, validate
from reid.evaluation.metrics import evaluate_distances
from reid.evaluation.plots import plot_cmc, ranked_list_figure
from reid.evaluation.runner import evaluate_model, evaluate_sample_features, write_outputs

from conftest import app, good_layout, prepare_folder, random_checkpoint, runner, tweak


@dataclass(frozen=True)
class FakeSample:
    """The fields of ``reid.data.samples.Sample`` the evaluation reads."""

    path: str
    pid: int
    camid: int


def write_images(root: Path, labels: list[tuple[int, int]], seed: int = 0) -> list[FakeSample]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (pid, cam) in enumerate(labels):
        path = root / f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg"
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)
        samples.append(FakeSample(str(path), pid, cam))
    return samples


def clustered(labels: list[tuple[int, int]], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(50, 8, generator=torch.Generator().manual_seed(99))
    pids = torch.as_tensor([p for p, _ in labels])
    return centers[pids] + 0.6 * torch.randn(len(labels), 8, generator=gen)


@pytest.fixture()
def split(tmp_path: Path) -> tuple[list[FakeSample], list[FakeSample]]:
    q_labels = [(p, 1) for p in range(1, 7)]
    g_labels = [(p, c) for p in range(1, 7) for c in (1, 2, 3)] + [(0, 2), (0, 3)]
    return write_images(tmp_path / "query", q_labels), write_images(tmp_path / "gallery", g_labels, seed=1)


def test_sample_features_carry_ranked_lists_with_paths(split) -> None:
    query, gallery = split
    qf = clustered([(s.pid, s.camid) for s in query], 0)
    gf = clustered([(s.pid, s.camid) for s in gallery], 1)
    res = evaluate_sample_features(qf, gf, query, gallery, EvalConfig(num_ranked_lists=3, ranked_list_size=5))
    lists = res.ranked_lists
    assert lists is not None and len(lists.query_index) == 3 and lists.gallery_index.shape == (3, 5)
    for row, qi in enumerate(lists.query_index):
        q = query[qi]
        assert lists.query_paths[row] == q.path
        for j, gi in enumerate(lists.gallery_index[row]):
            g = gallery[gi]
            assert lists.gallery_paths[row][j] == g.path
            assert not (g.pid == q.pid and g.camid == q.camid), "junk must not be shown"
            assert lists.matches[row, j] == (g.pid == q.pid)
    with pytest.raises(Exception, match="in order"):
        evaluate_sample_features(qf[:-1], gf, query, gallery, EvalConfig())


def test_write_outputs_files(split, tmp_path: Path) -> None:
    query, gallery = split
    qf = clustered([(s.pid, s.camid) for s in query], 0)
    gf = clustered([(s.pid, s.camid) for s in gallery], 1)
    res = evaluate_sample_features(qf, gf, query, gallery, EvalConfig(num_ranked_lists=2, max_rank=10))
    paths = write_outputs(res, tmp_path / "out", extra={"flip": False}, title="tiny")
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["mAP"] == pytest.approx(res.mAP) and metrics["rank1"] == pytest.approx(res.rank(1))
    assert {"rank5", "rank10", "rank20", "mINP", "num_valid_queries", "num_skipped_queries", "ap_variant",
            "rerank", "flip"} <= set(metrics)
    lines = paths["cmc_csv"].read_text().splitlines()
    assert lines[0] == "rank,cmc" and len(lines) == 11 and lines[1].startswith("1,")
    for key in ("cmc_plot", "ranked_lists"):
        assert paths[key].is_file() and paths[key].read_bytes()[:4] == b"\x89PNG"


def test_plots_accept_several_results_and_missing_images(tmp_path: Path) -> None:
    a = evaluate_distances(np.array([[0.1, 0.2]]), [1], [1, 2], [1], [2, 2], max_rank=5)
    b = evaluate_distances(np.array([[0.2, 0.1]]), [1], [1, 2], [1], [2, 2], max_rank=5)
    assert plot_cmc({"a": a, "b": b}, tmp_path / "cmc.png").is_file()
    # Missing files become grey tiles instead of failing the whole evaluation.
    out = ranked_list_figure(["/nonexistent/q.jpg"], ["/nonexistent/g0.jpg", "/nonexistent/g1.jpg"],
                             np.array([[1, 0, -1]]), np.array([[True, False, False]]), tmp_path / "rl.png")
    assert out.is_file()


def test_evaluation_logs_through_the_tracker_into_the_training_run(tmp_path: Path) -> None:
    """`reid evaluate` logs with the trainer's Tracker: into the run that trained the model (metrics,
    protocol tags, files), leaving that run's status as it was; a run this store lacks gets a run of its own."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from reid.commands.evaluate import log_evaluation_run
    from reid.evaluation.naming import EvaluationNames

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = validate({"tracking": {"uri": uri, "artifact_root": str(tmp_path / "mlruns"), "experiment": "t"}})
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "mlruns" / "t").as_uri())
    trained = client.create_run(exp).info.run_id
    client.set_terminated(trained, "KILLED")  # e.g. interrupted, then evaluated from its last.pt
    res = evaluate_distances(np.array([[0.1, 0.2]]), [1], [1, 2], [1], [2, 2], max_rank=5)
    artifact = tmp_path / "metrics.json"
    artifact.write_text("{}")
    ckpt = tmp_path / "last.pt"
    run_id, own = log_evaluation_run(config, "m", trained, ckpt, res, [artifact], base=tmp_path,
                                     names=EvaluationNames(), dataset={"dataset": "market"})
    assert (run_id, own) == (trained, True)
    run = client.get_run(trained)
    assert run.data.metrics["eval/mAP"] == pytest.approx(1.0) and "eval/rank1" in run.data.metrics
    assert run.data.tags["eval/ap_variant"] == "standard" and run.data.tags["eval/dataset"] == "market"
    assert run.info.status == "KILLED"  # attached: the training run's status is not rewritten
    assert [f.path for f in client.list_artifacts(trained, "evaluation")] == ["evaluation/metrics.json"]
    # A training run that is not in this store: the evaluation is a run of its own, FINISHED.
    run_id, own = log_evaluation_run(config, "m", "0" * 32, ckpt, res, [artifact], base=tmp_path)
    assert own is False and run_id != trained
    other = client.get_run(run_id)
    assert other.info.status == "FINISHED" and other.data.tags["reid.trained_by_run"] == "0" * 32


class _PixelNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def stand_in(monkeypatch: pytest.MonkeyPatch, module: str, **attrs) -> None:
    """Replace ``module.<attr>`` for this test; create the module (and any missing package above it)
    if it does not exist yet, following docs/ARCHITECTURE.md (modules are written in parallel)."""
    parts = module.split(".")
    parent = None
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        try:
            current = importlib.import_module(name)
        except ImportError:
            current = types.ModuleType(name)
            if i < len(parts):
                current.__path__ = []  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, name, current)
            if parent is not None:
                monkeypatch.setattr(parent, parts[i - 1], current, raising=False)
        parent = current
    for key, value in attrs.items():
        monkeypatch.setattr(parent, key, value, raising=False)


def pixel_loader(calls: list[int] | None = None):
    """``build_test_loader`` stand-in: images whose pixels encode the pid, in order, in batches of 4."""

    def build_test_loader(samples, config, device):
        if calls is not None:
            calls.append(len(samples))
        images = torch.stack([torch.full((3, 8, 4), float(s.pid)) + 0.01 * i for i, s in enumerate(samples)])
        return [images[i : i + 4].to(device) for i in range(0, len(images), 4)]

    return build_test_loader


def test_evaluate_model_uses_build_test_loader_contract(split, monkeypatch: pytest.MonkeyPatch) -> None:
    query, gallery = split
    calls: list[int] = []
    stand_in(monkeypatch, "reid.data.loaders", build_test_loader=pixel_loader(calls))
    config = validate({"eval": {"flip": True, "num_ranked_lists": 2}})
    manifest = types.SimpleNamespace(query=query, gallery=gallery)
    torch.manual_seed(0)
    res = evaluate_model(_PixelNet(), manifest, config, "cpu")
    assert calls == [len(query), len(gallery)]
    assert res.num_queries == len(query) and res.ranked_lists is not None


def test_resolve_config_takes_model_and_geometry_from_checkpoint() -> None:
    from reid.commands.evaluate import model_name, resolve_config

    ckpt = validate({"model": {"backbone": "resnet18", "pretrained": "none"}, "data": {"height": 64, "width": 32}})
    params = validate({"data": {"test_batch_size": 7}, "eval": {"rerank": True, "max_rank": 20}})
    config, notes = resolve_config(ckpt, params, [])
    assert config.model.backbone == "resnet18" and (config.data.height, config.data.width) == (64, 32)
    assert config.data.test_batch_size == 7 and config.eval.rerank and config.eval.max_rank == 20
    assert any("data.height" in n for n in notes)
    alone, _ = resolve_config(ckpt, None, ["eval.flip=true"])
    assert alone.eval.flip and alone.data.height == 64
    assert model_name(Path("pipeline/models/sd_003/best.pt"), None) == "sd_003"
    assert model_name(Path("pipeline/models/sd_003/best.pt"), "kd_r18") == "kd_r18"


def _cli():
    import typer

    from reid.commands import evaluate

    app = typer.Typer()
    app.command()(evaluate.command)
    return app


def test_command_config_errors_are_clean(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    missing = CliRunner().invoke(_cli(), [str(tmp_path / "x.pt"), "--params", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    params = tmp_path / "params.yaml"
    params.write_text("eval: {}\n")
    bad = CliRunner().invoke(_cli(), [str(tmp_path / "x.pt"), "--params", str(params), "-o", "eval.bogus=1"])
    assert bad.exit_code == 2 and "eval.bogus" in bad.output and "Traceback" not in bad.output


def test_command_with_stand_ins(split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's own logic (config merge, flags, outputs, MLflow run) with the model loader,
    manifest and test loader replaced by stand-ins that follow their documented contracts."""
    from typer.testing import CliRunner

    query, gallery = split
    ckpt_config = validate({"model": {"backbone": "resnet18", "pretrained": "none"}, "data": {"height": 32, "width": 16}})
    loaded = []

    def load_inference_model(path, device):
        loaded.append((Path(path), torch.device(device)))
        torch.manual_seed(0)
        return _PixelNet().to(device), ckpt_config

    stand_in(monkeypatch, "reid.models.inference", load_inference_model=load_inference_model)
    stand_in(monkeypatch, "reid.data.manifest",
             load_manifest=lambda path, *_: types.SimpleNamespace(query=query, gallery=gallery, root=str(tmp_path / "data"), format="market1501"))
    stand_in(monkeypatch, "reid.data.loaders", build_test_loader=pixel_loader())

    ckpt = tmp_path / "pipeline" / "models" / "r18" / "best.pt"  # a pipeline checkpoint: its folder names it
    ckpt.parent.mkdir(parents=True)
    torch.save({"format": "reid-checkpoint-v1", "mlflow_run_id": "abc123"}, ckpt)
    params = tmp_path / "params.yaml"
    import yaml

    params.write_text(yaml.safe_dump({
        "data": {"height": 256, "test_batch_size": 3},
        "eval": {"num_ranked_lists": 2, "max_rank": 10},
        "train": {"device": "cpu"},
        "tracking": {"uri": "sqlite:///mlflow.db", "artifact_root": "mlruns", "experiment": "evals"},
    }))
    monkeypatch.chdir(tmp_path)  # the default output folder is relative: pipeline/eval/<name>/rerank
    result = CliRunner().invoke(_cli(), [str(ckpt), "--params", str(params), "--no-flip", "--rerank",
                                         "-o", "eval.rerank_k1=4", "-o", "eval.rerank_k2=2"])
    assert result.exit_code == 0, result.output
    assert loaded == [(ckpt, torch.device("cpu"))]
    assert "data.height" in result.output  # the note: the checkpoint's 32, not 256 from the params
    # Re-ranked: a measurement of its own, never the pipeline's pipeline/eval/r18/metrics.json.
    out = tmp_path / "pipeline" / "eval" / "r18" / "rerank"
    assert not (out.parent / "metrics.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rerank"] is True and metrics["flip"] is False and metrics["model"] == "r18"
    assert metrics["num_queries"] == len(query) and "rank10" in metrics
    assert len((out / "cmc.csv").read_text().splitlines()) == 11
    assert (out / "ranked_lists.png").is_file() and (out / "cmc.png").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # anchored beside the params
    exp = client.get_experiment_by_name("evals")
    assert exp.artifact_location.startswith((tmp_path / "mlruns").resolve().as_uri())
    runs = client.search_runs([exp.experiment_id])
    # The training run "abc123" is not in this store: the evaluation gets a run of its own.
    assert [r.info.run_name for r in runs] == ["evaluate-r18-rerank"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.metrics["eval_rerank/mAP"] == pytest.approx(metrics["mAP"])
    assert "eval/mAP" not in run.data.metrics
    assert run.data.tags["reid.trained_by_run"] == "abc123" and run.data.tags["variant"] == "r18"
    assert run.data.params["eval.rerank"] == "True" and run.data.params["model.backbone"] == "resnet18"
    names = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation_rerank")}
    assert {"evaluation_rerank/metrics.json", "evaluation_rerank/cmc.png", "evaluation_rerank/ranked_lists.png"} <= names


def _stand_ins(monkeypatch: pytest.MonkeyPatch, split, manifests: dict[str, types.SimpleNamespace]) -> list[str]:
    """Model loader, manifest reader and test loader stand-ins; ``manifests`` maps a manifest path to what
    ``load_manifest`` returns (query, gallery, root, format, content_hash). Returns the paths read."""
    query, gallery = split
    ckpt_config = validate({"model": {"backbone": "resnet18", "pretrained": "none"}, "data": {"height": 32, "width": 16}})
    read: list[str] = []

    def load_inference_model(path, device):
        torch.manual_seed(0)
        return _PixelNet().to(device), ckpt_config

    def load_manifest(path, *_):
        read.append(str(path))
        return types.SimpleNamespace(query=query, gallery=gallery, **vars(manifests[str(path)]))

    stand_in(monkeypatch, "reid.models.inference", load_inference_model=load_inference_model)
    stand_in(monkeypatch, "reid.data.manifest", load_manifest=load_manifest)
    stand_in(monkeypatch, "reid.data.loaders", build_test_loader=pixel_loader())
    return read


def _eval_params(tmp_path: Path, **evaluate) -> Path:
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"manifest": "pipeline/data/manifest.json"},
        "eval": {"num_ranked_lists": 0, "max_rank": 10},
        "train": {"device": "cpu"},
        "tracking": {"uri": "sqlite:///mlflow.db", "artifact_root": "mlruns", "experiment": "evals"},
        "evaluate": {"output_dir": "pipeline/eval", **evaluate},
    }))
    return params


def test_other_data_and_rerank_never_overwrite_the_models_own_evaluation(
        split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 items 1 and 13: an evaluation on another dataset (its manifest hash differs from the
    checkpoint's data_hash) or a re-ranked one is recorded under names of its own, in the files and in
    the training run, with the evaluated dataset recorded."""
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    own = types.SimpleNamespace(root="/data/market", format="market1501", content_hash="a" * 64)
    other = types.SimpleNamespace(root="/data/Other.Set", format="folder", content_hash="b" * 64)
    _stand_ins(monkeypatch, split, {"pipeline/data/manifest.json": own, "other/manifest.json": other})
    params = _eval_params(tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("evals", artifact_location=(tmp_path / "mlruns").as_uri())
    training = client.create_run(exp, run_name="train-baseline", tags={"variant": "baseline"}).info.run_id
    ckpt = tmp_path / "pipeline" / "models" / "baseline" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"mlflow_run_id": training, "data_hash": own.content_hash}, ckpt)
    app = _cli()

    first = CliRunner().invoke(app, [str(ckpt), "--params", str(params)])
    assert first.exit_code == 0, first.output
    own_file = tmp_path / "pipeline" / "eval" / "baseline" / "metrics.json"
    own_metrics = json.loads(own_file.read_text())
    assert own_metrics["target"] is None and own_metrics["dataset_hash"] == own.content_hash
    own_bytes = own_file.read_bytes()
    logged = client.get_run(training).data
    assert logged.metrics["eval/mAP"] == pytest.approx(own_metrics["mAP"])
    assert logged.tags["eval/dataset"] == "market" and logged.tags["eval/dataset_hash"] == own.content_hash

    # Another dataset: detected from the hash, recorded as target "Other_Set".
    cross = CliRunner().invoke(app, [str(ckpt), "--params", str(params), "--manifest", "other/manifest.json",
                                     "-o", "eval.max_rank=5"])
    assert cross.exit_code == 0, cross.output
    assert "not the data" in cross.output
    cross_file = tmp_path / "pipeline" / "eval" / "baseline" / "targets" / "Other_Set" / "metrics.json"
    cross_metrics = json.loads(cross_file.read_text())
    assert cross_metrics["target"] == "Other_Set" and cross_metrics["dataset_format"] == "folder"
    assert cross_metrics["dataset_hash"] == other.content_hash and cross_metrics["trained_on_hash"] == own.content_hash
    assert cross_metrics["manifest"] == "other/manifest.json"
    # Re-ranked on the own data: its own names too.
    rr = CliRunner().invoke(app, [str(ckpt), "--params", str(params), "--rerank", "-o", "eval.rerank_k1=4",
                                  "-o", "eval.rerank_k2=2"])
    assert rr.exit_code == 0, rr.output
    assert json.loads((own_file.parent / "rerank" / "metrics.json").read_text())["rerank"] is True

    assert own_file.read_bytes() == own_bytes  # the model's own file is untouched
    logged = client.get_run(training).data
    assert logged.metrics["eval/mAP"] == pytest.approx(own_metrics["mAP"])
    assert logged.metrics["eval/rank5"] == pytest.approx(own_metrics["rank5"])
    assert "eval/Other_Set/mAP" in logged.metrics and "eval_rerank/mAP" in logged.metrics
    assert logged.tags["eval/dataset_hash"] == own.content_hash
    assert logged.tags["eval/Other_Set/dataset_hash"] == other.content_hash
    assert logged.tags["eval/Other_Set/dataset_format"] == "folder"
    assert logged.tags["eval_rerank/rerank"] == "true" and logged.tags["eval/rerank"] == "false"
    artifacts = {f.path for f in client.list_artifacts(training, "evaluation")}
    assert "evaluation/metrics.json" in artifacts and "evaluation/Other_Set" in artifacts
    assert len(client.search_runs([exp])) == 1  # all of it in the training run
    # The cross-domain target is an evaluation input of the run (the UI's Dataset column); own data is not.
    inputs = client.get_run(training).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in inputs] == [("Other_Set", other.content_hash[:12], "eval")]


def test_target_option_reads_the_targets_manifest_and_protocol(split, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    target = types.SimpleNamespace(root="/data/domain-b", format="market1501", content_hash="c" * 64)
    read = _stand_ins(monkeypatch, split, {"pipeline/data/targets/tb.json": target})
    params = _eval_params(tmp_path, targets=[{"name": "tb", "format": "market1501", "root": "data/b",
                                              "eval": {"cross_camera": False}}])
    import yaml

    tree = yaml.safe_load(params.read_text())
    tree["tracking"]["enabled"] = False
    params.write_text(yaml.safe_dump(tree))
    ckpt = tmp_path / "pipeline" / "models" / "baseline" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"data_hash": "c" * 64}, ckpt)  # even on the training data, --target names the result
    result = CliRunner().invoke(_cli(), [str(ckpt), "--params", str(params), "--target", "tb"])
    assert result.exit_code == 0, result.output
    assert read == ["pipeline/data/targets/tb.json"]
    metrics = json.loads((tmp_path / "pipeline/eval/baseline/targets/tb/metrics.json").read_text())
    assert metrics["target"] == "tb" and metrics["dataset"] == "domain-b"
    # cross_camera=false (the target's protocol): same-camera matches count, so no query is skipped
    assert metrics["num_skipped_queries"] == 0
    unknown = CliRunner().invoke(_cli(), [str(ckpt), "--params", str(params), "--target", "nope"])
    assert unknown.exit_code == 2 and "'nope'" in unknown.output and "tb" in unknown.output


def test_default_output_honours_evaluate_output_dir_and_is_unique_per_checkpoint(
        split, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 item 4: evaluate.output_dir is honoured, and two checkpoints in folders with the same
    name get different default folders."""
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    own = types.SimpleNamespace(root="/data/market", format="market1501", content_hash="a" * 64)
    _stand_ins(monkeypatch, split, {"pipeline/data/manifest.json": own})
    params = _eval_params(tmp_path, output_dir="results/evals")
    import yaml

    tree = yaml.safe_load(params.read_text())
    tree["tracking"]["enabled"] = False
    params.write_text(yaml.safe_dump(tree))
    written = []
    for run in ("run_a", "run_b"):
        ckpt = tmp_path / run / "baseline" / "best.pt"
        ckpt.parent.mkdir(parents=True)
        torch.save({"data_hash": own.content_hash}, ckpt)
        result = CliRunner().invoke(_cli(), [str(ckpt), "--params", str(params)])
        assert result.exit_code == 0, result.output
        found = sorted((tmp_path / "results" / "evals").glob("*/metrics.json"))
        written.append(found)
    assert len(written[0]) == 1 and len(written[1]) == 2
    assert all(p.parent.name.startswith("baseline-") for p in written[1])
    assert not (tmp_path / "pipeline" / "eval").exists()


def test_evaluate_help_names_the_reranking_keys() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli(), ["--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for key in ("eval.rerank_k1", "eval.rerank_k2", "eval.rerank_lambda", "eval.rerank_max_memory_gb", "-o", "--target",
                "evaluate.output_dir"):
        assert key in text, key


def test_evaluate_uses_the_checkpoints_protocol_unless_overridden(tmp_path: Path, tiny_config) -> None:
    layout = good_layout(gallery={f"p{i}": ["cam1_5.jpg", "cam1_6.jpg"] for i in range(3)})  # one camera
    result, _ = prepare_folder(tmp_path, layout)
    assert result.exit_code == 0, result.output
    trained = tweak(tiny_config, eval={"cross_camera": False})
    model = random_checkpoint(tmp_path / "model" / "last.pt", trained, 4)
    params = tmp_path / "eval.yaml"
    params.write_text(json.dumps({"data": {"manifest": str(tmp_path / "m" / "manifest.json"), "num_workers": 0},
                                  "train": {"device": "cpu"}, "tracking": {"enabled": False}}))
    args = ["evaluate", str(model), "--params", str(params), "--output", str(tmp_path / "out")]
    done = runner.invoke(app(), args)
    assert done.exit_code == 0, done.output
    assert "eval.cross_camera: using the checkpoint's false" in done.stderr
    refused = runner.invoke(app(), [*args, "-o", "eval.cross_camera=true"])  # the user's choice wins
    assert refused.exit_code == 2 and "cross_camera" in refused.stderr


# ---------------------------------------------------------------------------------------------------
def _needs(*modules: str) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            pytest.skip(f"{name} is not available yet ({exc}); this end-to-end test runs once it exists")


def test_evaluate_model_with_the_real_test_loader(split) -> None:
    _needs("reid.data.loaders", "reid.data.images")
    query, gallery = split
    config = validate({"data": {"height": 32, "width": 16, "num_workers": 0, "test_batch_size": 5},
                       "eval": {"flip": True, "num_ranked_lists": 2}})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    res = evaluate_model(model, types.SimpleNamespace(query=query, gallery=gallery), config, "cpu")
    assert res.num_queries == len(query) and res.ranked_lists is not None


@pytest.mark.slow
def test_evaluate_command_end_to_end(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _needs("reid.models.inference", "reid.models.reid_model", "reid.data.manifest", "reid.data.loaders",
           "reid.data.synthetic")
    tiny_config = request.getfixturevalue("tiny_config")  # only now: the fixtures need reid.data too
    synthetic_manifest = request.getfixturevalue("synthetic_manifest")
    import typer
    from typer.testing import CliRunner

    from reid.commands import evaluate
    from reid.data.manifest import write_manifest
    from reid.checkpoint import save_checkpoint
    from reid.models.reid_model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config, synthetic_manifest.num_classes)
    ckpt = save_checkpoint({
        "config": tiny_config.model_dump(mode="json"), "num_classes": synthetic_manifest.num_classes,
        "epoch": 1, "global_step": 1, "model": model.state_dict(), "mlflow_run_id": "not-a-run",
    }, tmp_path / "models" / "tiny" / "best.pt")
    manifest_path = tmp_path / "manifest.json"
    write_manifest(synthetic_manifest, manifest_path)
    params = tmp_path / "params.yaml"
    import yaml

    tree = tiny_config.model_dump(mode="json")
    tree["eval"]["num_ranked_lists"] = 2
    params.write_text(yaml.safe_dump(tree))

    app = typer.Typer()
    app.command()(evaluate.command)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [str(ckpt), "--params", str(params), "--manifest", str(manifest_path),
                                      "--output", str(out), "--flip", "-o", "eval.max_rank=20"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP", "num_valid_queries", "num_skipped_queries",
                "ap_variant", "rerank"):
        assert key in metrics, key
    assert metrics["flip"] is True and metrics["rerank"] is False
    assert metrics["num_valid_queries"] == len(synthetic_manifest.query) - metrics["num_skipped_queries"]
    assert (out / "cmc.csv").is_file() and (out / "cmc.png").is_file() and (out / "ranked_lists.png").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)
    exp = client.get_experiment_by_name(tiny_config.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'evaluate-tiny'")
    assert len(runs) == 1 and runs[0].data.metrics["eval/mAP"] == pytest.approx(metrics["mAP"])
    assert runs[0].data.tags["reid.trained_by_run"] == "not-a-run"

    # When the training run is in the store, the evaluation goes into it: one model, one MLflow row.
    training = client.create_run(exp.experiment_id, run_name="train-tiny", tags={"variant": "tiny"})
    client.set_terminated(training.info.run_id)
    again = CliRunner().invoke(app, [str(ckpt), "--params", str(params), "--manifest", str(manifest_path),
                                     "--output", str(out), "--mlflow-run-id", training.info.run_id])
    assert again.exit_code == 0, again.output
    logged = client.get_run(training.info.run_id)
    assert logged.data.metrics["eval/mAP"] == pytest.approx(json.loads((out / "metrics.json").read_text())["mAP"])
    assert logged.info.status == "FINISHED" and logged.data.tags["eval/flip"] == "false"
    assert "evaluation/metrics.json" in {f.path for f in client.list_artifacts(training.info.run_id, "evaluation")}
    assert len(client.search_runs([exp.experiment_id])) == 2  # no third run

    # A clean error for a missing checkpoint: exit code 2, one line, no traceback.
    bad = CliRunner().invoke(app, [str(tmp_path / "missing.pt"), "--params", str(params), "--output", str(out)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
