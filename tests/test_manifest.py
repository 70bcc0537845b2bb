"""The manifest (labels, hash, round trip, clear errors) and `reid prepare`, which writes it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from reid.commands import prepare
from reid.data.datasets import read_dataset
from reid.data.manifest import Manifest, build_manifest, load_manifest, write_manifest
from reid.data.samples import DatasetSplits, Sample
from reid.errors import DatasetError

runner = CliRunner()


def touch(folder: Path, *names: str, size: int = 10) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x" * size)


def tiny_market(root: Path) -> Path:
    touch(root / "bounding_box_train", "0009_c1s1_000001_00.jpg", "0003_c1s1_000002_00.jpg",
          "0009_c2s1_000003_00.jpg", "0042_c3s1_000004_00.jpg")
    touch(root / "query", "0005_c1s1_000005_00.jpg")
    touch(root / "bounding_box_test", "0005_c2s1_000006_00.jpg", "0000_c1s1_000007_00.jpg")
    return root


# --- building --------------------------------------------------------------------------------------


def test_train_labels_are_contiguous_in_sorted_pid_order(tmp_path: Path) -> None:
    manifest = build_manifest(read_dataset("market1501", tiny_market(tmp_path / "m")))
    # files sorted by name: 0003, 0009, 0009, 0042 -> labels by sorted pid 3->0, 9->1, 42->2
    assert [s.pid for s in manifest.train] == [3, 9, 9, 42]
    assert manifest.train_labels == [0, 1, 1, 2]
    assert manifest.num_classes == 3 and manifest.label_of_pid == {3: 0, 9: 1, 42: 2}
    assert manifest.format == "market1501" and manifest.root == str(tmp_path / "m") and manifest.name == "m"
    assert manifest.statistics["gallery"] == {"ids": 2, "images": 2, "cameras": 2}


def test_synthetic_manifest_is_consistent(synthetic_manifest: Manifest) -> None:
    m = synthetic_manifest
    assert sorted(set(m.train_labels)) == list(range(m.num_classes)) and m.num_classes == 16
    for sample, label in zip(m.train, m.train_labels):
        assert m.label_of_pid[sample.pid] == label
    assert all(Path(s.path).is_absolute() and Path(s.path).is_file() for s in m.train + m.query + m.gallery)
    assert len(m.content_hash) == 64


def test_round_trip_is_exact_and_atomic(tmp_path: Path, synthetic_manifest: Manifest) -> None:
    path = tmp_path / "deep" / "er" / "manifest.json"
    write_manifest(synthetic_manifest, path)
    assert load_manifest(path) == synthetic_manifest
    assert isinstance(load_manifest(path).train[0], Sample)
    assert json.loads(path.read_text())["num_classes"] == synthetic_manifest.num_classes
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temporary file left behind
    write_manifest(synthetic_manifest, path)  # overwriting works too
    assert load_manifest(path).content_hash == synthetic_manifest.content_hash


def test_hash_tracks_content_not_location(tmp_path: Path) -> None:
    root = tiny_market(tmp_path / "m")
    base = build_manifest(read_dataset("market1501", root)).content_hash
    assert build_manifest(read_dataset("market1501", root)).content_hash == base  # deterministic

    moved = shutil.copytree(root, tmp_path / "elsewhere")
    assert build_manifest(read_dataset("market1501", moved)).content_hash == base  # same files, other folder

    touch(root / "bounding_box_test", "0005_c3s1_000008_00.jpg")
    added = build_manifest(read_dataset("market1501", root)).content_hash
    assert added != base

    (root / "bounding_box_test" / "0005_c3s1_000008_00.jpg").write_bytes(b"y" * 11)  # re-encoded: other size
    assert build_manifest(read_dataset("market1501", root)).content_hash not in (base, added)


def test_hand_made_splits_need_no_root(tmp_path: Path) -> None:
    touch(tmp_path / "a", "x.jpg", "y.jpg")
    splits = DatasetSplits("hand", [Sample(str(tmp_path / "a" / "x.jpg"), 7, 1)],
                           [Sample(str(tmp_path / "a" / "y.jpg"), 8, 1)], [Sample(str(tmp_path / "a" / "x.jpg"), 8, 2)])
    manifest = build_manifest(splits)
    assert manifest.format == "custom" and manifest.root == str(tmp_path / "a")
    assert build_manifest(splits, format="folder", root=tmp_path).root == str(tmp_path)
    with pytest.raises(DatasetError, match="relative"):
        build_manifest(DatasetSplits("rel", [Sample("x.jpg", 1, 1)], [], []), root=tmp_path)


# --- loading errors ---------------------------------------------------------------------------------


def test_missing_manifest_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="reid prepare") as err:
        load_manifest(tmp_path / "pipeline" / "data" / "manifest.json")
    assert str(tmp_path / "pipeline" / "data" / "manifest.json") in str(err.value)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"format": "market1501"}', "malformed"),
])
def test_malformed_manifest_is_a_dataset_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_manifest(path)


def test_tampered_labels_are_refused(tmp_path: Path, synthetic_manifest: Manifest) -> None:
    path = write_manifest(synthetic_manifest, tmp_path / "manifest.json")
    raw = json.loads(path.read_text())
    raw["train_labels"][0] = raw["num_classes"]  # a label out of range would crash a CUDA kernel later
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="train_labels"):
        load_manifest(path)


# --- reid prepare -----------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(prepare.command)
    return app


def write_params(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_prepare_writes_manifest_and_statistics(tmp_path: Path, synthetic_root: Path,
                                                synthetic_manifest: Manifest) -> None:
    out = tmp_path / "pipeline" / "data" / "manifest.json"
    params = write_params(tmp_path, {"format": "market1501", "root": str(synthetic_root), "manifest": str(out)})
    result = runner.invoke(cli(), ["--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "# ids" in result.output and "wrote" in result.output
    manifest = load_manifest(out)
    assert manifest.content_hash == synthetic_manifest.content_hash
    stats = json.loads((out.parent / "statistics.json").read_text())
    assert stats["train"]["ids"] == 16 and stats["num_classes"] == 16
    assert stats["query"]["images"] == len(synthetic_manifest.query)


def test_prepare_options_override_the_params(tmp_path: Path, synthetic_root: Path) -> None:
    params = write_params(tmp_path, {"root": str(tmp_path / "missing"), "manifest": str(tmp_path / "unused.json")})
    out = tmp_path / "other.json"
    result = runner.invoke(cli(), ["-p", str(params), "--root", str(synthetic_root), "--format", "market1501",
                                   "--output", str(out), "--check-images"])
    assert result.exit_code == 0, result.output
    assert load_manifest(out).root == str(synthetic_root)
    assert not (tmp_path / "unused.json").exists()


def test_prepare_bad_params_exit_2_naming_the_key(tmp_path: Path) -> None:
    params = write_params(tmp_path, {"fromat": "market1501"})
    result = runner.invoke(cli(), ["--params", str(params)])
    assert result.exit_code == 2
    assert "data.fromat" in result.output and "Traceback" not in result.output

    result = runner.invoke(cli(), ["--params", str(write_params(tmp_path, {})), "--format", "duke"])
    assert result.exit_code == 2 and "--format" in result.output and "dukemtmc" in result.output


def test_prepare_missing_dataset_points_to_the_quickstart(tmp_path: Path) -> None:
    out = tmp_path / "manifest.json"
    params = write_params(tmp_path, {"root": str(tmp_path / "Market-1501-v15.09.15"), "manifest": str(out)})
    result = runner.invoke(cli(), ["--params", str(params)])
    assert result.exit_code == 2
    assert "quickstart" in result.output and "reid synth" in result.output
    assert str(tmp_path / "Market-1501-v15.09.15") in result.output
    assert not out.exists()  # never a silent fallback to synthetic data


def test_prepare_check_images_policies(tmp_path: Path, synthetic_root: Path) -> None:
    root = shutil.copytree(synthetic_root, tmp_path / "copy")
    victim = sorted((root / "bounding_box_train").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:100])  # a truncated JPEG
    out = tmp_path / "manifest.json"
    args = ["--params", str(write_params(tmp_path, {"root": str(root), "manifest": str(out)})), "--check-images"]

    result = runner.invoke(cli(), args)
    assert result.exit_code == 2 and str(victim) in result.output
    assert not out.exists()

    result = runner.invoke(cli(), [*args, "-o", "data.corrupt_images=skip"])
    assert result.exit_code == 0, result.output
    assert str(victim) in result.output
    manifest = load_manifest(out)
    assert str(victim) not in {s.path for s in manifest.train}
    assert len(manifest.train) == len(read_dataset("market1501", root).train) - 1

    assert runner.invoke(cli(), args[:-1]).exit_code == 0  # without --check-images nothing is decoded


def test_relative_root_is_anchored_at_dvc_root(tmp_path: Path, synthetic_root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `dvc exp run --temp` the stage runs in a temporary copy: a relative data.root must still
    name the folder beside the real repository (DVC_ROOT), not one inside the copy."""
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path, {"root": synthetic_root.name, "manifest": "pipeline/data/manifest.json"})
    assert runner.invoke(cli(), ["--params", str(params)]).exit_code == 2  # not in the working directory

    monkeypatch.setenv("DVC_ROOT", str(synthetic_root.parent))
    result = runner.invoke(cli(), ["--params", str(params)])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "pipeline" / "data" / "manifest.json")  # outputs stay in the workspace
    assert manifest.root == str(synthetic_root)
