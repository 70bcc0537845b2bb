"""The DVC pipeline: its layout agrees with params.yaml, and it runs end to end with MLflow tracking.

The fast tests read dvc.yaml through DVC's own API (what each stage declares). The slow test copies the
project into a scratch git repository with tiny parameters, runs `dvc repro`, and then checks the one
property the pipeline exists for: changing one KD variant reruns that variant only (and the comparison).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reid.compare import BASELINE, read_plan
from reid.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
GIT_ID = {"GIT_AUTHOR_NAME": "reid-tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
          "GIT_COMMITTER_NAME": "reid-tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}
# Sections every training stage reads; `tracking` deliberately absent (it does not change a model).
TRAIN_SECTIONS = {"data", "model", "loss", "optim", "train", "kd", "eval"}


def tool_env() -> dict[str, str]:
    """Environment for `dvc` and the `reid` commands its stages run: this venv first, no analytics."""
    env = {**os.environ, **GIT_ID, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DVC_ROOT", None)
    return env


def run(args: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "dvc", *args], cwd, check, timeout)


def copy_project(dest: Path) -> Path:
    """The project's files (tracked and new, not ignored) without results, lock or parameters."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        if rel.startswith(("pipeline/", ".quickstart/")) or rel in ("dvc.lock", "params.yaml"):
            continue
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def git_init(repo: Path) -> None:
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.name", "reid-tests"], repo)
    run(["git", "config", "user.email", "tests@localhost"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline test"], repo)


def stage_declarations(repo: Path) -> dict[str, dict[str, set[str]]]:
    """{stage: {"params": keys, "deps": paths, "outs": paths}} as DVC resolves dvc.yaml."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out: dict[str, dict[str, set[str]]] = {}
    with Repo(str(repo)) as dvc_repo:
        for stage in dvc_repo.index.stages:
            params = {p for d in stage.deps if isinstance(d, ParamsDependency) for p in d.params}
            deps = {str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)}
            out[stage.name] = {"params": params, "deps": deps, "outs": {str(o.def_path) for o in stage.outs}}
    return out


# --- fast: the committed files agree with each other -------------------------------------------------


@pytest.mark.parametrize("params", ["params.yaml", "scripts/quickstart_params.yaml"])
def test_params_agree_with_pipeline_layout(params: str) -> None:
    plan = read_plan(REPO / params)  # raises when evaluate.models or an output_dir disagrees with dvc.yaml
    names = [m.name for m in plan.models]
    assert names[0] == BASELINE and len(names) >= 3
    kd = {m.name: m.config.kd for m in plan.models}
    assert any(k.self_distill for k in kd.values()), "no self-distillation variant"
    offline = [m for m in plan.models if m.config.kd.offline]
    assert offline, "no offline-KD variant"
    for m in offline:
        assert m.config.kd.teacher_checkpoint == Path(f"pipeline/models/baseline/{LAST_CHECKPOINT}")
        assert (m.config.kd.logit_weight, m.config.kd.temperature) == (1.0, 16.0)


def test_no_stage_reports_exports_or_distils_a_model_selected_on_the_test_split() -> None:
    """`grep best.pt dvc.yaml` finds nothing: every stage reads the model of the last epoch, and so does every
    offline teacher of the committed params files. best.pt (a validation-split choice) is never a stage input."""
    text = (REPO / "dvc.yaml").read_text()
    assert BEST_CHECKPOINT not in text and f"/{LAST_CHECKPOINT}" in text
    for params in ("params.yaml", "scripts/quickstart_params.yaml", "scripts/market_cpu_params.yaml"):
        variants = yaml.safe_load((REPO / params).read_text()).get("variants") or {}
        teachers = [(v.get("kd") or {}).get("teacher_checkpoint") for v in variants.values()]
        assert any(teachers) and all(Path(t).name == LAST_CHECKPOINT for t in teachers if t), (params, teachers)
    for script in ("scripts/quickstart.sh", "scripts/market_cpu.sh", "scripts/market_cpu_results.py"):
        assert BEST_CHECKPOINT not in (REPO / script).read_text(), script


def test_committed_experiment_is_the_recipe_on_market() -> None:
    plan = read_plan(REPO / "params.yaml")
    base = plan.models[0].config
    assert base.data.root == Path("../shared/data/Market-1501-v15.09.15")
    assert base.model.backbone == "resnet50_ibn_a"
    sd = {m.name: m.config.kd.feature_loss_coefficient for m in plan.models if m.config.kd.self_distill}
    assert sorted(sd.values()) == [0.01, 0.03, 0.1]
    for m in plan.models:
        if m.config.kd.self_distill:
            assert (m.config.kd.teacher_stage, m.config.kd.student_stages) == ("layer3", ["layer1", "layer2"])
    students = {m.config.model.backbone for m in plan.models if m.config.kd.offline}
    assert students and students <= {"resnet18", "resnet34"}


def test_stage_params_isolate_each_variant(tmp_path: Path) -> None:
    """Each stage lists what it reads, so one variant's change reaches only its own stages."""
    repo = copy_project(tmp_path / "repo")
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    git_init(repo)
    stages = stage_declarations(repo)
    variants = list(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])
    expected = {"prepare", "train_baseline", "compare"} | {f"train_kd@{v}" for v in variants} | {
        f"evaluate@{m}" for m in [BASELINE, *variants]} | {f"export@{m}" for m in [BASELINE, *variants]}
    assert set(stages) == expected
    # prepare reads the whole data section (so a params file may leave reader options at their
    # defaults) and the cross-domain targets, nothing about models.
    assert stages["prepare"]["params"] == {"data", "evaluate.targets"}
    assert not any(p.startswith("variants") for p in stages["train_baseline"]["params"])
    for v in variants:
        train = stages[f"train_kd@{v}"]
        assert train["params"] == TRAIN_SECTIONS | {f"variants.{v}"}
        assert f"pipeline/models/baseline/{LAST_CHECKPOINT}" in train["deps"]  # the offline teacher
        assert f"pipeline/models/{v}/{LAST_CHECKPOINT}" in train["outs"]
    for m in [BASELINE, *variants]:
        ev = stages[f"evaluate@{m}"]
        assert not any(p.startswith("variants") for p in ev["params"])
        assert f"pipeline/models/{m}/{LAST_CHECKPOINT}" in ev["deps"]
        assert f"pipeline/eval/{m}/metrics.json" in ev["outs"]
        export = stages[f"export@{m}"]
        assert export["params"] == {"data.manifest"} and f"pipeline/models/{m}/{LAST_CHECKPOINT}" in export["deps"]
        assert {f"pipeline/export/{m}/model.onnx", f"pipeline/export/{m}/model.parity.json"} <= export["outs"]
    assert "variants" in stages["compare"]["params"]
    for stage in stages.values():  # every code dependency exists in the project
        for dep in stage["deps"]:
            if dep.startswith("reid"):
                assert (REPO / dep).exists(), f"dvc.yaml depends on missing {dep}"


def test_quickstart_declares_a_cross_domain_stage_per_model(tmp_path: Path) -> None:
    """DVC accepts the evaluate_target matrix: one stage per (model, target), reading the target's manifest
    that the prepare stage writes, with its own metrics file."""
    repo = copy_project(tmp_path / "repo")
    shutil.copy(REPO / "scripts/quickstart_params.yaml", repo / "params.yaml")
    git_init(repo)
    stages = stage_declarations(repo)
    plan = read_plan(REPO / "scripts/quickstart_params.yaml")
    assert [t.name for t in plan.evaluate.targets] == ["synth_b"]
    assert "pipeline/data/targets" in stages["prepare"]["outs"]
    assert {"evaluate.targets", "data"} <= stages["prepare"]["params"]
    for m in plan.models:
        stage = stages[f"evaluate_target@{m.name}-target0"]
        assert {f"pipeline/models/{m.name}/{LAST_CHECKPOINT}", "pipeline/data/targets/synth_b.json"} <= stage["deps"]
        assert stage["outs"] == {f"pipeline/eval/{m.name}/targets/synth_b/metrics.json"}
        assert not any(p.startswith("variants") for p in stage["params"])
    assert len([s for s in stages if s.startswith("evaluate_target@")]) == len(plan.models)


def test_missing_market_is_a_clear_error_naming_the_quickstart(tmp_path: Path) -> None:
    """A real run never falls back to synthetic data; it says how to try the project without Market."""
    proc = run([str(VENV_BIN / "reid"), "prepare", "--params", str(REPO / "params.yaml"),
                "-o", f"data.root={tmp_path / 'Market-1501-v15.09.15'}",
                "-o", f"data.manifest={tmp_path / 'manifest.json'}"], tmp_path, check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "quickstart" in message, message
    assert "Traceback" not in message
    assert not (tmp_path / "manifest.json").exists()


# --- slow: the real pipeline ----------------------------------------------------------------------


def tiny_params(data_root: Path, target_root: Path | None = None) -> dict:
    """One baseline + a self-distillation and an offline-KD variant; seconds per stage on a CPU. With
    ``target_root``, a cross-domain target ``synth_b`` (a second synthetic domain)."""
    from reid.config import DataConfig

    targets = [{"name": "synth_b", "format": "market1501", "root": str(target_root)}] if target_root else []
    return {
        # Every data key is written (DVC requires each key a stage lists under params: to exist).
        "data": {**DataConfig().model_dump(mode="json"),
                 "format": "market1501", "root": str(data_root), "manifest": "pipeline/data/manifest.json",
                 "corrupt_images": "fail", "height": 64, "width": 32, "padding": 4, "ids_per_batch": 4,
                 "instances_per_id": 4, "test_batch_size": 64, "num_workers": 0, "input_pipeline": "cpu"},
        "model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False},
        "loss": {"triplet_margin": 0.3},
        "optim": {"warmup_epochs": 1, "milestones": [2]},
        "train": {"epochs": 2, "eval_every": 2, "device": "cpu", "amp": "off", "max_steps_per_epoch": 2,
                  "output_dir": "pipeline/models/baseline", "log_every_steps": 1},
        "kd": {"self_distill": False},
        "eval": {"num_ranked_lists": 1},
        "tracking": {"enabled": True, "uri": "sqlite:///mlflow.db", "artifact_root": "mlruns",
                     "experiment": "pipeline-test"},
        "variants": {
            "sd": {"kd": {"self_distill": True, "feature_loss_coefficient": 0.03},
                   "train": {"output_dir": "pipeline/models/sd"}},
            "kd_r18": {"kd": {"teacher_checkpoint": f"pipeline/models/baseline/{LAST_CHECKPOINT}", "logit_weight": 1.0,
                              "temperature": 16.0},
                       "train": {"output_dir": "pipeline/models/kd_r18"}},
        },
        "evaluate": {"output_dir": "pipeline/eval", "models": ["baseline", "sd", "kd_r18"], "targets": targets},
        "compare": {"output_dir": "pipeline/compare"},
    }


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def mlflow_runs(repo: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    assert Path(exp.artifact_location.removeprefix("file://")).is_absolute()
    return client.search_runs([exp.experiment_id], max_results=100)


@pytest.mark.slow
def test_pipeline_end_to_end_reruns_only_the_changed_variant(tmp_path: Path, synthetic_root: Path) -> None:
    """...and evaluates every model on a second synthetic domain (the cross-domain target synth_b)."""
    from reid.data.synthetic import generate_synthetic

    target_root = generate_synthetic(tmp_path / "Synthetic-Domain-B", num_train_ids=2, num_test_ids=8, num_cameras=3,
                                     images_per_id=6, height=64, width=32, seed=0, domain=1)
    repo = copy_project(tmp_path / "repo")
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(synthetic_root, target_root), sort_keys=False))
    git_init(repo)
    models = ["baseline", "sd", "kd_r18"]

    first = dvc("repro", cwd=repo, timeout=1800)  # every stage a fresh process importing torch and MLflow
    assert ran_stages(first.stdout) == {"prepare", "train_baseline", "train_kd@sd", "train_kd@kd_r18", "compare"} | {
        f"evaluate@{m}" for m in models} | {f"evaluate_target@{m}-target0" for m in models} | {
        f"export@{m}" for m in models}, first.stdout

    for m in models:
        metrics = json.loads((repo / "pipeline/eval" / m / "metrics.json").read_text())
        for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
            assert 0.0 <= metrics[key] <= 1.0, (m, key, metrics[key])
        assert (repo / "pipeline/models" / m / LAST_CHECKPOINT).is_file()
        assert not (repo / "pipeline/models" / m / BEST_CHECKPOINT).exists()  # no validation split: no selection
    table = (repo / "pipeline/compare/comparison.md").read_text()
    for m in models:
        assert re.search(rf"^\| {m} \|", table, re.MULTILINE), table
    assert "| sd | resnet18 | self | 0.03 |" in table
    assert re.search(r"\| mINP \| synth_b mAP \| synth_b rank1 \|", table), table
    cross: dict[str, dict] = {}
    for m in models:
        cross[m] = json.loads((repo / "pipeline/eval" / m / "targets/synth_b/metrics.json").read_text())
        assert cross[m]["target"] == "synth_b" and 0.0 <= cross[m]["mAP"] <= 1.0
        assert cross[m]["dataset_hash"] != cross[m]["trained_on_hash"] != ""
        row = next(line for line in table.splitlines() if line.startswith(f"| {m} |"))
        assert f"| {100 * cross[m]['mAP']:.1f} | {100 * cross[m]['rank1']:.1f} |" in row, row
    assert (repo / "pipeline/compare/comparison.png").stat().st_size > 1000
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    assert "pipeline/eval/sd/metrics.json" in json.dumps(shown)

    runs = mlflow_runs(repo, "pipeline-test")
    by_variant: dict[str, list] = {}
    for r in runs:
        by_variant.setdefault(r.data.tags.get("variant", "?"), []).append(r)
    assert sorted(by_variant) == sorted(models), {k: len(v) for k, v in by_variant.items()}
    for m, rs in by_variant.items():
        assert len(rs) == 1, f"{m}: {len(rs)} runs"
        assert "eval_epoch/mAP" in rs[0].data.metrics, (m, sorted(rs[0].data.metrics))
        # The evaluate stage's numbers of last.pt land in the training run itself.
        evaluated = json.loads((repo / "pipeline/eval" / m / "metrics.json").read_text())
        assert rs[0].data.metrics["eval/mAP"] == pytest.approx(evaluated["mAP"]), m
        # ...and its numbers on the other domain, under their own names (eval/mAP above is untouched).
        assert rs[0].data.metrics["eval/synth_b/mAP"] == pytest.approx(cross[m]["mAP"]), m
        assert rs[0].data.tags["eval/synth_b/dataset_hash"] == cross[m]["dataset_hash"]
        assert "kd.feature_loss_coefficient" in rs[0].data.params
    assert by_variant["sd"][0].data.params["kd.feature_loss_coefficient"] == "0.03"

    # Everything is up to date; editing one variant marks only its training and the comparison changed
    # (its evaluation follows from the new checkpoint).
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    assert dvc("status", "--json", cwd=repo).stdout.strip() in ("{}", "")
    edited = tiny_params(synthetic_root, target_root)
    edited["variants"]["sd"]["kd"]["feature_loss_coefficient"] = 0.2
    (repo / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert set(json.loads(dvc("status", "--json", cwd=repo).stdout)) == {"train_kd@sd", "compare"}
    run(["git", "checkout", "--", "params.yaml"], repo)

    # The same change as an experiment: only that variant's train/evaluate and compare run again.
    exp = dvc("exp", "run", "-n", "sd-coef-02", "-S", "variants.sd.kd.feature_loss_coefficient=0.2", cwd=repo)
    assert ran_stages(exp.stdout) == {"train_kd@sd", "evaluate@sd", "evaluate_target@sd-target0", "export@sd",
                                      "compare"}, exp.stdout
    shown_exps = dvc("exp", "show", "--json", cwd=repo).stdout
    assert "sd-coef-02" in shown_exps
    assert re.search(r'"feature_loss_coefficient":\s*0\.2\b', shown_exps)

    runs = mlflow_runs(repo, "pipeline-test")
    sd_runs = [r for r in runs if r.data.tags.get("variant") == "sd"]
    assert len(runs) == len(models) + 1 and len(sd_runs) == 2
    newest = max(sd_runs, key=lambda r: r.info.start_time)
    assert newest.data.params["kd.feature_loss_coefficient"] == "0.2"
    assert newest.data.tags.get("dvc_exp") == "sd-coef-02"
    assert "eval_epoch/mAP" in newest.data.metrics and "eval/mAP" in newest.data.metrics
