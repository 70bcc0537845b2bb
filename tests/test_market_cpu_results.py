"""scripts/market_cpu_results.py on a hand-built run folder (params, manifest, train and evaluate metrics)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "market_cpu_results.py"


@pytest.fixture(scope="module")
def results_script():
    spec = importlib.util.spec_from_file_location("market_cpu_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_run(root: Path, tracking: bool = False, timing: bool = True) -> Path:
    """A finished two-model run: baseline (seed 0) and sd_003 (self-distillation), 2 epochs each."""
    params = {
        "data": {"root": "/nonexistent/market", "height": 64, "width": 32},
        "model": {"backbone": "resnet34", "pretrained": "none"},
        "train": {"epochs": 2, "seed": 0, "output_dir": "pipeline/models/baseline"},
        "tracking": {"enabled": tracking, "uri": "sqlite:///mlflow.db", "experiment": "cpu"},
        "variants": {"sd_003": {"kd": {"self_distill": True, "feature_loss_coefficient": 0.03},
                                "train": {"output_dir": "pipeline/models/sd_003"}}},
        "evaluate": {"output_dir": "pipeline/eval", "models": ["baseline", "sd_003"]},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sample = {"path": "/x/0001_c1s1_000001_01.jpg", "pid": 1, "camid": 1}
    write(root / "pipeline/data/manifest.json", {
        "name": "Market-1501-v15.09.15", "train": [sample] * 3, "query": [sample] * 2, "gallery": [sample] * 5,
        "num_classes": 1, "statistics": {"query": {"images": 3368}, "gallery": {"images": 15913}}})
    scores = {"baseline": (0.30, 0.50, 0.29), "sd_003": (0.32, 0.52, 0.31)}
    for name, (mAP, rank1, trap) in scores.items():
        write(root / f"pipeline/eval/{name}/metrics.json", {
            "mAP": mAP, "rank1": rank1, "rank5": 0.7, "rank10": 0.8, "mINP": 0.05, "num_queries": 3368,
            "num_valid_queries": 3368, "ap_variant": "standard", "mAP_standard": mAP, "mAP_trapezoidal": trap})
        trained = {"mAP": mAP, "best_mAP": mAP, "epochs": 2}
        if timing:
            trained.update({"train_time_s": 1200.0, "train_images": 24000, "train_img_per_s": 20.0,
                            "eval_time_s": 240.0, "evaluations": 2})
        write(root / f"pipeline/models/{name}/metrics.json", trained)
    return root


def test_results_json_and_table_from_a_run_folder(tmp_path, results_script, capsys):
    run = make_run(tmp_path / "run")
    out = tmp_path / "results" / "market1501_cpu_2026-12-03.json"
    assert results_script.main([str(run), "--date", "2026-12-03", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["date"] == "2026-12-03" and data["command"] == "bash scripts/market_cpu.sh"
    assert data["dataset"]["num_query"] == 3368 and data["dataset"]["num_gallery"] == 15913
    assert {"cpu", "cpu_count", "torch"} <= set(data["machine"])
    base, sd = data["models"]
    assert [base["model"], sd["model"]] == ["baseline", "sd_003"]
    assert base["config_difference"] == {}
    assert sd["config_difference"]["kd.self_distill"] == {"base": False, "value": True}
    assert sd["config_difference"]["train.output_dir"] == {"base": "pipeline/models/baseline",
                                                           "value": "pipeline/models/sd_003"}
    assert (sd["seed"], sd["epochs"], sd["kd_mode"], sd["backbone"]) == (0, 2, "self", "resnet34")
    assert (sd["mAP"], sd["mAP_standard"], sd["mAP_trapezoidal"], sd["rank10"]) == (0.32, 0.32, 0.31, 0.8)
    assert (sd["num_queries"], sd["num_gallery"]) == (3368, 15913)
    timing = (sd["train_time_s"], sd["train_img_per_s"], sd["eval_time_s"], sd["wall_time_s"])
    assert timing == (1200.0, 20.0, 240.0, 1440.0)
    assert sd["timing_source"] == "metrics.json"
    assert sd["command"].startswith("reid train --params params.yaml --variant sd_003 && reid evaluate "
                                    "pipeline/models/sd_003/best.pt")
    table = capsys.readouterr().out
    assert "| sd_003 | resnet34 | self | 0 | 2 | 32.0 | 31.0 | 52.0 | 70.0 | 80.0 | 5.0 | 24.0 | 20.0 |" in table
    assert "3368 queries x 15913 gallery images" in table


def test_timing_falls_back_to_the_mlflow_run_of_an_older_trainer(tmp_path, results_script):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    run = make_run(tmp_path / "run", tracking=True, timing=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    exp = client.create_experiment("cpu", artifact_location=str(run / "mlruns"))
    for name in ("baseline", "sd_003"):
        run_id = client.create_run(exp, tags={"variant": name}).info.run_id
        # Epoch 1: 600 s at 20 img/s, epoch 2: 400 s at 30 img/s -> 24,000 images in 1,000 s; two evaluations.
        metrics = [("train/epoch_time_s", 600.0, 1), ("train/img_per_s", 20.0, 1), ("train/epoch_time_s", 400.0, 2),
                   ("train/img_per_s", 30.0, 2), ("eval_time_s", 100.0, 1), ("eval_time_s", 120.0, 2),
                   ("mAP", 0.2, 1), ("mAP", 0.3, 2)]
        client.log_batch(run_id, metrics=[Metric(k, v, 0, s) for k, v, s in metrics])
    data = results_script.collect(run)
    base = data["models"][0]
    assert base["timing_source"] == "mlflow"
    assert (base["train_time_s"], base["train_images"], base["train_img_per_s"]) == (1000.0, 24000, 24.0)
    assert (base["eval_time_s"], base["evaluations"], base["wall_time_s"]) == (220.0, 2, 1220.0)
    assert base["curve"] == [{"epoch": 1, "mAP": 0.2}, {"epoch": 2, "mAP": 0.3}]


def test_a_model_without_metrics_is_named(tmp_path, results_script, capsys):
    run = make_run(tmp_path / "run")
    (run / "pipeline/eval/sd_003/metrics.json").unlink()
    assert results_script.main([str(run), "--out", str(tmp_path / "r.json")]) == 2
    assert "pipeline/eval/sd_003/metrics.json does not exist (evaluate stage of 'sd_003')" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_run_in_progress_is_collected_with_partial(tmp_path, results_script, capsys):
    """--partial: an untrained model is listed as not run; a trained one not yet through the evaluate
    stage takes the trainer's final evaluation and says so."""
    run = make_run(tmp_path / "run")
    (run / "pipeline/eval/baseline/metrics.json").unlink()
    (run / "pipeline/models/sd_003/metrics.json").unlink()
    (run / "pipeline/eval/sd_003/metrics.json").unlink()
    write(run / "pipeline/models/baseline/metrics.json",
          {"mAP": 0.25, "rank1": 0.4, "best_mAP": 0.25, "epoch": 2, "best_epoch": 2, "epochs": 2})
    out = tmp_path / "r.json"
    assert results_script.main([str(run), "--partial", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [m["model"] for m in data["models"]] == ["baseline"] and data["not_run"] == ["sd_003"]
    base = data["models"][0]
    assert (base["mAP"], base["rank1"]) == (0.25, 0.4)
    assert base["accuracy_source"].startswith("train stage")
    assert "Not run yet: sd_003." in capsys.readouterr().out
