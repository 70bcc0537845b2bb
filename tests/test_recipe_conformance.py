"""The committed experiment (params.yaml) is reid-strong-baseline's published recipe, key by key and epoch by epoch.

The reference values below are written out from reid-strong-baseline's own files, not computed by our
code: ``configs/softmax_triplet_with_center.yml`` (the config of its published Market-1501 results),
``solver/lr_scheduler.py`` (``WarmupMultiStepLR``), ``engine/trainer.py`` (the scheduler is stepped at
ignite's ``EPOCH_STARTED``, so epoch ``e`` (1-based) trains at the factor of ``last_epoch = e``) and
``data/transforms/build.py`` (the training transforms and ``RandomErasing(mean=PIXEL_MEAN)``).
Ours are read from ``params.yaml`` and from the real scheduler as the real trainer loop steps it.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from unittest import mock

import pytest
import torch

from reid.config import load_config

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"

# -- the reference -------------------------------------------------------------------------------------
# softmax_triplet_with_center.yml (+ the defaults it does not override), as our keys.
REFERENCE_KEYS: dict[str, object] = {
    "data.height": 256, "data.width": 128,                              # INPUT.SIZE_TRAIN / SIZE_TEST
    "data.mean": [0.485, 0.456, 0.406], "data.std": [0.229, 0.224, 0.225],  # INPUT.PIXEL_MEAN / PIXEL_STD
    "data.flip_prob": 0.5,                                              # INPUT.PROB
    "data.padding": 10,                                                 # INPUT.PADDING
    "data.random_erasing_prob": 0.5,                                    # INPUT.RE_PROB
    "data.ids_per_batch": 16, "data.instances_per_id": 4,               # IMS_PER_BATCH 64, NUM_INSTANCE 4
    "model.last_stride": 1,                                             # MODEL.LAST_STRIDE
    "model.neck": "bnneck", "model.neck_feat": "after",                 # MODEL.NECK, TEST.NECK_FEAT
    "model.pretrained": "imagenet",                                     # MODEL.PRETRAIN_CHOICE 'imagenet'
    "loss.id_weight": 1.0, "loss.label_smoothing": 0.1,                 # MODEL.IF_LABELSMOOTH 'on' (epsilon 0.1)
    "loss.triplet_weight": 1.0, "loss.triplet_margin": 0.3,             # SOLVER.MARGIN
    "loss.triplet_soft_margin": False,
    "loss.center_weight": 0.0005,                                       # SOLVER.CENTER_LOSS_WEIGHT
    "loss.center_lr": 0.5,                                              # SOLVER.CENTER_LR
    "optim.optimizer": "adam",                                          # SOLVER.OPTIMIZER_NAME
    "optim.lr": 0.00035,                                                # SOLVER.BASE_LR
    "optim.weight_decay": 0.0005,                                       # SOLVER.WEIGHT_DECAY
    "optim.scheduler": "multistep",
    "optim.milestones": [40, 70], "optim.gamma": 0.1,                   # SOLVER.STEPS, SOLVER.GAMMA
    "optim.warmup_epochs": 10, "optim.warmup_factor": 0.01,             # SOLVER.WARMUP_ITERS, WARMUP_FACTOR
    "train.epochs": 120,                                                # SOLVER.MAX_EPOCHS
    "eval.normalize": True,                                             # TEST.FEAT_NORM 'yes'
    "eval.val_ids": 0,                                                  # reports the last epoch, no selection
}
# The reference's optimiser for the centres (make_optimizer_with_center): plain SGD, no schedule.
REFERENCE_CENTER_OPTIMIZER = ("SGD", 0.5)

# The learning rate of every epoch, 1-based, written out: WarmupMultiStepLR at last_epoch = e,
# lr * (0.01 * (1 - e/10) + e/10) * 0.1 ** bisect_right([40, 70], e) for e < 10, without warmup after.
REFERENCE_WARMUP_LR = [3.815e-5, 7.28e-5, 1.0745e-4, 1.421e-4, 1.7675e-4, 2.114e-4, 2.4605e-4, 2.807e-4, 3.1535e-4]
REFERENCE_LR = REFERENCE_WARMUP_LR + [3.5e-4] * 30 + [3.5e-5] * 30 + [3.5e-6] * 51
assert len(REFERENCE_LR) == 120


def reference_scheduler_lr(epoch_1_based: int) -> float:
    """reid-strong-baseline's ``WarmupMultiStepLR.get_lr`` (linear warmup) at ``last_epoch = e``, transcribed."""
    base_lr, milestones, gamma, warmup_factor, warmup_iters = 3.5e-4, [40, 70], 0.1, 0.01, 10
    last_epoch = epoch_1_based
    factor = 1.0
    if last_epoch < warmup_iters:
        alpha = last_epoch / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    return base_lr * factor * gamma ** bisect.bisect_right(milestones, last_epoch)


# The training transforms in the reference's order (build_transforms, is_train=True).
REFERENCE_TRAIN_ORDER = ["resize", "flip+pad+crop", "normalize", "erase"]
REFERENCE_ERASE = {"fill": (0.485, 0.456, 0.406), "area": (0.02, 0.4), "min_aspect": 0.3, "attempts": 100}


def test_the_written_out_lr_table_is_the_reference_formula() -> None:
    """The table above is the formula, both written independently of our code (a check on the test)."""
    assert REFERENCE_LR == pytest.approx([reference_scheduler_lr(e) for e in range(1, 121)], rel=1e-12)
    assert REFERENCE_LR[0] == pytest.approx(3.815e-5) and REFERENCE_LR[9] == 3.5e-4
    assert REFERENCE_LR[38] == 3.5e-4 and REFERENCE_LR[39] == 3.5e-5 and REFERENCE_LR[69] == 3.5e-6


# -- ours ----------------------------------------------------------------------------------------------
def test_every_recipe_key_of_params_yaml_is_the_reference() -> None:
    flat = load_config(PARAMS).flat()
    ours = {key: flat[key] for key in REFERENCE_KEYS}
    assert ours == REFERENCE_KEYS


def test_the_defaults_of_the_config_are_the_recipe_too() -> None:
    """An empty params file trains the reference model (the config's promise)."""
    from reid.config import Config

    flat = Config().flat()
    assert {key: flat[key] for key in REFERENCE_KEYS} == REFERENCE_KEYS


def recorded_schedule(tmp_path: Path, manifest, params: Path = PARAMS) -> tuple[list[float], list[float]]:
    """The main and centre learning rates of every epoch as the real training loop sets them.

    :func:`reid.engine.trainer.fit` runs unchanged over the real state of the recipe (its stepping
    order is what is checked); only the work of an epoch is replaced by reading the optimisers'
    learning rates, and the evaluation by a callback that records a score.
    """
    import torch

    from reid.engine import trainer as trainer_mod
    from reid.engine.callbacks import Callback
    from reid.engine.distributed import init_from_env
    from reid.engine.state import build_state

    config = load_config(params, overrides=[
        "model.pretrained=none", f"data.manifest={tmp_path / 'manifest.json'}", "data.num_workers=0",
        "train.device=cpu", f"train.output_dir={tmp_path / 'run'}", "tracking.enabled=false",
    ])
    cpu = torch.device("cpu")
    state = build_state(config, int(manifest.num_classes), cpu, init_from_env(cpu), make_loader=None)
    main_lr: list[float] = []
    center_lr: list[float] = []

    def fake_epoch(state, hooks, epoch: int) -> None:
        main_lr.append(state.optimizer.param_groups[0]["lr"])
        center_lr.append(state.center_optimizer.param_groups[0]["lr"] if state.center_optimizer else float("nan"))

    class Scores(Callback):
        def evaluate(self, state, completed: int) -> None:
            state.summary.last_metrics = {"mAP": 0.0, "epoch": completed}

    with mock.patch.object(trainer_mod, "train_epoch", fake_epoch):
        trainer_mod.fit(state, [Scores()])
    return main_lr, center_lr


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no optimiser step here
def test_the_trainer_steps_the_reference_lr_in_every_one_of_the_120_epochs(tmp_path, synthetic_manifest) -> None:
    main_lr, center_lr = recorded_schedule(tmp_path, synthetic_manifest)
    assert len(main_lr) == 120
    assert main_lr == pytest.approx(REFERENCE_LR, rel=1e-9)
    # The centres: their own SGD at 0.5 in every epoch, never scheduled.
    assert center_lr == [REFERENCE_CENTER_OPTIMIZER[1]] * 120


def test_the_centre_optimizer_is_plain_sgd_at_the_reference_lr() -> None:
    from torch import nn

    from reid.engine.optim import build_center_optimizer

    config = load_config(PARAMS)
    optimizer = build_center_optimizer(config.loss, [nn.Parameter(torch.zeros(3, 2))])
    assert optimizer is not None and type(optimizer).__name__ == REFERENCE_CENTER_OPTIMIZER[0]
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (REFERENCE_CENTER_OPTIMIZER[1], 0, 0)


def test_random_erasing_fills_with_the_reference_pixel_mean() -> None:
    from reid.data import transforms

    data = load_config(PARAMS, overrides=["data.random_erasing_prob=1.0"]).data
    augment = transforms.TrainAugment(data)
    images = torch.randint(0, 256, (8, 3, data.height, data.width), dtype=torch.uint8)
    params = augment.sample(8, torch.Generator().manual_seed(0))
    out = augment.apply(images, params)
    for b in range(8):
        assert int(params.erase[b]) == 1
        y, x, h, w = (int(params.erase_y[b]), int(params.erase_x[b]), int(params.erase_h[b]), int(params.erase_w[b]))
        patch = out[b, :, y:y + h, x:x + w]
        for c in range(3):
            assert torch.all(patch[c] == torch.tensor(REFERENCE_ERASE["fill"][c], dtype=torch.float32)), (b, c)
    assert (transforms.ERASE_AREA, transforms.ERASE_MIN_ASPECT, transforms.ERASE_ATTEMPTS) == (
        REFERENCE_ERASE["area"], REFERENCE_ERASE["min_aspect"], REFERENCE_ERASE["attempts"])


def test_the_training_transforms_run_in_the_reference_order() -> None:
    from reid.data import transforms

    calls: list[str] = []

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapper

    data = load_config(PARAMS, overrides=["data.random_erasing_prob=1.0"]).data
    images = torch.randint(0, 256, (4, 3, 300, 140), dtype=torch.uint8)  # not the input size: resized first
    with mock.patch.object(transforms, "to_batch", recording("resize", transforms.to_batch)), \
            mock.patch.object(transforms, "flip_pad_crop", recording("flip+pad+crop", transforms.flip_pad_crop)), \
            mock.patch.object(transforms, "normalize", recording("normalize", transforms.normalize)), \
            mock.patch.object(transforms, "erase", recording("erase", transforms.erase)):
        out = transforms.TrainAugment(data)(images, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 256, 128)
    assert [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c] == REFERENCE_TRAIN_ORDER
