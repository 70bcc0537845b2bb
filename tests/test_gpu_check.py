"""The prepared GPU check (benchmarks/gpu/): its preparation, its CPU dry run, its pieces, and what it
relies on: `reid train` without mlflow/dvc, and exact float32 evaluation distances."""

from __future__ import annotations

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
import prepare  # noqa: E402

from reid.config import Config  # noqa: E402

RECIPE_EPOCHS = Config().train.epochs  # the recipe's schedule length, from the config

PHASES = ["wheels", "env", "bench_eager", "bench_nchw", "bench_pipeline", "bench_compile", "prepare", "plan", "train",
          "eval_compare", "curve", "imports"]


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


# -- the preparation (prepare.sh / prepare.py) -----------------------------------------------------------
def write_probe_wheel(folder: Path, version: str = "1.0.0") -> Path:
    """A real, installable pure-Python wheel (``reid-check-probe``), to run pip's code paths offline."""
    import base64
    import hashlib
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    dist = f"reid_check_probe-{version}.dist-info"
    files = {
        "reid_check_probe/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: reid-check-probe\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    path = folder / f"reid_check_probe-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def make_checkout(tmp_path: Path) -> Path:
    """A git checkout standing in for the one the device tool sends: one tracked file, pack/ and wheels/ ignored."""
    root = tmp_path / "checkout"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("/pack/\n/wheels/\n")
    (root / "code.py").write_text("print('the code that travels')\n" * 100)
    return root


@pytest.fixture()
def prepared_inputs(tmp_path: Path, synthetic_root: Path) -> dict[str, Path]:
    links = tmp_path / "index"
    write_probe_wheel(links)
    (tmp_path / "probe.lock").write_text("# test lock\nreid-check-probe==1.0.0\n")
    root = make_checkout(tmp_path)
    return {"root": root, "links": links, "lock": tmp_path / "probe.lock", "dataset": synthetic_root,
            "pack": root / "pack" / "synthetic.reidpack", "wheels": root / "wheels"}


def prepare_args(inputs: dict[str, Path], *extra: str) -> list[str]:
    return ["--root", str(inputs["root"]), "--dataset", str(inputs["dataset"]), "--pack", str(inputs["pack"]),
            "--wheels", str(inputs["wheels"]), "--lock", str(inputs["lock"]), "--find-links", str(inputs["links"]),
            "--expect", "any", "--python", sys.executable, *extra]


def test_prepare_builds_checks_and_prints_the_call(prepared_inputs: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inputs = prepared_inputs
    assert prepare.main(prepare_args(inputs, "--json", str(tmp_path / "report.json"))) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["wheels"]["action"] == "downloaded"
    assert report["wheels"]["files"] == ["reid_check_probe-1.0.0-py3-none-any.whl"]
    assert report["pack"]["action"] == "built"
    from reid.data.datasets import read_dataset

    splits = read_dataset("market1501", inputs["dataset"])
    assert {k: report["pack"][k] for k in ("train", "query", "gallery")} == {
        k: len(splits.split(k)) for k in ("train", "query", "gallery")}
    # What travels: the checkout's files that git does not ignore, plus exactly the carried paths.
    size = report["size"]
    tree = sum((inputs["root"] / f).stat().st_size for f in (".gitignore", "code.py"))
    assert size["tree_bytes"] == tree and size["tree_files"] == 2
    assert size["carried_bytes"] == {"pack": inputs["pack"].stat().st_size,
                                     "wheels": report["wheels"]["bytes"]}
    assert size["total_bytes"] == tree + inputs["pack"].stat().st_size + report["wheels"]["bytes"]
    call = report["call"]
    assert call["carry"] == ["pack", "wheels"] and call["timeout_s"] > 420
    assert call["command"] == "REID_CHECK_PACK=pack/synthetic.reidpack bash benchmarks/gpu/check.sh"
    printed = capsys.readouterr().out
    assert "of 64 MiB" in printed and json.dumps(call) in printed
    # Run again: both are complete, nothing is rebuilt.
    assert prepare.main(prepare_args(inputs, "--json", str(tmp_path / "again.json"))) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["wheels"]["action"] == "kept" and again["pack"]["action"] == "kept"


def test_prepare_rebuilds_a_truncated_pack_and_replaces_stray_wheels(prepared_inputs: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    inputs = prepared_inputs
    assert prepare.main(prepare_args(inputs)) == 0
    data = inputs["pack"].read_bytes()
    inputs["pack"].write_bytes(data[: len(data) - 100])
    write_probe_wheel(inputs["wheels"], "0.9.0")  # a second version: pip install --no-index would stop
    assert prepare.main(prepare_args(inputs, "--json", str(tmp_path / "r.json"))) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pack"]["action"] == "built" and inputs["pack"].read_bytes() == data
    assert report["wheels"]["action"] == "downloaded"
    assert sorted(p.name for p in inputs["wheels"].iterdir()) == ["reid_check_probe-1.0.0-py3-none-any.whl"]


def test_prepare_fails_clearly(prepared_inputs: dict[str, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    inputs = prepared_inputs
    # Over the size a call takes.
    assert prepare.main(prepare_args(inputs, "--limit-mib", "0.01")) == 1
    assert "over the 0.01 MiB a call takes" in capsys.readouterr().err
    # A pin the wheel source does not have.
    (tmp_path / "bad.lock").write_text("reid-check-probe==2.0.0\n")
    assert prepare.main(prepare_args({**inputs, "lock": tmp_path / "bad.lock"})) == 1
    assert "pip download of reid-check-probe==2.0.0" in capsys.readouterr().err
    # The full protocol asked of a dataset that is not Market-1501.
    args = prepare_args(inputs)
    args[args.index("--expect") + 1] = "full"
    assert prepare.main(args) == 1
    assert "not the full Market-1501 protocol" in capsys.readouterr().err
    # A carried path that is not git-ignored would travel twice.
    (inputs["root"] / ".gitignore").write_text("/wheels/\n")
    assert prepare.main(prepare_args(inputs)) == 1
    assert "pack is not git-ignored" in capsys.readouterr().err
    # No dataset and no pack.
    missing = {**inputs, "dataset": tmp_path / "nowhere", "pack": inputs["root"] / "pack" / "other.reidpack"}
    assert prepare.main(prepare_args(missing)) == 1
    assert "no pack at" in capsys.readouterr().err


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


def test_imports_check_names_a_distribution_the_gpu_image_lacks(tmp_path: Path) -> None:
    log = tmp_path / "imports.txt"
    # mlflow is installed here but not on the GPU image; wcwidth is an optional import (tabulate's).
    log.write_text("numpy\t1\nyaml\t1\npydantic\t1\nwcwidth\t2\njson\t2\nreid\t2\n")
    report = check_tools.check_imports(log, GPU / "image_packages.txt", GPU / "wheels.lock")
    assert report["problems"] == [] and {"numpy", "pyyaml", "pydantic"} <= set(report["distributions"])
    log.write_text(log.read_text() + "mlflow\t3\n")
    problems = check_tools.check_imports(log, GPU / "image_packages.txt", GPU / "wheels.lock")["problems"]
    # (the mlflow module belongs to mlflow and, in recent releases, mlflow-skinny / mlflow-tracing too)
    assert problems and all(p.startswith("mlflow") and "(imported as mlflow)" in p for p in problems), problems


def test_compressed_schedule_scales_the_recipe() -> None:
    from reid.config import Config

    recipe = Config()  # the schedule comes from the config's recipe defaults, not a copy
    assert check_tools.compressed_schedule(120, recipe) == {"epochs": 120, "warmup_epochs": 10, "milestones": [40, 70]}
    assert check_tools.compressed_schedule(60, recipe) == {"epochs": 60, "warmup_epochs": 5, "milestones": [20, 35]}
    assert check_tools.compressed_schedule(12, recipe) == {"epochs": 12, "warmup_epochs": 1, "milestones": [4, 7]}
    assert check_tools.compressed_schedule(3, recipe) == {"epochs": 3, "warmup_epochs": 1, "milestones": [2]}
    assert check_tools.compressed_schedule(1, recipe) == {"epochs": 1, "warmup_epochs": 1, "milestones": []}
    other = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 60})})
    assert check_tools.compressed_schedule(30, other) == {"epochs": 30, "warmup_epochs": 5, "milestones": [20]}


def test_plan_takes_full_epochs_when_two_fit() -> None:
    plan = check_tools.plan_training(300, 4000, epoch_steps=202, batch=64, recipe_epochs=RECIPE_EPOCHS, startup_s=40, eval_s=20, efficiency=1.0)
    assert plan["epochs"] == (300 - 40 - 20) * 4000 // 64 // 202 and plan["max_steps_per_epoch"] is None
    assert check_tools.plan_training(10**6, 10**6, epoch_steps=202, batch=64, recipe_epochs=RECIPE_EPOCHS)["epochs"] == 120


@pytest.mark.parametrize("budget_s", [75, 90, 120, 200, 400])
@pytest.mark.parametrize("images_per_s", [150, 900, 3000, 12000])
def test_plan_finishes_the_first_epoch_by_half_the_time(budget_s: int, images_per_s: int) -> None:
    # The first epoch (and its last.pt) must come even if training runs at half the benchmarked speed.
    plan = check_tools.plan_training(budget_s, images_per_s, epoch_steps=202, batch=64, recipe_epochs=RECIPE_EPOCHS)
    assert plan["epochs"] >= 2
    steps = plan["steps_per_epoch"]
    assert steps == (202 if plan["max_steps_per_epoch"] is None else min(202, plan["max_steps_per_epoch"])) >= 4
    one_epoch_s = steps * 64 / (images_per_s * plan["efficiency"])
    if steps > 4:  # the floor of 4 steps is the only case that may not fit
        assert plan["epochs"] * one_epoch_s <= plan["usable_s"] + 1e-6
        assert one_epoch_s <= plan["usable_s"] / 2 + 1e-6


def test_plan_without_throughput_uses_the_slow_fallback() -> None:
    plan = check_tools.plan_training(200, None, epoch_steps=202, batch=64, recipe_epochs=RECIPE_EPOCHS)
    assert plan["throughput_measured"] is False and plan["images_per_s"] == 200.0
    assert plan["epochs"] == 2 and plan["max_steps_per_epoch"] == int((200 - 40 - 25) * 200 * 0.85 // 64) // 2


def _caps() -> dict[str, int]:
    import re

    text = (GPU / "check.sh").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"\b((?:CAP_\w+)|MARGIN|TRAIN_MIN_S)=(\d+)", text)}


def test_phase_caps_fit_the_default_budget_with_the_training_floor() -> None:
    caps = _caps()
    pre = sum(caps[k] for k in ("CAP_WHEELS", "CAP_ENV", "CAP_EAGER", "CAP_NCHW", "CAP_PIPELINE", "CAP_COMPILE",
                                "CAP_PREPARE", "CAP_PLAN"))
    post = caps["CAP_EVAL"] + caps["CAP_CURVE"] + caps["CAP_SUMMARY"] + caps["MARGIN"]
    assert pre + caps["TRAIN_MIN_S"] + post <= 420
    # The plan made for the training floor (minus the kill grace) still has short epochs to finish.
    plan = check_tools.plan_training(caps["TRAIN_MIN_S"] - 8, None, epoch_steps=202, batch=64, recipe_epochs=RECIPE_EPOCHS)
    assert plan["epochs"] == 2 and plan["max_steps_per_epoch"] >= 4


def test_check_refuses_a_budget_its_caps_do_not_fit(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path / "out"), REID_CHECK_WORK=str(tmp_path / "work"), REID_CHECK_BUDGET_S="300",
               PYTHON="false")  # nothing may start
    proc = subprocess.run(["bash", str(GPU / "check.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "REID_CHECK_BUDGET_S=300 is too small" in proc.stderr, proc.stderr
    assert not (tmp_path / "work" / "logs" / "wheels.log").exists()


def test_check_caps_every_phase_within_the_budget_and_skips_on_request(tmp_path: Path) -> None:
    # The real (non-dry) sequence with an interpreter that fails at once: every phase fails in
    # milliseconds, and phases.tsv shows the cap each one was given.
    env = dict(os.environ, OUT=str(tmp_path / "out"), REID_CHECK_WORK=str(tmp_path / "work"), PYTHON="false",
               REID_CHECK_BUDGET_S="300", REID_CHECK_SKIP="bench_eager bench_nchw bench_compile")
    proc = subprocess.run(["bash", str(GPU / "check.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in (tmp_path / "work" / "phases.tsv").read_text().splitlines()]
    caps = {name: (rc, int(limit)) for name, rc, _, limit in rows}
    assert [r[0] for r in rows] == [p for p in PHASES if p != "imports"]
    assert {n for n, (rc, _) in caps.items() if rc == "skip"} == {"bench_eager", "bench_nchw", "bench_compile"}
    # What ran before training, training's cap and the caps after it: within the budget.
    before = sum(int(r[2]) for r in rows[: [r[0] for r in rows].index("train")])
    after = caps["eval_compare"][1] + caps["curve"][1] + _caps()["CAP_SUMMARY"]
    assert before + caps["train"][1] + after <= 300
    # Training gets what the others leave: at least the floor, here far more.
    assert caps["train"][1] >= 300 - 63 - 5 > _caps()["TRAIN_MIN_S"]
    bad = subprocess.run(["bash", str(GPU / "check.sh")], env={**env, "REID_CHECK_SKIP": "train"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "REID_CHECK_SKIP names train" in bad.stderr


# -- the evaluation comparison: one matrix, two devices --------------------------------------------------
def _eval_case(seed: int = 0):
    from reid.config import EvalConfig
    from reid.data.samples import Sample

    gen = torch.Generator().manual_seed(seed)
    q_pids = torch.arange(12) % 6
    g_pids = torch.cat([torch.arange(40) % 6, torch.tensor([0, 0])])
    query = [Sample(f"q{i}", int(p), 1 + i % 2) for i, p in enumerate(q_pids)]
    gallery = [Sample(f"g{i}", int(p), 1 + (i + 1) % 3) for i, p in enumerate(g_pids)]
    dist = torch.rand(len(query), len(gallery), generator=gen)
    return dist, query, gallery, EvalConfig()


def test_one_matrix_scored_on_both_devices_is_equal() -> None:
    dist, query, gallery, cfg = _eval_case()
    scored = check_tools.score_both_devices(dist, query, gallery, cfg, cross_camera=True)
    assert scored["equal"] is True
    assert scored["max_abs_difference"]["mAP"] == 0.0 and scored["max_abs_difference"]["ap_per_query"] == 0.0
    assert scored["metrics_device"]["mAP"] == scored["metrics_cpu"]["mAP"] > 0


def test_a_device_that_ranks_differently_fails_the_comparison() -> None:
    # A stand-in for a device whose evaluation is wrong: its CPU copy differs from what it scores.
    dist, query, gallery, cfg = _eval_case()

    class Skewed:
        shape = dist.shape

        def __call__(self, start: int, stop: int) -> torch.Tensor:
            return dist[start:stop]

        def cpu(self) -> torch.Tensor:
            worse = dist.clone()
            worse[0, [i for i, s in enumerate(gallery) if s.pid == query[0].pid]] += 2.0  # query 0's matches last
            return worse

    scored = check_tools.score_both_devices(Skewed(), query, gallery, cfg, cross_camera=True)
    assert scored["equal"] is False and scored["max_abs_difference"]["ap_per_query"] > 1e-3


def test_max_abs_counts_nan_only_where_both_are_nan() -> None:
    nan = float("nan")
    assert check_tools._max_abs([1.0, nan], [1.5, nan]) == 0.5
    assert check_tools._max_abs([1.0, nan], [1.0, 0.2]) == float("inf")


def test_training_curve_reads_the_runs_metrics_file(tmp_path: Path) -> None:
    """The curve comes from metrics.jsonl as the training loop's sinks write it (global steps for
    ``train_step/*``, epochs for ``train/*`` and ``eval_epoch/*``); a resumed epoch keeps its last line."""
    from reid.engine.metrics_log import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl", new=True)
    for step in (1, 2):
        log.log_metrics({"train_step/loss": 4.0, "train_step/lr": 3.5e-5}, step=step)
    log.log_metrics({"train/loss": 4.5, "train/acc": 0.25, "train/lr": 3.5e-5, "train/img_per_s": 800.0}, step=1)
    for step in (3, 4, 5):
        log.log_metrics({"train_step/loss": 3.0}, step=step)
    log.log_metrics({"train/loss": 3.25, "train/acc": 0.5, "train/lr": 3.5e-4, "train/img_per_s": 812.0}, step=2)
    log.log_metrics({"eval_epoch/mAP": 0.125, "eval_epoch/rank1": 0.3, "eval_epoch/mINP": 0.05}, step=2)
    curve = check_tools.read_curve(tmp_path / "metrics.jsonl")
    assert curve["train"] == [
        {"epoch": 1, "steps": 2, "loss": 4.5, "acc": 0.25, "lr": 3.5e-5, "img_per_s": 800.0},
        {"epoch": 2, "steps": 3, "loss": 3.25, "acc": 0.5, "lr": 3.5e-4, "img_per_s": 812.0},
    ]
    assert curve["eval"] == [{"epoch": 2, "mAP": 0.125, "rank1": 0.3, "mINP": 0.05}]


@pytest.mark.slow  # about a minute on an idle 2-core machine: 12 phases, most of them start torch
def test_prepare_then_check_dry_run_runs_every_phase(prepared_inputs: dict[str, Path], tmp_path: Path) -> None:
    # As on the GPU machine: prepare here, then the check reads only what was prepared.
    inputs = prepared_inputs
    assert prepare.main(prepare_args(inputs)) == 0
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, REID_CHECK_WORK=str(tmp_path / "work"),
               REID_BLOCKED_IMPORTS_LOG=str(tmp_path / "blocked.txt"), REID_CHECK_PACK=str(inputs["pack"]),
               REID_CHECK_WHEELS=str(inputs["wheels"]), REID_CHECK_LOCK=str(inputs["lock"]))
    # Generous: on a starved shared CPU each of the 12 phases can spend minutes just importing torch.
    proc = subprocess.run(["bash", str(GPU / "check.sh"), "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [p["phase"] for p in summary["phases"]] == PHASES
    assert summary["failed"] == [], proc.stdout[-6000:]
    assert summary["dry_run"] is True
    # The prepared wheel was installed (pip --target) and imports at its pinned version.
    lock = json.loads((tmp_path / "work" / "lock.json").read_text())
    assert lock["installed"] == {"reid-check-probe": "1.0.0"} and lock["problems"] == []
    assert summary["bench_images_per_s"]["eager"]["resnet18 fp32 nchw"] > 0
    assert summary["bench_images_per_s"]["pipeline"]["resnet18 fp32 nchw"] > 0
    assert summary["input_pipeline_images_per_s"] > 0
    bench = json.loads((out / "bench.json").read_text())
    assert bench["pipeline"][0]["store"] == "32x16" and bench["pipeline"][0]["input"] == "64x32"  # upsampled per batch
    assert summary["plan"]["schedule"] == {"epochs": 2, "warmup_epochs": 1, "milestones": []}
    assert summary["plan"]["max_steps_per_epoch"] == 2
    assert summary["eval_compare"]["equal_to_1e-6"] is True
    assert summary["eval_compare"]["max_abs_difference"]["ap_per_query"] == 0.0
    curve = json.loads((out / "curve.json").read_text())
    assert [r["epoch"] for r in curve["train"]] == [1, 2] and [r["steps"] for r in curve["train"]] == [2, 2]
    assert curve["eval"]
    assert summary["train_metrics"]["epochs"] == 2 and 0.0 <= summary["train_metrics"]["mAP"] <= 1.0
    assert len(summary["epoch_times_s"]) == 2
    for name in ("bench.json", "eval_compare.json", "curve.png", "check.log", "logs.tar.gz"):
        assert (out / name).is_file(), name
    assert len(list(out.iterdir())) <= 8  # the device tool brings back at most 8 files
    assert not (tmp_path / "blocked.txt").exists(), (tmp_path / "blocked.txt").read_text()
