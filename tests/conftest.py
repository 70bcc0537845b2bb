"""Shared fixtures: a small synthetic Market-format dataset, its manifest, a CPU-sized config, and
the real Market-1501 when it is present; and the helpers several test files use (``from conftest
import ...``, tests/ is on ``sys.path`` under pytest): folder-format datasets built from a layout,
``reid prepare`` on them, params files, config tweaks and an untrained ``reid train`` checkpoint.

Real Market-1501 is found through ``REID_MARKET1501_ROOT`` or ``../shared/data`` beside the checkout;
tests that need it are skipped with the reason when neither exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
MARKET_CANDIDATES = [
    os.environ.get("REID_MARKET1501_ROOT"),
    str(REPO.parent / "shared" / "data" / "Market-1501-v15.09.15"),
]

torch.set_num_threads(min(2, torch.get_num_threads()))


def market_root_or_none() -> Path | None:
    for candidate in MARKET_CANDIDATES:
        if candidate and (Path(candidate) / "bounding_box_train").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def market_root() -> Path:
    root = market_root_or_none()
    if root is None:
        pytest.skip("real Market-1501 not found: set REID_MARKET1501_ROOT or place it in ../shared/data")
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (Market layout), generated once per test session."""
    from reid.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "Synthetic-Market"
    return generate_synthetic(root, num_train_ids=16, num_test_ids=12, num_cameras=3, images_per_id=8,
                              height=64, width=32, seed=0)


@pytest.fixture(scope="session")
def synthetic_manifest(synthetic_root: Path):
    from reid.data.datasets import read_dataset
    from reid.data.manifest import build_manifest

    return build_manifest(read_dataset("market1501", synthetic_root))


@pytest.fixture()
def tiny_config(tmp_path: Path, synthetic_root: Path):
    """A CPU-sized configuration: resnet18 from scratch, 64x32 inputs, P=4 x K=4, two short epochs."""
    from reid.config import validate

    return validate({
        "data": {"root": str(synthetic_root), "manifest": str(tmp_path / "manifest.json"),
                 "height": 64, "width": 32, "padding": 4, "ids_per_batch": 4, "instances_per_id": 4,
                 "test_batch_size": 64, "num_workers": 0, "input_pipeline": "cpu"},
        "model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False},
        "optim": {"warmup_epochs": 1, "milestones": [2]},
        "train": {"epochs": 2, "eval_every": 1, "device": "cpu", "amp": "off", "max_steps_per_epoch": 3,
                  "output_dir": str(tmp_path / "run"), "log_every_steps": 1},
        "eval": {"num_ranked_lists": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_root": str(tmp_path / "mlruns"),
                     "experiment": "tests"},
    }, "tiny test config")


@pytest.fixture()
def refused_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """torch hub's downloads fail at once, as without network, and are recorded (their URLs listed)."""
    from urllib.error import URLError

    calls: list[str] = []

    def refuse(req, *args, **kwargs):
        calls.append(getattr(req, "full_url", str(req)))
        raise URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    return calls


@pytest.fixture()
def postgres():
    """A real throwaway PostgreSQL cluster on 127.0.0.1 (tests/services.py), stopped at the end; the test
    is skipped, saying what is missing, where PostgreSQL or its Python driver is not installed."""
    from services import PostgresCluster, postgres_missing

    missing = postgres_missing()
    if missing:
        pytest.skip(missing)
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def slurm():
    """A real SLURM cluster on this machine (munged, slurmctld, two slurmd as nodes n1 and n2;
    tests/services.py), stopped by pid at the end; skipped, saying what is missing, where SLURM or munge
    is not installed or the tests are not root."""
    from services import SlurmCluster, slurm_missing

    missing = slurm_missing()
    if missing:
        pytest.skip(missing)
    cluster = SlurmCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# -- helpers shared by several test files -------------------------------------------------------------------
runner = CliRunner()


def app():
    """The ``reid`` command line, imported when a test runs (collecting the tests stays cheap)."""
    from reid.cli import app as reid_app

    return reid_app


def image(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)


def folder_dataset(root: Path, layout: dict[str, dict[str, list[str]]]) -> Path:
    """``{split: {identity: [file names]}}`` as a folder-format dataset of small random JPEGs."""
    seed = 0
    for split, identities in layout.items():
        for identity, names in identities.items():
            for name in names:
                seed += 1
                image(root / split / identity / name, seed)
    return root


def good_layout(**changes: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """A valid layout: 4 training identities on 2 cameras, 3 query/gallery identities; ``changes`` replace
    whole splits."""
    layout = {
        "train": {f"t{i}": [f"cam{c}_{n}.jpg" for c in (1, 2) for n in range(2)] for i in range(4)},
        "query": {f"p{i}": ["cam1_0.jpg"] for i in range(3)},
        "gallery": {f"p{i}": ["cam2_0.jpg", "cam2_1.jpg"] for i in range(3)},
    }
    layout.update(changes)
    return layout


def params_file(tmp_path: Path, root: Path, **data: object) -> Path:
    """A params file with only a ``data`` section: the folder dataset at ``root``, the manifest in
    ``tmp_path / "m"``, plus ``data`` keys."""
    path = tmp_path / "custom_params.yaml"
    section = {"format": "folder", "root": str(root), "manifest": str(tmp_path / "m" / "manifest.json"), **data}
    path.write_text(json.dumps({"data": section}))
    return path


def prepare(params: Path, *args: str):
    return runner.invoke(app(), ["prepare", "--params", str(params), *args])


def prepare_folder(tmp_path: Path, layout: dict, *args: str, **data: object):
    """``reid prepare`` on ``layout`` as a folder dataset in ``tmp_path / "ds"`` (manifest in ``tmp_path / "m"``):
    the command's result and the dataset root."""
    root = folder_dataset(tmp_path / "ds", layout)
    return prepare(params_file(tmp_path, root, **data), *args), root


def save_params(path: Path, config, **extra: object) -> Path:
    """``config`` (a Config) as a params file, plus pipeline keys (variants, evaluate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**config.model_dump(mode="json"), **extra}))
    return path


def tweak(config, **sections: dict):
    """``config`` with the keys of each ``section={key: value}`` replaced, validated again."""
    from reid.config import validate

    tree = config.model_dump(mode="json")
    for section, values in sections.items():
        tree[section].update(values)
    return validate(tree)


def random_checkpoint(path: Path, config, num_classes: int) -> Path:
    """A `reid train`-format checkpoint of an untrained model: enough to embed images."""
    from reid.checkpoint import save_checkpoint
    from reid.models.reid_model import build_model

    torch.manual_seed(0)
    model = build_model(config, num_classes).eval()
    return save_checkpoint({"config": config.model_dump(mode="json"), "num_classes": num_classes, "epoch": 1,
                            "global_step": 1, "model": model.state_dict()}, path)
