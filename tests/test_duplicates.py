"""Byte-identical copies: a query's copy in the gallery under another camera inflates the scores, a test
image that is also a training image leaks; ``reid prepare`` says so and ``reid evaluate`` can exclude them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture()
def copied(tmp_path: Path, synthetic_root: Path) -> dict[str, Path]:
    """The synthetic dataset plus: a query's copy in the gallery under another camera, one under the same
    camera (removed by the protocol anyway), and a training image copied into the gallery."""
    root = tmp_path / "copies"
    shutil.copytree(synthetic_root, root)
    query = sorted((root / "query").glob("*_c1s*.jpg"))[0]
    pid = query.name.split("_")[0]
    other = root / "bounding_box_test" / f"{pid}_c3s1_999999_00.jpg"
    same = root / "bounding_box_test" / f"{pid}_c1s1_999998_00.jpg"
    shutil.copyfile(query, other)
    shutil.copyfile(query, same)
    train = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    leaked = root / "bounding_box_test" / "0000_c2s1_999997_00.jpg"
    shutil.copyfile(train, leaked)
    return {"root": root, "query": query, "other": other, "same": same, "train": train, "leaked": leaked}


def manifest_of(root: Path):
    from reid.data.datasets import read_dataset
    from reid.data.manifest import build_manifest

    return build_manifest(read_dataset("market1501", root))


def test_find_identical_pairs_files_by_content_not_name(copied) -> None:
    from reid.data.duplicates import find_identical

    manifest = manifest_of(copied["root"])
    found = find_identical(manifest.query, manifest.gallery, "query", "gallery")
    assert sorted(b.path for _, b in found.pairs) == sorted([str(copied["other"]), str(copied["same"])])
    assert [b.path for _, b in found.cross_camera()] == [str(copied["other"])]
    assert find_identical(manifest_of(copied["root"]).train, manifest.query).pairs == []


def test_reid_prepare_warns_about_cross_camera_copies_and_leakage(tmp_path: Path, copied) -> None:
    from reid.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"root": str(copied["root"]), "manifest": str(tmp_path / "m.json")}}))
    result = runner.invoke(app, ["prepare", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "1 query image(s) have a byte-identical copy in the gallery under another camera" in result.stderr
    assert str(copied["other"]) in result.stderr and str(copied["same"]) not in result.stderr
    assert "1 training image(s) are byte-identical to a query/gallery image" in result.stderr
    assert str(copied["leaked"]) in result.stderr and "--duplicates exclude" in result.stderr


def test_exclude_leaves_the_copies_out_and_warn_scores_the_split_as_published(copied) -> None:
    from reid.evaluation.duplicates import apply_duplicate_policy

    manifest = manifest_of(copied["root"])
    warned = apply_duplicate_policy(manifest, "warn", threads=2)
    assert warned.split is manifest and len(warned.warnings) == 2
    assert warned.summary == {"policy": "warn", "query_gallery_cross_camera": 1, "train_test": 1}
    excluded = apply_duplicate_policy(manifest, "exclude", threads=2)
    gallery = {g.path for g in excluded.split.gallery}
    assert str(copied["other"]) not in gallery and str(copied["leaked"]) not in gallery
    assert str(copied["same"]) in gallery  # the protocol removes it for its query anyway
    assert len(excluded.split.gallery) == len(manifest.gallery) - 2 and excluded.split.query == manifest.query
    assert excluded.summary["excluded_gallery"] == 2


def test_reid_evaluate_records_the_policy_and_excludes_the_copies(tmp_path: Path, tiny_config, copied,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.cli import app
    from reid.data.manifest import write_manifest
    from reid.engine.trainer import train

    manifest = manifest_of(copied["root"])
    path = write_manifest(manifest, tmp_path / "copies.json")
    config = tiny_config.model_copy(update={"train": tiny_config.train.model_copy(update={"epochs": 0}),
                                            "tracking": tiny_config.tracking.model_copy(update={"enabled": False})})
    result = train(config, manifest, progress=False, log=lambda m: None)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: evaluate takes the checkpoint's configuration
    out = {}
    for policy in ("warn", "exclude"):
        out[policy] = tmp_path / policy
        done = runner.invoke(app, ["evaluate", str(result.last_checkpoint), "--manifest", str(path), "-o",
                                   "data.num_workers=0", "--output", str(out[policy]), "--duplicates", policy],
                             catch_exceptions=False)
        assert done.exit_code == 0, done.output
        if policy == "warn":
            assert "byte-identical copy in the gallery under another camera" in done.stderr
    warned = json.loads((out["warn"] / "metrics.json").read_text())["duplicates"]
    excluded = json.loads((out["exclude"] / "metrics.json").read_text())["duplicates"]
    assert warned == {"policy": "warn", "query_gallery_cross_camera": 1, "train_test": 1}
    assert excluded["policy"] == "exclude" and excluded["excluded_gallery"] == 2
    bad = runner.invoke(app, ["evaluate", str(result.last_checkpoint), "--manifest", str(path), "--duplicates", "drop"])
    assert bad.exit_code == 2 and "--duplicates must be one of warn, exclude" in bad.stderr
