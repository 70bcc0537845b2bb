"""Failures end cleanly: a NaN loss stops training naming the step and keeps the last good checkpoint,
SIGTERM marks the run KILLED, and an unusable tracking store fails before any training."""

from __future__ import annotations

import math
import os
import signal
import socket
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from reid.checkpoint import load_checkpoint
from reid.errors import NonFiniteLossError, TrackingError
from reid.engine.signals import Terminated


def patch_objective(monkeypatch: pytest.MonkeyPatch, at_call: int, action: Callable[[dict], dict]) -> None:
    """Make the objective's ``at_call``-th forward (1-based = global step) pass its losses through ``action``."""
    import reid.engine.objective as objective_module

    real = objective_module.build_objective

    def build(*args: Any, **kwargs: Any):
        objective = real(*args, **kwargs)
        forward = objective.forward
        calls = {"n": 0}

        def patched(images: torch.Tensor, labels: torch.Tensor):
            calls["n"] += 1
            losses, outputs = forward(images, labels)
            return (action(losses) if calls["n"] == at_call else losses), outputs

        objective.forward = patched
        return objective

    monkeypatch.setattr(objective_module, "build_objective", build)


def poison(losses: dict) -> dict:
    first = next(iter(losses))
    return {**losses, first: losses[first] * float("nan")}


def run_status(config, run_id: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=config.tracking.uri).get_run(run_id).info.status


@pytest.mark.slow
def test_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(
        tiny_config, synthetic_manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.engine.trainer import train

    # 3 steps per epoch; the loss turns NaN at global step 5 (epoch 2, step 2). With log_every_steps=4
    # the host only looks at steps 4 and 6, so the error must come from the step recorded on the device.
    tiny_config.train.log_every_steps = 4
    patch_objective(monkeypatch, 5, poison)
    with pytest.raises(NonFiniteLossError) as err:
        train(tiny_config, synthetic_manifest, progress=False)
    message = str(err.value)
    assert "epoch 2, step 2 of 3 (global step 5)" in message, message
    assert "=nan" in message and "last finite values (global step 4)" in message
    assert "last.pt (after epoch 1) is kept" in message

    state = load_checkpoint(Path(tiny_config.train.output_dir) / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert run_status(tiny_config, state["mlflow_run_id"]) == "FAILED"


def test_nan_in_the_first_epoch_says_no_checkpoint_was_written(tiny_config, synthetic_manifest,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.engine.trainer import train

    patch_objective(monkeypatch, 1, poison)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1 of 3.*no finite loss.*no checkpoint of this run"):
        train(tiny_config, synthetic_manifest, progress=False)
    assert not (Path(tiny_config.train.output_dir) / "last.pt").exists()


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_and_keeps_the_checkpoint(tiny_config, synthetic_manifest,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from reid.engine.trainer import train

    def terminate(losses: dict) -> dict:
        os.kill(os.getpid(), signal.SIGTERM)
        return losses

    patch_objective(monkeypatch, 5, terminate)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        train(tiny_config, synthetic_manifest, progress=False)
    assert signal.getsignal(signal.SIGTERM) is previous
    state = load_checkpoint(Path(tiny_config.train.output_dir) / "last.pt")
    assert state["epoch"] == 1
    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["reid.error"]


def test_unreachable_tracking_server_fails_before_training(tiny_config, tmp_path: Path) -> None:
    from reid.engine.trainer import train

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tiny_config.tracking.uri = f"http://127.0.0.1:{port}"
    # No manifest exists: had training started, reading it would be the first thing to fail.
    tiny_config.data.manifest = tmp_path / "missing-manifest.json"
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port} is not reachable"):
        train(tiny_config, None, progress=False)
    assert not Path(tiny_config.train.output_dir).exists()


def test_step_stats_record_the_first_bad_step_without_syncing_each_step() -> None:
    from reid.engine.stats import StepStats

    stats = StepStats(["id", "triplet"], torch.device("cpu"))
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    for step, value in enumerate([1.0, 2.0, float("inf"), 3.0], start=1):
        losses = {"id": torch.tensor(value), "triplet": torch.tensor(0.5)}
        stats.add(losses["id"] + losses["triplet"], losses, logits, labels)
    flushed = stats.flush(world_size=1)
    assert flushed["nonfinite"] and flushed["steps"] == 4 and flushed["acc"] == 0.5
    report = stats.nonfinite_report()
    assert report["first_bad"] == 3 and math.isinf(report["bad"]["loss_id"])
    assert report["last_finite_step"] == 2 and report["last_finite"] == {"loss": 2.5, "loss_id": 2.0, "loss_triplet": 0.5}


@pytest.mark.slow
def test_a_run_left_running_by_sigkill_is_closed_when_a_new_run_replaces_it(tiny_config, synthetic_manifest) -> None:
    from mlflow.tracking import MlflowClient

    from reid.engine.trainer import train

    tiny_config.train.epochs = 1
    first = train(tiny_config, synthetic_manifest, progress=False)
    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)
    # What a SIGKILL leaves behind: the checkpoint of the last epoch and a run nobody closed.
    client.update_run(first.mlflow_run_id, status="RUNNING")
    with pytest.warns(UserWarning, match="will be overwritten"):
        second = train(tiny_config, synthetic_manifest, progress=False)  # a new run, not a resume
    assert second.mlflow_run_id != first.mlflow_run_id
    old = client.get_run(first.mlflow_run_id)
    assert old.info.status == "KILLED" and "abandoned" in old.data.tags["reid.error"]
    assert client.get_run(second.mlflow_run_id).info.status == "FINISHED"
