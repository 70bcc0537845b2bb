"""Bad images are all found before the first step, and nothing left out goes unrecorded: zero-byte files
at ``reid prepare``, every corrupt file of every split before training, the skipped ones in metrics.json
and MLflow, each named once."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from reid.errors import CorruptImageError

runner = CliRunner()


@pytest.fixture()
def broken_copy(tmp_path: Path, synthetic_root: Path) -> tuple[Path, list[Path]]:
    """A copy of the synthetic dataset with six bad training images (of six identities): four empty, two
    truncated."""
    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    bad, seen = [], set()
    for path in sorted((root / "bounding_box_train").glob("*.jpg")):
        pid = path.name.split("_")[0]
        if pid in seen:
            continue
        seen.add(pid)
        data = path.read_bytes()
        path.write_bytes(b"" if len(bad) < 4 else data[: len(data) // 3])
        bad.append(path)
        if len(bad) == 6:
            break
    return root, bad


def manifest_of(root: Path):
    from reid.data.datasets import read_dataset
    from reid.data.manifest import build_manifest

    return build_manifest(read_dataset("market1501", root))


def test_every_bad_training_image_is_named_before_the_first_step(tiny_config, broken_copy, tmp_path: Path) -> None:
    from reid.engine.trainer import train

    root, bad = broken_copy
    with pytest.raises(CorruptImageError) as err:
        train(tiny_config, manifest_of(root), progress=False, log=lambda m: None)
    message = str(err.value)
    assert "6 corrupt image(s) (6 train)" in message and "Nothing was trained" in message
    assert all(str(path) in message for path in bad)
    assert not (Path(tiny_config.train.output_dir) / "last.pt").exists()


def test_skipped_images_of_every_split_are_in_metrics_and_mlflow_and_named_once(tiny_config, broken_copy) -> None:
    from mlflow.tracking import MlflowClient

    from reid.engine.trainer import train

    root, bad = broken_copy
    query = sorted((root / "query").glob("*.jpg"))[0]
    query.write_bytes(b"")
    config = tiny_config.model_copy(update={"data": tiny_config.data.model_copy(update={"corrupt_images": "skip"}),
                                            "train": tiny_config.train.model_copy(update={"epochs": 1})})
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config, manifest_of(root), progress=False, log=lines.append)
    named = [line for line in lines if line.startswith("warning:") and "left out" in line]
    assert len(named) == 7 and all(any(str(p) in line for line in named) for p in [*bad, query])
    repeated = [str(w.message) for w in caught if any(str(p) in str(w.message) for p in [*bad, query])]
    assert repeated == [], "a raw warning repeats a line already printed"
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["num_corrupt_images_skipped"] == {"train": 6, "query": 1}
    assert sorted(metrics["corrupt_images_skipped"]["train"]) == sorted(str(p) for p in bad)
    assert metrics["corrupt_images_skipped"]["query"] == [str(query)]
    run = MlflowClient(tracking_uri=config.tracking.uri).get_run(result.mlflow_run_id)
    assert run.data.metrics["corrupt_images_skipped/train"] == 6.0
    assert run.data.metrics["corrupt_images_skipped/query"] == 1.0


def test_reid_prepare_flags_zero_byte_files_without_check_images(tmp_path: Path, broken_copy) -> None:
    from reid.cli import app

    root, bad = broken_copy
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"root": str(root), "manifest": str(tmp_path / "m.json")}}))
    result = runner.invoke(app, ["prepare", "--params", str(params)])
    assert result.exit_code == 2
    assert "4 empty (0-byte) image file(s)" in result.stderr
    assert all(str(p) in result.stderr for p in bad[:4])
    result = runner.invoke(app, ["prepare", "--params", str(params), "-o", "data.corrupt_images=skip"])
    assert result.exit_code == 0, result.output
    kept = {s["path"] for s in json.loads((tmp_path / "m.json").read_text())["train"]}
    assert not kept & {str(p) for p in bad[:4]} and str(bad[4]) in kept  # a truncated file needs --check-images
