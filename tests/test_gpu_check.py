"""The prepared GPU check (benchmarks/gpu/): its CPU dry run, its pieces, and what it relies on:
`reid train` without mlflow/dvc, and exact float32 evaluation distances."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "benchmarks" / "gpu"
sys.path.insert(0, str(GPU))
import check_tools  # noqa: E402

PHASES = ["wheels", "env", "bench_eager", "bench_compile", "bench_augment", "data", "plan", "prepare", "train",
          "eval_compare", "curve"]


def blocked_env(tmp_path: Path) -> dict[str, str]:
    """An environment where importing mlflow or dvc fails (and every attempt is recorded)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(GPU / "without_tracking"), str(REPO), env.get("PYTHONPATH", "")])
    env["REID_BLOCKED_IMPORTS_LOG"] = str(tmp_path / "blocked.txt")
    return env


# -- reid train without mlflow and dvc -----------------------------------------------------------------
def test_blocker_really_blocks(tmp_path: Path) -> None:
    env = blocked_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import mlflow"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked" in proc.stderr
    # One record per attempt: the module, the importing process, then its stack (indented lines).
    records = [line.split()[0] for line in (tmp_path / "blocked.txt").read_text().splitlines()
               if line and not line.startswith(" ")]
    assert records == ["mlflow"]


def test_reid_train_with_tracking_off_never_imports_mlflow_or_dvc(tmp_path: Path, synthetic_root: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"root": str(synthetic_root), "manifest": str(tmp_path / "manifest.json"), "height": 64, "width": 32,
                 "ids_per_batch": 4, "instances_per_id": 4, "num_workers": 0, "input_pipeline": "cpu",
                 "test_batch_size": 64},
        "model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False},
        "optim": {"warmup_epochs": 1, "milestones": [2]},
        "train": {"epochs": 1, "device": "cpu", "amp": "off", "max_steps_per_epoch": 2,
                  "output_dir": str(tmp_path / "run")},
        "eval": {"num_ranked_lists": 1},
        "tracking": {"enabled": False},
    }))
    env = blocked_env(tmp_path)
    for command in (["prepare"], ["train"]):
        proc = subprocess.run([sys.executable, "-m", "reid.cli", *command, "--params", str(params)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=1200)  # a starved CPU
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MLflow tracking is off" in proc.stdout
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    attempts = tmp_path / "blocked.txt"
    assert not attempts.exists(), f"tried to import: {attempts.read_text()}"


# -- exact float32 evaluation ------------------------------------------------------------------------
def test_exact_fp32_matmul_switches_tf32_off_and_restores() -> None:
    from reid.evaluation.distance import exact_fp32_matmul

    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # what training sets on CUDA (TF32)
        assert torch.backends.cuda.matmul.allow_tf32
        with exact_fp32_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
            assert not torch.backends.cuda.matmul.allow_tf32
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
        with pytest.raises(RuntimeError):
            with exact_fp32_matmul():
                raise RuntimeError("boom")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_distances_are_float32_for_bf16_features_and_leave_the_setting_alone() -> None:
    from reid.evaluation.distance import pairwise_distance

    gen = torch.Generator().manual_seed(0)
    qf = torch.randn(5, 16, generator=gen).to(torch.bfloat16)
    gf = torch.randn(7, 16, generator=gen).to(torch.bfloat16)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        for metric in ("cosine", "euclidean"):
            dist = pairwise_distance(qf, gf, metric)
            assert dist.dtype == torch.float32 and dist.shape == (5, 7)
            # bf16 features are widened first: the same as handing over their float32 copies.
            assert torch.equal(dist, pairwise_distance(qf.float(), gf.float(), metric))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)


# -- the pieces of check.sh --------------------------------------------------------------------------
def test_wheel_lock_pins_pydantic_and_all_its_requirements() -> None:
    # Versions are compared with this venv only where they agree (CI may install newer releases).
    report = check_tools.check_lock(GPU / "wheels.lock", None, versions_must_match=False)
    assert report["problems"] == []
    assert {"pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection"} <= set(report["pins"])


def test_wheel_lock_check_finds_a_missing_requirement_and_a_stray_wheel(tmp_path: Path) -> None:
    lines = [line for line in (GPU / "wheels.lock").read_text().splitlines() if "typing-inspection" not in line]
    (tmp_path / "wheels.lock").write_text("\n".join(lines) + "\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "six-1.0.0-py3-none-any.whl").write_bytes(b"")
    problems = check_tools.check_lock(tmp_path / "wheels.lock", wheels, versions_must_match=False)["problems"]
    assert any("requires typing-inspection" in p for p in problems), problems
    assert any("not in the lock" in p and "six" in p for p in problems), problems
    assert any("expected one wheel of pydantic==" in p for p in problems), problems


def test_compressed_schedule_scales_the_recipe() -> None:
    assert check_tools.compressed_schedule(120) == {"epochs": 120, "warmup_epochs": 10, "milestones": [40, 70]}
    assert check_tools.compressed_schedule(60) == {"epochs": 60, "warmup_epochs": 5, "milestones": [20, 35]}
    assert check_tools.compressed_schedule(12) == {"epochs": 12, "warmup_epochs": 1, "milestones": [4, 7]}
    assert check_tools.compressed_schedule(3) == {"epochs": 3, "warmup_epochs": 1, "milestones": [2]}
    assert check_tools.compressed_schedule(1) == {"epochs": 1, "warmup_epochs": 1, "milestones": []}


def test_plan_fits_the_budget() -> None:
    epochs, why = check_tools.plan_epochs(300, 4000, startup_s=40, eval_s=10, evaluations=3, efficiency=1.0)
    assert epochs == int((300 - 40 - 30) // (12936 / 4000))
    assert check_tools.plan_epochs(10**6, 10**6)[0] == 120
    assert check_tools.plan_epochs(300, None)[0] == 1 and check_tools.plan_epochs(5, 100)[0] == 1


def test_training_curve_parser_reads_the_trainers_progress_lines() -> None:
    from reid.engine.progress import EpochProgress

    stream = io.StringIO()
    bar = EpochProgress(2, 5, 10, stream=stream)
    bar.close(10, {"loss": 3.25, "acc": 0.5, "lr": 3.5e-4, "img/s": 812.0})
    text = stream.getvalue() + "epoch 2: mAP 0.1250  rank1 0.3000  mINP 0.0500 (best)\n"
    curve = check_tools.parse_training_log(text)
    assert curve["train"] == [{"epoch": 2, "steps": 10, "loss": 3.25, "acc": 0.5, "lr": 3.5e-4, "img_per_s": 812.0}]
    assert curve["eval"] == [{"epoch": 2, "mAP": 0.125, "rank1": 0.3, "mINP": 0.05}]


@pytest.mark.slow  # about a minute on an idle 2-core machine: 11 phases, most of them start torch
def test_check_dry_run_runs_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, REID_CHECK_WORK=str(tmp_path / "work"),
               REID_BLOCKED_IMPORTS_LOG=str(tmp_path / "blocked.txt"))
    # Generous: on a starved shared CPU each of the 11 phases can spend minutes just importing torch.
    proc = subprocess.run(["bash", str(GPU / "check.sh"), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == PHASES
    assert summary["failed"] == [], proc.stdout[-6000:]
    assert summary["dry_run"] is True
    assert summary["bench_images_per_s"]["eager"]["resnet18"] > 0
    assert summary["plan"]["schedule"] == {"epochs": 2, "warmup_epochs": 1, "milestones": []}
    assert summary["eval_compare"]["equal_to_1e-6"] is True
    curve = json.loads((out / "curve.json").read_text())
    assert [r["epoch"] for r in curve["train"]] == [1, 2] and curve["eval"]
    assert summary["train_metrics"]["epochs"] == 2 and 0.0 <= summary["train_metrics"]["mAP"] <= 1.0
    for name in ("bench.json", "eval_compare.json", "curve.png", "check.log", "logs.tar.gz"):
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # the device tool brings back at most 8 files
    assert not (tmp_path / "blocked.txt").exists(), (tmp_path / "blocked.txt").read_text()
