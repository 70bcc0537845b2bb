"""Bad images are all found before the first step, and nothing left out goes unrecorded: zero-byte files
at ``reid prepare``, every corrupt file of every split before training (a test image included, with the
fixes), the skipped ones in metrics.json and MLflow, each named once; the warning for a skipped image does
not advise the ``skip`` already set."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from reid.errors import CorruptImageError

from conftest import app, folder_dataset, good_layout

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


def with_corrupt_gallery_image(manifest, folder: Path):
    """``manifest`` with its first gallery image replaced by a truncated copy in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    broken = folder / Path(manifest.gallery[0].path).name
    broken.write_bytes(Path(manifest.gallery[0].path).read_bytes()[:200])
    gallery = [manifest.gallery[0].__class__(str(broken), manifest.gallery[0].pid, manifest.gallery[0].camid),
               *manifest.gallery[1:]]
    return manifest.model_copy(update={"gallery": gallery}), broken


def test_a_corrupt_test_image_fails_training_before_the_first_step(tmp_path: Path, tiny_config,
                                                                   synthetic_manifest) -> None:
    from reid.engine.trainer import train

    manifest, broken = with_corrupt_gallery_image(synthetic_manifest, tmp_path / "broken")
    with pytest.raises(CorruptImageError, match=re.escape(str(broken))) as err:
        train(tiny_config, manifest, progress=False)
    assert "data.corrupt_images=skip" in str(err.value) and "Nothing was trained" in str(err.value)
    assert not (Path(tiny_config.train.output_dir) / "last.pt").exists()


def test_the_skip_warning_does_not_advise_skip(tmp_path: Path) -> None:
    layout = good_layout()
    root = folder_dataset(tmp_path / "ds", layout)
    (root / "gallery" / "p0" / "cam2_1.jpg").write_bytes(b"\xff\xd8 truncated")
    params = tmp_path / "p.yaml"
    params.write_text(json.dumps({"data": {"format": "folder", "root": str(root), "corrupt_images": "skip",
                                           "manifest": str(tmp_path / "m" / "manifest.json")}}))
    result = runner.invoke(app(), ["prepare", "--params", str(params), "--check-images"])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if "cam2_1.jpg" in line)
    assert "skipped corrupt image" in warning and "corrupt_images=skip" not in warning
