"""The training engine: device/AMP policy, progress output (metrics in percent, as ``reid evaluate``
prints them), outputs of a run, learning, freezing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from reid.engine.device import amp_policy, epoch_seed, resolve_device, rng_state, seed_everything, set_rng_state
from reid.engine.progress import EpochProgress
from reid.errors import ReidError

from conftest import tweak


# -- device, AMP, RNG --------------------------------------------------------------------------------
def test_device_and_amp_policy_on_this_machine() -> None:
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else device.type)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ReidError, match="CUDA is not available"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert amp_policy("auto", cpu).dtype is None and not amp_policy("auto", cpu).use_scaler
    assert amp_policy("bf16", cpu).dtype == torch.bfloat16 and not amp_policy("bf16", cpu).use_scaler
    assert amp_policy("fp16", cpu).use_scaler and amp_policy("off", cpu).name == "off"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_amp_on_cuda_is_bf16_when_supported() -> None:  # pragma: no cover - GPU machines
    policy = amp_policy("auto", torch.device("cuda"))
    assert policy.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    from reid.checkpoint import load_checkpoint, save_checkpoint

    seed_everything(5)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected
    assert epoch_seed(0, 1) != epoch_seed(1, 0) and epoch_seed(0, 1) == epoch_seed(0, 1)


# -- progress ----------------------------------------------------------------------------------------
class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_on_a_terminal_and_writes_one_line_elsewhere() -> None:
    stats = {"loss": 2.5, "acc": 0.25, "lr": 3.5e-4, "img/s": 812.4}
    tty = Tty()
    bar = EpochProgress(3, 120, 4, stream=tty, min_interval=0.0)
    for step in range(1, 5):
        bar.update(step, stats)
    bar.close(4, stats)
    assert tty.getvalue().count("\r") >= 4
    plain = io.StringIO()
    bar = EpochProgress(3, 120, 4, stream=plain)
    for step in range(1, 5):
        bar.update(step, stats)
    line = bar.close(4, stats)
    assert plain.getvalue() == line + "\n"
    assert line.startswith("epoch 3/120 [########################] 4/4")
    for part in ("loss 2.5000", "acc 25.0%", "lr 3.50e-04", "812 img/s"):
        assert part in line


# -- training ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_writes_checkpoints_metrics_config_and_progress(tiny_config, synthetic_manifest, capfd) -> None:
    from reid.config import load_config
    from reid.checkpoint import load_checkpoint
    from reid.engine.trainer import train

    result = train(tiny_config, synthetic_manifest)
    out = Path(tiny_config.train.output_dir)
    err = capfd.readouterr().err
    assert "epoch 1/2 [" in err and "epoch 2/2 [" in err and "img/s" in err and "lr " in err

    assert result.epochs == 2 and result.global_step == 6
    last = load_checkpoint(out / "last.pt")
    for key in ("config", "num_classes", "epoch", "global_step", "model", "objective", "optimizers", "schedulers",
                "sampler", "rng", "mlflow_run_id", "metrics"):
        assert key in last, key
    assert last["epoch"] == 2 and last["num_classes"] == synthetic_manifest.num_classes
    assert last["schedulers"]["main"]["last_epoch"] == 2
    assert not (out / "best.pt").exists() and result.best_checkpoint is None  # no validation split configured

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mAP"] == pytest.approx(result.metrics["mAP"]) and 0 <= metrics["mAP"] <= 1
    assert metrics["epoch"] == 2 and len(result.history) == 2
    # What the run cost, for recorded results: 6 steps of one batch each, two evaluations.
    assert metrics["train_images"] == 6 * tiny_config.data.batch_size and metrics["evaluations"] == 2
    assert metrics["train_time_s"] > 0 and metrics["eval_time_s"] > 0
    assert metrics["train_img_per_s"] == pytest.approx(metrics["train_images"] / metrics["train_time_s"])
    assert last["timing"]["train_images"] == metrics["train_images"]  # carried into a resume
    assert load_config(out / "config.yaml") == tiny_config


@pytest.mark.slow
def test_training_beats_the_untrained_model(tiny_config, synthetic_manifest) -> None:
    from reid.engine.device import seed_everything as seed
    from reid.engine.trainer import train
    from reid.evaluation.runner import evaluate_model
    from reid.models.reid_model import build_model

    tiny_config.train.epochs = 8
    tiny_config.train.max_steps_per_epoch = None  # full epochs (8 batches of 4 ids x 4 images)
    tiny_config.train.eval_every = 8
    tiny_config.optim.milestones = [6]
    tiny_config.optim.lr = 1e-3
    tiny_config.tracking.enabled = False
    seed(tiny_config.train.seed)
    untrained = evaluate_model(build_model(tiny_config, synthetic_manifest.num_classes), synthetic_manifest,
                               tiny_config, "cpu").mAP
    result = train(tiny_config, synthetic_manifest, progress=False)
    # Measured (AMD EPYC, 1 thread): untrained 0.12, trained 0.44 on 24 queries. From-scratch training
    # is chaotic across CPUs and thread counts (the README's quickstart moved by up to 10 mAP points
    # between machines), so the margin asks only for "clearly learned": 0.10, i.e. 2.4 queries' worth of
    # AP, leaving 0.22 (twice the largest machine-to-machine shift seen) below the measured gain.
    assert result.metrics["mAP"] > untrained + 0.10, (untrained, result.metrics["mAP"])


@pytest.mark.slow
def test_backbone_is_frozen_for_the_first_epochs(tiny_config, synthetic_manifest) -> None:
    from reid.checkpoint import load_checkpoint
    from reid.engine.device import seed_everything as seed
    from reid.engine.trainer import train
    from reid.models.reid_model import build_model

    tiny_config.model.freeze_backbone_epochs = 1
    tiny_config.train.epochs = 1
    tiny_config.tracking.enabled = False
    seed(tiny_config.train.seed)
    initial = build_model(tiny_config, synthetic_manifest.num_classes).state_dict()
    train(tiny_config, synthetic_manifest, progress=False)
    trained = load_checkpoint(Path(tiny_config.train.output_dir) / "last.pt")["model"]
    conv = [k for k in initial if "conv" in k and k.endswith("weight")]
    assert conv and all(torch.equal(initial[k], trained[k]) for k in conv)
    heads = [k for k in initial if initial[k].is_floating_point() and k not in conv and "backbone" not in k
             and not torch.equal(initial[k], trained[k])]
    assert heads, "nothing outside the backbone trained"

    # One more epoch with --resume: the backbone is unfrozen and learns.
    tiny_config.train.epochs = 2
    train(tiny_config, synthetic_manifest, resume=True, progress=False)
    resumed = load_checkpoint(Path(tiny_config.train.output_dir) / "last.pt")["model"]
    assert any(not torch.equal(initial[k], resumed[k]) for k in conv)


def test_training_prints_percent_like_evaluate(tiny_config, synthetic_manifest) -> None:
    from reid.engine.progress import format_stats
    from reid.engine.trainer import train

    lines: list[str] = []
    config = tweak(tiny_config, train={"epochs": 1}, tracking={"enabled": False})
    result = train(config, synthetic_manifest, progress=False, log=lines.append)
    epoch = next(line for line in lines if line.startswith("epoch 1:"))
    assert f"mAP {100 * result.metrics['mAP']:.1f} |" in epoch and f"R1 {100 * result.metrics['rank1']:.1f}" in epoch
    assert 0 <= result.metrics["mAP"] <= 1  # metrics files and MLflow keep fractions
    assert "acc 25.0%" in format_stats({"acc": 0.25})


# -- the reported model: the last epoch; a "best" only on held-out training identities -------------------
def short(tiny_config, *overrides: str):
    """``tiny_config`` with one step per epoch and the given ``key=value`` overrides."""
    from reid.config import apply_overrides, validate

    return validate(apply_overrides(tiny_config.model_dump(mode="json"), ["train.max_steps_per_epoch=1", *overrides]))


def test_the_run_reports_its_last_epoch_and_selects_nothing_on_query_gallery(tiny_config, synthetic_manifest) -> None:
    """The recipe reports the model of the last epoch. An epoch chosen by query/gallery mAP would be a model
    selected on the test set: no best.pt, no best_* metric, the final metrics are the last evaluation's."""
    from reid.engine.trainer import train

    config = short(tiny_config)
    result = train(config, synthetic_manifest, progress=False, log=lambda m: None)
    out = Path(config.train.output_dir)
    assert not (out / "best.pt").exists() and result.best_checkpoint is None and result.best_epoch is None
    metrics = json.loads((out / "metrics.json").read_text())
    assert not any(k.startswith("best") or k.startswith("val_best") for k in metrics)
    assert metrics["epoch"] == 2 and metrics["mAP"] == pytest.approx(result.history[-1]["mAP"])


def test_a_validation_split_chooses_best_pt_on_held_out_training_identities(tiny_config, synthetic_manifest) -> None:
    from reid.checkpoint import load_checkpoint
    from reid.engine.trainer import train

    config = short(tiny_config, "train.epochs=3", "eval.val_ids=4")
    lines: list[str] = []
    result = train(config, synthetic_manifest, progress=False, log=lines.append)
    out = Path(config.train.output_dir)
    val = [h["val_mAP"] for h in result.history]
    assert len(val) == 3 and result.best_metric == max(val)
    assert result.best_epoch == 1 + val.index(max(val))  # chosen on the validation split alone
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == result.best_epoch and "optimizers" not in best
    last = load_checkpoint(out / "last.pt")
    assert last["epoch"] == 3 and last["num_classes"] == synthetic_manifest.num_classes - 4  # never trained on them
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epoch"] == 3 and metrics["val_best_mAP"] == pytest.approx(max(val))
    assert any("validation split: 4 training identities held out" in line for line in lines)
    # The same-identity threshold of last.pt on the held-out identities (reid search --threshold-file).
    from reid.deploy.module import load_checkpoint_module
    from reid.evaluation.threshold import load_thresholds

    found = load_thresholds(out / "threshold.json")
    assert found.measured_on == "eval.val_ids: 4 held-out training identities, epoch 3"
    assert found.model["weights_hash"] == load_checkpoint_module(out / "last.pt")[3]["weights_hash"]
    assert found.genuine_pairs > 0 and found.impostor_pairs > 0
    assert metrics["val_threshold"]["far_0.001"]["threshold"] == pytest.approx(found.at(1e-3).threshold)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tars = [e for e in logged if "val/tar/far_0.01" in e.get("metrics", e)]
    assert len(tars) == 3, logged[:3]  # one per evaluation


def test_hold_out_identities_splits_training_ids_into_a_validation_query_and_gallery(synthetic_manifest) -> None:
    from reid.data.validation import hold_out_identities
    from reid.errors import ReidError

    training, validation = hold_out_identities(synthetic_manifest, 4, seed=0)
    held = {s.pid for s in validation.query} | {s.pid for s in validation.gallery}
    train_pids = {s.pid for s in synthetic_manifest.train}
    assert len(held) == 4 and held <= train_pids and not held & {s.pid for s in training.train}
    assert training.num_classes == synthetic_manifest.num_classes - 4
    assert training.query == synthetic_manifest.query and training.gallery == synthetic_manifest.gallery
    assert len(validation.query) + len(validation.gallery) == sum(s.pid in held for s in synthetic_manifest.train)
    for pid in held:  # one query per camera, and each query has a gallery image of its id in another camera
        cams = [s.camid for s in validation.query if s.pid == pid]
        assert len(cams) == len(set(cams)) >= 2
        assert all(any(g.pid == pid and g.camid != c for g in validation.gallery) for c in cams)
    again, _ = hold_out_identities(synthetic_manifest, 4, seed=0)
    other, _ = hold_out_identities(synthetic_manifest, 4, seed=1)
    assert again.train == training.train and other.train != training.train
    with pytest.raises(ReidError, match="eval.val_ids=15"):
        hold_out_identities(synthetic_manifest, 15, seed=0)


def test_a_run_that_never_leaves_its_warmup_says_so_in_the_log(tiny_config, synthetic_manifest) -> None:
    from reid.engine.trainer import train

    config = short(tiny_config, "train.epochs=1", "optim.warmup_epochs=3")
    lines: list[str] = []
    train(config, synthetic_manifest, progress=False, log=lines.append)
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert "train.epochs=1 <= optim.warmup_epochs=3" in warning and "1 of the 1 epoch(s)" in warning
