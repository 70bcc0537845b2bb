"""Resume: a SIGKILLed ``reid train`` continued with ``--resume`` ends where an uninterrupted run ends,
in the same MLflow run; checkpoints that cannot continue this configuration are refused clearly.

The command a stopped or failed run prints, pasted as is, continues exactly that run (params file,
variant, overrides, run name); changes that do not touch what was learned (a corrupt image skipped or
deleted and the data re-prepared) are accepted, and other training data is refused naming the manifest
the checkpoint was trained on."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from reid.checkpoint import load_checkpoint, save_checkpoint
from reid.errors import CheckpointError

from conftest import app, runner, save_params, tweak

REPO = Path(__file__).resolve().parents[1]


def cli_env() -> dict[str, str]:
    # One thread each: the same arithmetic in every process, and kind to a shared 2-core machine.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": pythonpath}


def write_params(tmp_path: Path, tiny_config, name: str, **train) -> Path:
    tree = tiny_config.model_dump(mode="json")
    tree["train"].update({"output_dir": str(tmp_path / name), **train})
    tree["tracking"]["experiment"] = name
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def reid_train(params: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reid.cli", "train", "--params", str(params), *extra],
                            cwd=params.parent, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err[-4000:]}"
    return out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_config, synthetic_manifest) -> None:
    from mlflow.tracking import MlflowClient

    from reid.data.manifest import write_manifest

    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    steps = 6
    settings = {"epochs": 3, "max_steps_per_epoch": steps, "eval_every": 1}
    straight = write_params(tmp_path, tiny_config, "straight", **settings)
    killed = write_params(tmp_path, tiny_config, "killed", **settings)
    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)

    victim = reid_train(killed)
    last = tmp_path / "killed" / "last.pt"
    run_id = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and victim.poll() is None:
            if run_id is None and last.is_file():
                run_id = load_checkpoint(last)["mlflow_run_id"]
            if run_id is not None:
                try:
                    logged = [m.step for m in client.get_metric_history(run_id, "train_step/loss")]
                except Exception:  # noqa: BLE001 - the store is busy being written by the victim
                    logged = []
                if any(s > steps + 1 for s in logged):  # two steps into epoch 2
                    break
            time.sleep(0.05)
        assert victim.poll() is None, "the run ended before it could be killed:\n" + victim.stderr.read()[-3000:]
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(last)["epoch"] == 1, "killed too late: epoch 2 had already been saved"
    assert client.get_run(run_id).info.status == "RUNNING"  # a SIGKILLed process cannot mark its run

    finish(reid_train(straight))
    out = finish(reid_train(killed, "--resume"))
    assert run_id in out

    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(last)
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"] == 3 * steps
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["best_metric"] == b["best_metric"]

    assert b["mlflow_run_id"] == run_id
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["reid.resumed_at_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "eval_epoch/mAP")] == [1, 2, 3]


# -- refusals (fabricated checkpoints: the checks run before any model is built) -------------------
def fake_checkpoint(tiny_config, num_classes: int, **config_changes: dict) -> dict:
    tree = tiny_config.model_dump(mode="json")
    for section, values in config_changes.items():
        tree[section].update(values)
    return {"config": tree, "num_classes": num_classes, "epoch": 1, "global_step": 3, "model": {},
            "optimizers": {"main": {}}, "schedulers": {"main": {}}}


def test_resume_without_a_checkpoint_says_so(tiny_config, synthetic_manifest) -> None:
    from reid.engine.trainer import train

    with pytest.raises(CheckpointError, match="nothing to resume.*last.pt does not exist"):
        train(tiny_config, synthetic_manifest, resume=True, progress=False)


def test_resume_from_another_backbone_is_refused(tiny_config, synthetic_manifest) -> None:
    from reid.engine.trainer import train

    last = Path(tiny_config.train.output_dir) / "last.pt"
    save_checkpoint(fake_checkpoint(tiny_config, synthetic_manifest.num_classes, model={"backbone": "resnet34"}), last)
    with pytest.raises(CheckpointError, match="backbone 'resnet34'.*uses 'resnet18'"):
        train(tiny_config, synthetic_manifest, resume=True, progress=False)


def test_resume_with_another_class_count_is_refused(tiny_config, synthetic_manifest) -> None:
    from reid.engine.trainer import train

    last = Path(tiny_config.train.output_dir) / "last.pt"
    save_checkpoint(fake_checkpoint(tiny_config, synthetic_manifest.num_classes + 5), last)
    with pytest.raises(CheckpointError, match=rf"{synthetic_manifest.num_classes + 5} identities"):
        train(tiny_config, synthetic_manifest, resume=True, progress=False)


def test_resume_with_a_changed_config_lists_every_differing_key(tiny_config, synthetic_manifest) -> None:
    from reid.engine.resume import check_resumable

    state = fake_checkpoint(tiny_config, 16, optim={"lr": 1.0}, loss={"triplet_margin": 0.5},
                            train={"epochs": 50, "eval_every": 7}, tracking={"experiment": "other"})
    with pytest.raises(CheckpointError) as err:
        check_resumable(state, tiny_config, Path("last.pt"))
    message = str(err.value)
    assert "optim.lr: checkpoint 1.0, now 0.00035" in message and "loss.triplet_margin" in message
    # Keys that cannot change what was trained are not listed.
    listed = [line.split(":")[0].strip("- ") for line in message.splitlines() if line.startswith("  - ")]
    assert listed == ["loss.triplet_margin", "optim.lr"]
    check_resumable(fake_checkpoint(tiny_config, 16, train={"epochs": 50}), tiny_config, Path("last.pt"))


def test_pickled_checkpoint_is_refused(tiny_config, synthetic_manifest) -> None:
    from reid.engine.trainer import train

    last = Path(tiny_config.train.output_dir) / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"format": "reid-checkpoint-v1", "model": torch.nn.Linear(2, 2)}, last)  # a pickled module
    with pytest.raises(CheckpointError, match="needs pickle"):
        train(tiny_config, synthetic_manifest, resume=True, progress=False)


def test_best_checkpoint_cannot_be_resumed(tiny_config) -> None:
    from reid.engine.resume import check_resumable

    state = fake_checkpoint(tiny_config, 16)
    del state["optimizers"]
    with pytest.raises(CheckpointError, match="lacks optimizers"):
        check_resumable(state, tiny_config, Path("best.pt"))


# -- the hint a stopped run prints continues exactly that run ------------------------------------------
def pasted(hint: str, marker: str) -> list[str]:
    """The command a user copies from ``hint`` after ``marker`` (to the end of the line, or between
    backticks), split as a POSIX shell splits it."""
    text = hint.split(marker, 1)[1].strip()
    text = text[1:].split("`", 1)[0] if text.startswith("`") else text.splitlines()[0]
    argv = shlex.split(text)
    assert argv[:2] == ["reid", "train"], argv
    return argv[1:]


def test_the_interrupt_hint_resumes_exactly_the_interrupted_run(tmp_path: Path, tiny_config, synthetic_manifest,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.engine.trainer as trainer_module
    from reid.data.manifest import write_manifest
    from reid.checkpoint import save_checkpoint
    from reid.engine.signals import Terminated

    monkeypatch.chdir(tmp_path)
    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = save_params(tmp_path / "my configs" / "p.yaml", tiny_config,
                         variants={"short": {"train": {"epochs": 1}}})
    calls: list[tuple] = []

    def fake_train(config, manifest, resume=False, **kwargs):
        calls.append((config, resume, kwargs.get("variant"), kwargs.get("run_name")))
        if not resume:  # the first epoch is done, then SIGTERM
            last = save_checkpoint({"epoch": 1}, Path(config.train.output_dir) / "last.pt")
            os.utime(last, (time.time() + 5, time.time() + 5))  # written during this run, whatever the clock's grain
            raise Terminated("received signal SIGTERM")
        raise CheckpointError("stop here: the resumed run's arguments are recorded")

    monkeypatch.setattr(trainer_module, "train", fake_train)
    out = tmp_path / "runs" / "my run"
    first = runner.invoke(app(), ["train", "--params", str(params), "--variant", "short", "-o",
                                  f"train.output_dir={out}", "-o", "optim.lr=0.001", "--run-name", "try 2"])
    assert first.exit_code == 143, first.output
    again = runner.invoke(app(), pasted(first.stderr, "Continue with:"))
    assert again.exit_code == 2 and len(calls) == 2, again.output
    (config, resumed, variant, run_name), (config2, resumed2, variant2, run_name2) = calls
    assert not resumed and resumed2 and (variant2, run_name2) == (variant, run_name) == ("short", "try 2")
    assert config2 == config and config2.train.output_dir == out and config2.optim.lr == 0.001


def test_the_evaluation_failure_hint_resumes_exactly_the_failed_run(tmp_path: Path, tiny_config, synthetic_manifest,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.evaluation.runner as runner_module
    from reid.data.manifest import write_manifest
    from reid.errors import EvaluationError

    monkeypatch.chdir(tmp_path)
    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = save_params(tmp_path / "p.yaml", tiny_config)
    evaluate = runner_module.evaluate_model

    def broken(*args, **kwargs):
        raise EvaluationError("evaluation broke")

    monkeypatch.setattr(runner_module, "evaluate_model", broken)
    out = tmp_path / "other run"
    failed = runner.invoke(app(), ["train", "--params", str(params), "-o", f"train.output_dir={out}",
                                   "-o", "train.epochs=1", "-o", "tracking.enabled=false", "--run-name", "x"])
    assert failed.exit_code == 2 and "evaluation broke" in failed.stderr, failed.output
    monkeypatch.setattr(runner_module, "evaluate_model", evaluate)  # the cause is fixed
    resumed = runner.invoke(app(), pasted(failed.stderr, "continue with"))
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {out / 'last.pt'}: 1 epoch(s) done" in resumed.stderr
    assert not Path(tiny_config.train.output_dir).exists()  # the default folder was never touched


# -- trained for real: what resume accepts, and the data it names when it refuses ----------------------
def test_resume_accepts_changes_that_do_not_touch_what_was_learned(tmp_path: Path, tiny_config,
                                                                   synthetic_manifest) -> None:
    """The fixes the corrupt-image error suggests (skip it; delete it and re-prepare) keep --resume working."""
    from reid.data.manifest import build_manifest
    from reid.engine.trainer import train

    config = tweak(tiny_config, train={"epochs": 1}, tracking={"enabled": False})
    train(config, synthetic_manifest, progress=False)
    splits = synthetic_manifest.splits()
    splits.gallery = splits.gallery[1:]  # the corrupt gallery image deleted, the dataset re-prepared
    reprepared = build_manifest(splits)
    assert reprepared.content_hash != synthetic_manifest.content_hash
    more = tweak(config, train={"epochs": 2}, data={"corrupt_images": "skip"}, eval={"max_rank": 20})
    result = train(more, reprepared, resume=True, progress=False)
    assert result.resumed_from_epoch == 1 and result.epochs == 2


def test_the_other_data_error_names_the_manifest_trained_on(tmp_path: Path, tiny_config, synthetic_manifest) -> None:
    from reid.data.manifest import build_manifest
    from reid.engine.trainer import train

    trained_on = tmp_path / "trained_on" / "manifest.json"
    config = tweak(tiny_config, train={"epochs": 1}, tracking={"enabled": False}, data={"manifest": str(trained_on)})
    train(config, synthetic_manifest, progress=False)
    splits = synthetic_manifest.splits()
    del splits.train[1]  # one training image fewer (its identity keeps others: the same class count)
    other = build_manifest(splits)
    assert other.num_classes == synthetic_manifest.num_classes
    now = tweak(config, train={"epochs": 2}, data={"manifest": str(tmp_path / "now.json")})
    with pytest.raises(CheckpointError, match=re.escape(str(trained_on))) as err:
        train(now, other, resume=True, progress=False)
    assert "training samples" in str(err.value) and "now.json" in str(err.value)
