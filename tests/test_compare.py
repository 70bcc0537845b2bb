"""`reid compare`: the model list from params.yaml, metrics, deployed size and compute, table/CSV/chart."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from reid.compare import COLUMNS, CompareError, compare, deployed_cost, read_plan
from reid.config import ConfigError, validate

# torchvision's ResNet-18 without its fc layer, and its MACs at 256 x 128 with last stride 1
# (published: "ResNet18 2.0 GMACs"): independent figures the counts must reproduce.
RESNET18_BACKBONE_PARAMS = 11_176_512
RESNET18_GMACS_256x128_LS1 = 1.99


def params_tree() -> dict:
    return {
        "data": {"height": 64, "width": 32},
        "model": {"backbone": "resnet34", "pretrained": "none"},
        "train": {"output_dir": "pipeline/models/baseline"},
        "tracking": {"enabled": False},
        "variants": {
            "sd_003": {"kd": {"self_distill": True, "feature_loss_coefficient": 0.03},
                       "train": {"output_dir": "pipeline/models/sd_003"}},
            "kd_r18": {"model": {"backbone": "resnet18"},
                       "kd": {"teacher_checkpoint": "pipeline/models/baseline/last.pt", "temperature": 16.0},
                       "train": {"output_dir": "pipeline/models/kd_r18"}},
        },
        "evaluate": {"output_dir": "pipeline/eval", "models": ["baseline", "sd_003", "kd_r18"]},
        "compare": {"output_dir": "pipeline/compare"},
    }


def write_params(root: Path, tree: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def save_fake_checkpoint(path: Path, config_tree: dict, num_classes: int = 10, run_id: str | None = None) -> None:
    """A checkpoint laid out like the trainer's, with freshly initialised weights."""
    from reid.checkpoint import save_checkpoint
    from reid.models.reid_model import build_model

    config = validate(config_tree)
    model = build_model(config, num_classes)
    save_checkpoint({"config": config.model_dump(mode="json"), "num_classes": num_classes, "epoch": 1,
                     "model": model.state_dict(), "mlflow_run_id": run_id}, path)


def write_metrics(path: Path, mAP: float, rank1: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mAP": mAP, "rank1": rank1, "rank5": min(1.0, rank1 + 0.1), "rank10": 0.95,
                                "rank20": 0.97, "mINP": mAP / 2, "num_queries": 20, "ap_variant": "standard"}))


@pytest.fixture()
def pipeline_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder after the evaluate stages: params, checkpoints and metrics of three models."""
    from reid.config import resolve_tree

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    tree = params_tree()
    write_params(tmp_path, tree)
    scores = {"baseline": (0.40, 0.60), "sd_003": (0.45, 0.65), "kd_r18": (0.35, 0.55)}
    for name, (mAP, rank1) in scores.items():
        resolved = resolve_tree(tree, None if name == "baseline" else name)
        save_fake_checkpoint(tmp_path / "pipeline/models" / name / "last.pt", resolved, run_id=None)
        write_metrics(tmp_path / "pipeline/eval" / name / "metrics.json", mAP, rank1)
    return tmp_path


def test_compare_writes_table_csv_and_chart(pipeline_dir: Path) -> None:
    result = compare(pipeline_dir / "params.yaml", use_mlflow=False)
    out = pipeline_dir / "pipeline/compare"
    # Paths are relative to the working directory, as in every command (DVC runs stages at the root).
    assert [f.resolve() for f in result.files] == [out / "comparison.md", out / "comparison.csv", out / "comparison.png"]
    assert all(f.is_file() for f in result.files)

    lines = [line for line in result.markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    rows = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|").split("|")] for line in lines[1:]}
    assert list(rows) == ["baseline", "sd_003", "kd_r18"]  # params order, not alphabetical
    col = {c: i for i, c in enumerate(COLUMNS)}
    base, sd, kd = rows["baseline"], rows["sd_003"], rows["kd_r18"]
    assert (base[col["backbone"]], base[col["kd mode"]], base[col["teacher"]]) == ("resnet34", "none", "-")
    assert base[col["mAP"]] == "40.0" and base[col["rank1"]] == "60.0" and base[col["mINP"]] == "20.0"
    assert (sd[col["kd mode"]], sd[col["feature_loss_coefficient"]], sd[col["temperature"]]) == ("self", "0.03", "-")
    assert sd[col["teacher"]] == "self layer3 -> layer1+layer2"
    assert (kd[col["backbone"]], kd[col["kd mode"]], kd[col["temperature"]], kd[col["teacher"]]) == (
        "resnet18", "offline", "16", "baseline")
    assert kd[col["feature_loss_coefficient"]] == "-"
    # Self-distillation heads are training-only: same deployed size and compute as the baseline.
    assert sd[col["params (M)"]] == base[col["params (M)"]] and sd[col["GMACs"]] == base[col["GMACs"]]
    assert float(kd[col["params (M)"]]) < float(base[col["params (M)"]])
    assert float(kd[col["GMACs"]]) < float(base[col["GMACs"]])

    md = (out / "comparison.md").read_text()
    assert result.markdown in md
    with (out / "comparison.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        by_model = {r["model"]: r for r in reader}
    assert float(by_model["sd_003"]["mAP"]) == pytest.approx(45.0)
    assert by_model["baseline"]["temperature"] == ""
    assert float(by_model["kd_r18"]["GMACs"]) == pytest.approx(RESNET18_GMACS_256x128_LS1 / 16, rel=0.02)
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_deployed_cost_matches_published_resnet18_figures(tmp_path: Path) -> None:
    """At 256 x 128 with last stride 1 a ResNet-18 is about 2.0 GMACs; the classifier is not deployed."""
    tree = {"model": {"backbone": "resnet18", "pretrained": "none", "last_stride": 1}}
    path = tmp_path / "best.pt"
    save_fake_checkpoint(path, tree, num_classes=751, run_id="abc")
    cost = deployed_cost(path)
    assert cost.macs / 1e9 == pytest.approx(RESNET18_GMACS_256x128_LS1, rel=0.01)
    # Backbone + BN-neck (at most weight and bias of 512 channels); not the 751 x 512 classifier.
    assert RESNET18_BACKBONE_PARAMS <= cost.params <= RESNET18_BACKBONE_PARAMS + 2 * 512
    assert cost.mlflow_run_id == "abc"


def test_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path: Path) -> None:
    from reid.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "best.pt"
    save_fake_checkpoint(path, {"model": {"backbone": "resnet18", "pretrained": "none"}})
    state = load_checkpoint(path)
    state["config"]["model"]["backbone"] = "resnet34"  # weights of a resnet18, config of a resnet34
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, path)
    with pytest.raises(CompareError, match="do not fit"):
        deployed_cost(path)


def test_missing_metrics_name_the_model_and_the_fix(pipeline_dir: Path) -> None:
    (pipeline_dir / "pipeline/eval/sd_003/metrics.json").unlink()
    with pytest.raises(CompareError, match=r"no metrics for model 'sd_003'.*dvc repro"):
        compare(pipeline_dir / "params.yaml", use_mlflow=False)


def test_evaluate_models_must_list_every_variant(tmp_path: Path) -> None:
    tree = params_tree()
    tree["evaluate"]["models"] = ["baseline", "sd_003"]
    with pytest.raises(ConfigError, match=r"missing: \['kd_r18'\]"):
        read_plan(write_params(tmp_path, tree))


def test_variant_output_dir_must_match_the_pipeline(tmp_path: Path) -> None:
    tree = params_tree()
    tree["variants"]["sd_003"]["train"]["output_dir"] = "pipeline/models/other"
    with pytest.raises(ConfigError, match=r"variants\.sd_003\.train\.output_dir.*pipeline/models/sd_003"):
        read_plan(write_params(tmp_path, tree))


def test_variant_named_baseline_is_rejected(tmp_path: Path) -> None:
    tree = params_tree()
    tree["variants"]["baseline"] = {}
    with pytest.raises(ConfigError, match="may not be called 'baseline'"):
        read_plan(write_params(tmp_path, tree))


def test_compare_command_prints_table_and_ui_hint(pipeline_dir: Path) -> None:
    from reid.cli import app

    result = CliRunner().invoke(app, ["compare", "--params", "params.yaml", "--output", "out"])
    assert result.exit_code == 0, result.output
    assert "| sd_003 | resnet34 | self | 0.03 |" in result.output
    assert "reid ui" in result.output and "--host 127.0.0.1 --workers 1" in result.output
    assert (pipeline_dir / "out" / "comparison.csv").is_file()


def test_compare_finds_mlflow_runs_by_checkpoint_then_by_variant_tag(pipeline_dir: Path) -> None:
    """The run id stored in the checkpoint wins; without one, the newest run tagged variant=<name>."""
    from mlflow.tracking import MlflowClient

    tree = params_tree()
    tree["tracking"] = {"enabled": True, "uri": "sqlite:///mlflow.db", "experiment": "cmp"}
    write_params(pipeline_dir, tree)
    client = MlflowClient(tracking_uri=f"sqlite:///{pipeline_dir / 'mlflow.db'}")
    exp_id = client.create_experiment("cmp", artifact_location=str(pipeline_dir / "mlruns"))
    tagged = {name: client.create_run(exp_id, tags={"variant": name}).info.run_id for name in ("baseline", "sd_003")}
    from reid.config import resolve_tree

    stored = client.create_run(exp_id, tags={"variant": "kd_r18"}).info.run_id
    save_fake_checkpoint(pipeline_dir / "pipeline/models/kd_r18/last.pt", resolve_tree(tree, "kd_r18"), run_id=stored)
    client.create_run(exp_id, tags={"variant": "kd_r18"})  # newer, but the checkpoint names the other one

    result = compare(pipeline_dir / "params.yaml")
    ids = {row.model.name: row.run_id for row in result.rows}
    assert ids == {"baseline": tagged["baseline"], "sd_003": tagged["sd_003"], "kd_r18": stored}
    assert result.warnings == []
    with (pipeline_dir / "pipeline/compare/comparison.csv").open() as fh:
        assert {r["model"]: r["mlflow run"] for r in csv.DictReader(fh)}["kd_r18"] == stored


def test_comparison_states_the_seed_spread_below_the_table(pipeline_dir: Path) -> None:
    # One baseline seed in this pipeline: deltas are given, but no difference can be called real.
    result = compare(pipeline_dir / "params.yaml", use_mlflow=False)
    md = (pipeline_dir / "pipeline/compare/comparison.md").read_text()
    assert result.spread and result.spread in md and md.index(result.markdown) < md.index(result.spread)
    assert "| sd_003 | baseline | 45.0 | +5.0 | 65.0 | +5.0 | spread unknown (one seed) |" in result.spread
    # kd_r18 has no ResNet-18 row without a teacher here: measured against the baseline, flagged.
    assert "| kd_r18 | baseline (other backbone) |" in result.spread


def test_cross_domain_targets_get_their_own_columns(pipeline_dir: Path) -> None:
    """Issue 16: one "<target> mAP" and "<target> rank1" column per evaluate.targets entry."""
    tree = params_tree()
    tree["evaluate"]["targets"] = [{"name": "synth_b", "format": "market1501", "root": "data/b"}]
    write_params(pipeline_dir, tree)
    with pytest.raises(CompareError, match=r"on target 'synth_b'.*--target synth_b"):
        compare(pipeline_dir / "params.yaml", use_mlflow=False)
    for name, (mAP, rank1) in {"baseline": (0.10, 0.20), "sd_003": (0.15, 0.25), "kd_r18": (0.05, 0.125)}.items():
        write_metrics(pipeline_dir / "pipeline/eval" / name / "targets" / "synth_b" / "metrics.json", mAP, rank1)
    result = compare(pipeline_dir / "params.yaml", use_mlflow=False)
    header = next(line for line in result.markdown.splitlines() if line.startswith("| model"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[columns.index("mINP") + 1:columns.index("mINP") + 3] == ["synth_b mAP", "synth_b rank1"]
    sd = next(line for line in result.markdown.splitlines() if line.startswith("| sd_003 "))
    cells = dict(zip(columns, (c.strip() for c in sd.strip("|").split("|"))))
    assert (cells["mAP"], cells["synth_b mAP"], cells["synth_b rank1"]) == ("45.0", "15.0", "25.0")
    with (pipeline_dir / "pipeline/compare/comparison.csv").open() as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert float(rows["kd_r18"]["synth_b rank1"]) == pytest.approx(12.5)
    assert "cross-domain" in (pipeline_dir / "pipeline/compare/comparison.md").read_text()
    # A target manifest elsewhere than where dvc.yaml reads it is refused.
    tree["evaluate"]["targets"][0]["manifest"] = "elsewhere/synth_b.json"
    write_params(pipeline_dir, tree)
    with pytest.raises(ConfigError, match="pipeline/data/targets/synth_b.json"):
        read_plan(pipeline_dir / "params.yaml")
