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
                                    "pipeline/models/sd_003/last.pt")
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


def add_seed_replicate(run: Path, mAP: float, rank1: float) -> None:
    """baseline_s1: the baseline with train.seed 1, listed right after the baseline."""
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["variants"] = {"baseline_s1": {"train": {"seed": 1, "output_dir": "pipeline/models/baseline_s1"}},
                          **params["variants"]}
    params["evaluate"]["models"] = ["baseline", "baseline_s1", "sd_003"]
    (run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write(run / "pipeline/eval/baseline_s1/metrics.json", {
        "mAP": mAP, "rank1": rank1, "rank5": 0.7, "rank10": 0.8, "mINP": 0.05, "num_queries": 3368,
        "num_valid_queries": 3368, "ap_variant": "standard", "mAP_standard": mAP, "mAP_trapezoidal": mAP - 0.01})
    write(run / "pipeline/models/baseline_s1/metrics.json", {"mAP": mAP, "best_mAP": mAP, "epochs": 2})


@pytest.mark.parametrize("s1_map, beyond", [(0.31, True), (0.34, False)])
def test_seed_spread_decides_which_gains_count(tmp_path, results_script, capsys, s1_map, beyond):
    # baseline 30.0 and baseline_s1 31.0 (spread 1.0, mean 30.5): sd_003 at 32.0 is +1.5, beyond the spread.
    # With baseline_s1 at 34.0 (spread 4.0, mean 32.0) the same 32.0 is +0.0: not beyond.
    run = make_run(tmp_path / "run")
    add_seed_replicate(run, s1_map, 0.51)
    out = tmp_path / "r.json"
    code = results_script.main([str(run), "--out", str(out), "--note", "baseline_s1=paused 120 s",
                                "--figures", str(tmp_path / "fig")])
    assert code == 0
    data = json.loads(out.read_text())
    spread = data["seed_spread"]
    ref = spread["references"]["baseline"]
    assert ref["runs"] == ["baseline", "baseline_s1"]
    assert ref["mAP_spread"] == pytest.approx(100 * s1_map - 30.0)
    assert ref["mAP_mean"] == pytest.approx((30.0 + 100 * s1_map) / 2)
    sd = spread["models"]["sd_003"]
    assert sd["reference"] == "baseline" and not sd["replicate"]
    assert sd["mAP_delta"] == pytest.approx(32.0 - (30.0 + 100 * s1_map) / 2)
    assert sd["mAP_beyond_spread"] is beyond
    assert spread["models"]["baseline_s1"]["replicate"] is True
    assert [m.get("note") for m in data["models"]] == [None, "paused 120 s", None]
    table = capsys.readouterr().out
    assert f"| {'yes' if beyond else 'no'} |" in table.splitlines()[4]  # the sd_003 row
    assert "Seed spread of baseline (baseline, baseline_s1)" in table and "baseline_s1: paused 120 s" in table
    for name in ("market1501_cpu_curve.png", "market1501_cpu_comparison.png"):
        assert (tmp_path / "fig" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_note_for_an_unknown_model_is_refused(tmp_path, results_script, capsys):
    run = make_run(tmp_path / "run")
    out = tmp_path / "r.json"
    assert results_script.main([str(run), "--out", str(out), "--note", "r18=x"]) == 2
    assert "--note names r18, not a finished model (baseline, sd_003)" in capsys.readouterr().err
    assert results_script.main([str(run), "--out", str(out), "--note", "no-equals-sign"]) == 2
    assert "expected MODEL=TEXT" in capsys.readouterr().err


# --- merging partial runs into one record ---------------------------------------------------------

AMD = {"host": "a", "cpu": "AMD EPYC", "cpu_count": 2, "torch_threads": 2, "torch": "2.14.1"}
INTEL = {"host": "b", "cpu": "Intel Xeon", "cpu_count": 2, "torch_threads": 2, "torch": "2.14.1"}


def only(run: Path, *models: str) -> Path:
    """Make ``run`` a run in progress where only ``models`` have finished (the others' metrics deleted)."""
    for name in ("baseline", "baseline_s1", "sd_003"):
        if name not in models:
            for stage in ("models", "eval"):
                (run / f"pipeline/{stage}/{name}/metrics.json").unlink(missing_ok=True)
    return run


def set_score(run: Path, name: str, mAP: float) -> None:
    path = run / f"pipeline/eval/{name}/metrics.json"
    data = json.loads(path.read_text())
    data.update({"mAP": mAP, "mAP_standard": mAP})
    path.write_text(json.dumps(data))


def test_merge_adds_new_models_keeps_recorded_rows_and_records_where_each_came_from(
        tmp_path, results_script, monkeypatch, capsys):
    record = tmp_path / "record.json"
    # Machine A finished the baseline only.
    monkeypatch.setattr(results_script, "describe_machine", lambda: AMD)
    run_a = only(make_run(tmp_path / "a"), "baseline")
    (run_a / "source_commit.txt").write_text("aaaaaaa1111\n")
    assert results_script.main([str(run_a), "--partial", "--date", "2026-12-06", "--merge-into", str(record)]) == 0
    first = json.loads(record.read_text())
    assert [m["model"] for m in first["models"]] == ["baseline"] and first["not_run"] == ["sd_003"]
    assert "Not run yet: sd_003." in capsys.readouterr().out
    # A fresh machine B, without A's cache, retrains the baseline (another draw) and trains sd_003.
    monkeypatch.setattr(results_script, "describe_machine", lambda: INTEL)
    run_b = make_run(tmp_path / "b")
    set_score(run_b, "baseline", 0.305)
    (run_b / "source_commit.txt").write_text("bbbbbbb2222\n")
    assert results_script.main([str(run_b), "--date", "2026-12-07", "--merge-into", str(record)]) == 0
    merged = json.loads(record.read_text())
    base, sd = merged["models"]
    assert (base["model"], base["mAP"], base["machine"]["cpu"], base["date"]) == ("baseline", 0.30, "AMD EPYC", "2026-12-06")
    assert (sd["model"], sd["machine"]["cpu"], sd["date"]) == ("sd_003", "Intel Xeon", "2026-12-07")
    assert (base["source_commit"], sd["source_commit"]) == ("aaaaaaa1111", "bbbbbbb2222")
    assert base["run_folder"] == str(run_a.resolve()) and sd["run_folder"] == str(run_b.resolve())
    assert base["wall_time_s"] == sd["wall_time_s"] == 1440.0
    assert "--date 2026-12-06" in base["collected_by"] and "--date 2026-12-07" in sd["collected_by"]
    assert merged["not_run"] == [] and len(merged["merges"]) == 2
    assert merged["merges"][1]["added"] == ["sd_003"] and merged["merges"][1]["kept"] == ["baseline"]
    assert "not bit-identical" in merged["machine_note"] and "AMD EPYC" in merged["machine_note"]
    out, err = capsys.readouterr()
    assert "kept: baseline" in err and "--replace MODEL" in err
    assert "| 2-core AMD EPYC | 2026-12-06 | aaaaaaa |" in out and "| 2-core Intel Xeon | 2026-12-07 | bbbbbbb |" in out
    assert "Rows from 2 machines" in out
    # Asked for explicitly, the rerun replaces the recorded row.
    assert results_script.main([str(run_b), "--merge-into", str(record), "--replace", "baseline"]) == 0
    replaced = json.loads(record.read_text())
    assert replaced["models"][0]["mAP"] == 0.305 and replaced["models"][0]["machine"]["cpu"] == "Intel Xeon"
    assert replaced["merges"][-1]["replaced"] == ["baseline"]
    assert replaced["machine_note"] is None  # every row is from machine B now


def test_merge_refuses_another_recipe_and_names_the_keys(tmp_path, results_script, capsys):
    record = tmp_path / "record.json"
    assert results_script.main([str(make_run(tmp_path / "a")), "--merge-into", str(record)]) == 0
    before = record.read_bytes()
    other = make_run(tmp_path / "b")
    params = yaml.safe_load((other / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    params["optim"] = {"lr": 0.01}
    (other / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    capsys.readouterr()
    assert results_script.main([str(other), "--merge-into", str(record), "--replace", "baseline"]) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "train.epochs: record 2, run 3" in err and "optim.lr: record" in err
    assert "is unchanged" in err and record.read_bytes() == before


def test_what_may_differ_between_runs_does_not_split_the_recipe(tmp_path, results_script):
    base = make_run(tmp_path / "a")
    other = make_run(tmp_path / "b", tracking=True)
    params = yaml.safe_load((other / "params.yaml").read_text())
    params["data"]["root"] = "/elsewhere/Market-1501"
    params["train"]["seed"] = 5
    (other / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    a = results_script.collect(base, use_mlflow=False)
    b = results_script.collect(other, use_mlflow=False)
    assert results_script.recipe_differences(a["base_config"], b["base_config"]) == {}
    # A setting the older record lacks counts as the code's default: equal at the default, a difference otherwise.
    old = json.loads(json.dumps(a["base_config"]))
    del old["train"]["nproc"]
    assert results_script.recipe_differences(old, b["base_config"]) == {}
    b["base_config"]["train"]["nproc"] = 2
    assert results_script.recipe_differences(old, b["base_config"]) == {"train.nproc": {"record": "auto", "run": 2}}


def test_a_recorded_results_file_starts_a_record_and_replace_must_name_a_finished_model(tmp_path, results_script, capsys):
    run = make_run(tmp_path / "run")
    add_seed_replicate(run, 0.31, 0.51)
    single = tmp_path / "single.json"
    assert results_script.main([str(run), "--date", "2026-12-06", "--out", str(single)]) == 0
    record = tmp_path / "record.json"
    assert results_script.main(["--from-record", str(single), "--merge-into", str(record)]) == 0
    data = json.loads(record.read_text())
    assert [m["model"] for m in data["models"]] == ["baseline", "baseline_s1", "sd_003"]
    assert {m["date"] for m in data["models"]} == {"2026-12-06"}
    assert all(m["run_folder"] == str(run.resolve()) for m in data["models"])
    groups = data["seed_groups"]["mAP"]
    assert [g["runs"] for g in groups["groups"]] == [["baseline", "baseline_s1"], ["sd_003"]]
    assert groups["groups"][0]["spread"] == pytest.approx(1.0)
    (comp,) = groups["comparisons"]
    assert (comp["group"], comp["reference"], comp["verdict"]) == ("sd_003", "baseline", "undecided")
    assert comp["pairs"] == [{"seed": 0, "value": 32.0, "reference_value": 30.0, "delta": pytest.approx(2.0)}]
    assert "`sd_003` has 1 seed" in comp["sentence"]
    assert "## Seed groups and paired comparison (mAP)" in capsys.readouterr().out
    # A merged record is not one run's results; --replace must name a model of the run.
    assert results_script.main(["--from-record", str(record), "--merge-into", str(tmp_path / "r2.json")]) == 2
    assert "is a merged record" in capsys.readouterr().err
    assert results_script.main(["--from-record", str(single), "--merge-into", str(record), "--replace", "kd"]) == 2
    assert "--replace names kd, not a finished model" in capsys.readouterr().err


def merged_record(tmp_path, results_script, monkeypatch):
    """A record merged from a run of baseline (seeds 0 and 1) and sd_003, on the AMD machine."""
    monkeypatch.setattr(results_script, "describe_machine", lambda: AMD)
    run = make_run(tmp_path / "run")
    add_seed_replicate(run, 0.31, 0.51)
    record = tmp_path / "record.json"
    assert results_script.main([str(run), "--date", "2026-12-07", "--merge-into", str(record)]) == 0
    return record


def docs_with_blocks(tmp_path, results_script, declared):
    """A README and a RESULTS.md, each with an old generated block between text, and a params file
    that declares ``declared``."""
    start = results_script.BLOCK_START.format(record="r.json")
    readme, results_md = tmp_path / "README.md", tmp_path / "RESULTS.md"
    for path in (readme, results_md):
        path.write_text(f"# Title\n\n{start}\nold rows\n{results_script.BLOCK_END}\n\nafter\n")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"models": declared}}))
    return readme, results_md, params


def test_readme_blocks_are_regenerated_from_a_record(tmp_path, results_script, monkeypatch):
    record = merged_record(tmp_path, results_script, monkeypatch)
    readme, results_md, params = docs_with_blocks(tmp_path, results_script, ["baseline", "baseline_s1", "sd_003", "kd_r18"])
    results_script.write_docs(record, readme, results_md, params)
    text = readme.read_text()
    assert "old rows" not in text and text.endswith(f"{results_script.BLOCK_END}\n\nafter\n")
    assert ("| Market-1501 mAP, CPU track (resnet34 from scratch, 64 x 32, 2 epochs; not the ImageNet recipe): "
            "`baseline`: no distillation, seeds 0 / 1 | 30.0 / 31.0 (mean 30.5, range 1.0) | 2-core AMD EPYC, "
            "2026-12-07 |") in text
    assert "| `sd_003`: self-distillation, feature coefficient 0.03 (sample_mean), seed 0 | 32.0; 1.5 over `baseline` |" in text
    assert "* `sd_003` vs `baseline` (mAP gain +1.5 so far): undecided, `sd_003` has 1 seed" in text
    assert "* Not yet run under this recipe: `kd_r18`" in text
    docs = results_md.read_text()
    assert "#### Seed groups and paired comparison (mAP)" in docs and "Not run yet: kd_r18." in docs
    # A document without its block is an error, and nothing is written.
    readme.write_text("# no block\n")
    with pytest.raises(results_script.ResultsError, match="0 generated blocks"):
        results_script.write_docs(record, readme, results_md, params)
    assert readme.read_text() == "# no block\n"


def test_the_documents_follow_the_rows_and_word_a_loss_below_the_reference(tmp_path, results_script, monkeypatch):
    record = merged_record(tmp_path, results_script, monkeypatch)
    data = json.loads(record.read_text())
    (row,) = [m for m in data["models"] if m["model"] == "sd_003"]
    row["mAP"] = row["mAP_standard"] = 0.28
    record.write_text(json.dumps(data))
    readme, results_md, params = docs_with_blocks(tmp_path, results_script, ["baseline", "baseline_s1", "sd_003"])
    results_script.write_docs(record, readme, results_md, params)
    text = readme.read_text()
    assert "| `sd_003`: self-distillation, feature coefficient 0.03 (sample_mean), seed 0 | 28.0; 2.5 below `baseline` |" in text
    assert "-2.5 over" not in text


def test_self_distillation_is_judged_against_its_control_in_the_record_and_the_readme(
        tmp_path, results_script, monkeypatch):
    # ds_ctrl: the same self-distillation with the feature loss off; sd_003 is judged against it too.
    monkeypatch.setattr(results_script, "describe_machine", lambda: AMD)
    run = make_run(tmp_path / "run")
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["variants"] = {"ds_ctrl": {"kd": {"self_distill": True, "feature_loss_coefficient": 0.0},
                                      "train": {"output_dir": "pipeline/models/ds_ctrl"}}, **params["variants"]}
    params["evaluate"]["models"] = ["baseline", "ds_ctrl", "sd_003"]
    (run / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write(run / "pipeline/eval/ds_ctrl/metrics.json", {
        "mAP": 0.325, "rank1": 0.53, "rank5": 0.7, "rank10": 0.8, "mINP": 0.05, "num_queries": 3368,
        "num_valid_queries": 3368, "ap_variant": "standard", "mAP_standard": 0.325, "mAP_trapezoidal": 0.31})
    write(run / "pipeline/models/ds_ctrl/metrics.json", {"mAP": 0.325, "best_mAP": 0.325, "epochs": 2})
    record = tmp_path / "record.json"
    assert results_script.main([str(run), "--merge-into", str(record)]) == 0
    data = json.loads(record.read_text())
    (control,) = data["seed_groups"]["mAP"]["controls"]
    assert (control["group"], control["reference"], control["verdict"]) == ("sd_003", "ds_ctrl", "undecided")
    assert control["pairs"] == [{"seed": 0, "value": 32.0, "reference_value": 32.5, "delta": pytest.approx(-0.5)}]
    readme, results_md, docs_params = docs_with_blocks(tmp_path, results_script, params["evaluate"]["models"])
    results_script.write_docs(record, readme, results_md, docs_params)
    text = readme.read_text()
    assert "`sd_003` vs `ds_ctrl` (mAP difference -0.5 so far): undecided" in text
    assert "so only the stage heads' ID losses" in text
    assert "`sd_003` vs `ds_ctrl` (mAP difference -0.5 so far): undecided" in results_md.read_text()
