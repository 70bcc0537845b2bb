"""The training-throughput benchmark runs end to end (CPU, resnet18, tiny settings) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_training.py"
# One thread: with two on a 2-core machine shared with other jobs, OpenMP threads wait for each other
# and a tiny step takes seconds instead of ~0.1 s.
TINY = ["--device", "cpu", "--threads", "1", "--backbones", "resnet18", "--height", "32", "--width", "16",
        "--batch-p", "4", "--batch-k", "2", "--warmup", "1", "--steps", "1"]
RESULT_KEYS = {
    "backbone", "batch", "input", "amp", "channels_last", "compile", "with_augment", "warmup_steps", "steps",
    "seconds", "images_per_s", "ms_per_step", "market_epoch_steps", "market_epoch_s", "projected_minutes",
    "peak_memory_gb", "last_loss",
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_training_writes_json(bench, tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    threads = torch.get_num_threads()
    try:
        bench.main([*TINY, "--output", str(out)])
    finally:
        torch.set_num_threads(threads)

    report = json.loads(out.read_text())
    assert {"date", "command", "torch", "device", "machine", "settings", "results"} <= set(report)
    assert report["device"] == "cpu" and "--backbones resnet18" in report["command"]
    (row,) = report["results"]
    assert RESULT_KEYS <= set(row)
    assert row["backbone"] == "resnet18" and row["batch"] == 8 and row["input"] == "32x16"
    assert row["images_per_s"] > 0 and row["ms_per_step"] > 0
    assert row["market_epoch_steps"] == 12936 // 8
    assert row["projected_minutes"] == pytest.approx(row["market_epoch_s"] * 120 / 60, rel=0.01, abs=0.1)
    assert row["amp"] == "off" and row["channels_last"] is False and row["peak_memory_gb"] is None
    assert row["last_loss"] is not None and row["last_loss"] > 0


def test_augmented_batches_are_the_gpu_pipeline(bench) -> None:
    """``--with-augment`` feeds P x K normalised float batches from the uint8 store through TrainAugment."""
    args = bench.parse_args([*TINY, "--with-augment"])
    cfg = bench.config_for(args, "resnet18")
    # The store at half the input size, as Market's native 128 x 64 is to 256 x 128: upsampled per batch.
    assert (args.store_height, args.store_width) == (128, 64)
    batches = bench.augmented_batches(cfg, torch.device("cpu"), channels_last=False, store_images=64,
                                      store_size=(16, 8))
    for _ in range(10):  # crosses the sampler's epoch boundary (64 images / 8 per batch)
        images, labels = next(batches)
    assert images.shape == (8, 3, 32, 16) and images.dtype == torch.float32
    assert labels.shape == (8,)
    assert all(int((labels == label).sum()) == 2 for label in labels.unique())  # K=2 images per identity


def test_precisions_are_rows_of_one_run(bench, tmp_path: Path) -> None:
    out = tmp_path / "training.json"
    threads = torch.get_num_threads()
    try:
        bench.main([*TINY, "--precision", "fp32", "tf32", "--output", str(out)])
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(out.read_text())["results"]
    assert [(r["backbone"], r["precision"], r["amp"]) for r in rows] == [("resnet18", "fp32", "off"),
                                                                         ("resnet18", "tf32", "off")]
    assert [r["tf32"] for r in rows] == [False, False]  # TF32 exists on CUDA only
    assert all(r["images_per_s"] > 0 for r in rows)


def test_the_benchmark_times_the_trainers_own_step(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every timed step is a call of :func:`reid.engine.step.train_step` (the loop's step), on a state
    with the recipe's centre loss and its own optimiser: a copy of the step that drifts fails here."""
    import reid.engine.step as step_module

    assert bench.train_step is step_module.train_step
    calls = []

    def counted(state, images, labels):
        calls.append(state)
        return step_module.train_step(state, images, labels)

    monkeypatch.setattr(bench, "train_step", counted)
    args = bench.parse_args([*TINY, "--steps", "2", "--repeats", "1"])
    threads = torch.get_num_threads()
    try:
        row = bench.bench_backbone(args, "resnet18", torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == args.warmup + args.steps == 3
    state = calls[0]
    assert state.config.loss.center_weight > 0 and state.center_optimizer is not None
    centres = next(iter(state.center_optimizer.param_groups[0]["params"]))
    assert centres.grad is not None and torch.count_nonzero(centres.grad) > 0  # the centres were stepped
    assert row["last_loss"] is not None
