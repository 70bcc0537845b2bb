"""Cross-domain evaluation targets (``evaluate.targets``), joint training on several sources
(``data.sources``) and the synthetic generator's second domain (issue 16).

Targets may be evaluation-only datasets (no or an empty ``train/``), their errors name the target's keys
rather than ``data.*``, and ``reid prepare --no-targets`` / ``--target NAME`` prepare only what is asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from reid.config import ConfigError
from reid.data.samples import DatasetSplits, Sample
from reid.errors import DatasetError
from reid.config import parse_targets

from conftest import app, folder_dataset, good_layout, runner

SMALL = dict(num_train_ids=5, num_test_ids=4, num_cameras=3, images_per_id=4, height=32, width=16)


@pytest.fixture(scope="module")
def domain_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reid.data.synthetic import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("domain") / "Domain-B", seed=0, domain=1, **SMALL)


def _prepare(params: Path, *args: str):
    from reid.commands import prepare

    app = typer.Typer()
    app.command()(prepare.command)
    return CliRunner().invoke(app, ["--params", str(params), *args])


def _params(tmp_path: Path, data: dict, targets: list | None = None) -> Path:
    path = tmp_path / "params.yaml"
    tree: dict = {"data": {"format": "market1501", "manifest": str(tmp_path / "pipeline/data/manifest.json"), **data}}
    if targets is not None:
        tree["evaluate"] = {"targets": targets}
    path.write_text(yaml.safe_dump(tree))
    return path


# --- evaluate.targets ------------------------------------------------------------------------------


def test_targets_are_validated_with_errors_naming_the_entry() -> None:
    ok = parse_targets([{"name": "duke", "format": "folder", "root": "x", "eval": {"cross_camera": False}}], "p.yaml")
    assert ok[0].manifest_for("pipeline/data/manifest.json") == Path("pipeline/data/targets/duke.json")
    assert ok[0].eval_overrides() == ["eval.cross_camera=false"]
    assert parse_targets(None, "p.yaml") == [] and parse_targets([], "p.yaml") == []
    bad = [
        ([{"name": "a b", "format": "folder", "root": "x"}], "targets[a b]: name"),
        ([{"name": "duke", "format": "nope", "root": "x"}], "targets[duke]: format"),
        ([{"name": "duke", "format": "folder", "root": "x", "eval": {"max_rank": 0}}], "eval.max_rank"),
        ([{"name": "duke", "format": "folder", "root": "x", "eval": {"bogus": 1}}], "eval.bogus"),
        ([{"name": "duke", "format": "folder"}], "targets[duke]: root"),
        ([{"name": "d", "format": "folder", "root": "x"}] * 2, "unique; repeated: d"),
        ({"name": "d"}, "must be a list"),
    ]
    for raw, message in bad:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_targets(raw, "p.yaml")


def test_prepare_writes_every_targets_manifest(tmp_path: Path, synthetic_root: Path, domain_b: Path) -> None:
    from reid.data.manifest import load_manifest

    params = _params(tmp_path, {"root": str(synthetic_root)},
                     [{"name": "synth_b", "format": "market1501", "root": str(domain_b)}])
    result = _prepare(params)
    assert result.exit_code == 0, result.output
    main = load_manifest(tmp_path / "pipeline/data/manifest.json")
    target = load_manifest(tmp_path / "pipeline/data/targets/synth_b.json")
    assert target.root == str(domain_b) and target.content_hash != main.content_hash
    assert len(target.query) == target.statistics["query"]["images"] > 0
    index = json.loads((tmp_path / "pipeline/data/targets/index.json").read_text())
    assert [(t["name"], t["content_hash"]) for t in index["targets"]] == [("synth_b", target.content_hash)]
    assert "target synth_b: wrote" in result.output


def test_missing_target_is_an_error_at_prepare_time_naming_it(tmp_path: Path, synthetic_root: Path) -> None:
    params = _params(tmp_path, {"root": str(synthetic_root)},
                     [{"name": "duke", "format": "market1501", "root": str(tmp_path / "no-such-folder")}])
    result = _prepare(params)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "evaluation target 'duke'" in result.output and "no-such-folder" in result.output
    assert not (tmp_path / "pipeline/data/manifest.json").exists()  # nothing written before the error


def test_no_targets_still_writes_the_index(tmp_path: Path, synthetic_root: Path) -> None:
    """dvc.yaml tracks pipeline/data/targets as an output of prepare: it must exist with no targets too."""
    result = _prepare(_params(tmp_path, {"root": str(synthetic_root)}))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "pipeline/data/targets/index.json").read_text()) == {"targets": []}


# --- evaluation-only targets (folder format); prepare --no-targets and --target -----------------------


def targets_params(tmp_path: Path, main: Path, targets: list[dict]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"data": {"format": "folder", "root": str(main),
                                         "manifest": str(tmp_path / "m" / "manifest.json")},
                                "evaluate": {"targets": targets}}))
    return path


def test_a_target_may_be_an_evaluation_only_dataset(tmp_path: Path) -> None:
    from reid.data.manifest import load_manifest

    main = folder_dataset(tmp_path / "main", good_layout())
    test_only = good_layout()
    del test_only["train"]
    far = folder_dataset(tmp_path / "far", test_only)
    near = folder_dataset(tmp_path / "near", test_only)
    (near / "train").mkdir()  # an empty train/
    params = targets_params(tmp_path, main, [{"name": "far", "format": "folder", "root": str(far)},
                                             {"name": "near", "format": "folder", "root": str(near)}])
    result = runner.invoke(app(), ["prepare", "--params", str(params)])
    assert result.exit_code == 0, result.output
    for name in ("far", "near"):
        target = load_manifest(tmp_path / "m" / "targets" / f"{name}.json")
        assert (len(target.train), len(target.query), len(target.gallery)) == (0, 3, 6)


def test_target_errors_name_the_target_keys(tmp_path: Path) -> None:
    main = folder_dataset(tmp_path / "main", good_layout())
    params = targets_params(tmp_path, main, [{"name": "far", "format": "folder", "root": str(tmp_path / "nowhere")}])
    result = runner.invoke(app(), ["prepare", "--params", str(params)])
    assert result.exit_code == 2
    assert "evaluate.targets[far].root" in result.stderr
    assert "data.root" not in result.stderr and "--root" not in result.stderr
    wrong = folder_dataset(tmp_path / "wrong", {"bounding_box_test": {"p1": ["cam1_0.jpg"]},
                                                "query": {"p1": ["cam2_0.jpg"]}})
    params = targets_params(tmp_path, main, [{"name": "far", "format": "folder", "root": str(wrong)}])
    result = runner.invoke(app(), ["prepare", "--params", str(params)])
    assert result.exit_code == 2 and "evaluate.targets[far]" in result.stderr
    assert "data.root" not in result.stderr and "data.format" not in result.stderr, result.stderr


def test_several_datasets_prepared_into_one_folder_keep_their_statistics(tmp_path: Path) -> None:
    small = good_layout(query={"p0": ["cam1_0.jpg"]}, gallery={"p0": ["cam2_0.jpg"]})
    a = folder_dataset(tmp_path / "a", good_layout())
    b = folder_dataset(tmp_path / "b", small)
    far = good_layout()
    del far["train"]
    far_root = folder_dataset(tmp_path / "far", far)
    params = targets_params(tmp_path, a, [{"name": "far", "format": "folder", "root": str(far_root)},
                                          {"name": "gone", "format": "folder", "root": str(tmp_path / "gone")}])
    prep = tmp_path / "prep"
    for name, root in (("a", a), ("b", b)):
        result = runner.invoke(app(), ["prepare", "--params", str(params), "--root", str(root), "--no-targets",
                                       "--output", str(prep / f"{name}.json")])
        assert result.exit_code == 0, result.output  # the missing target "gone" is not read
    assert json.loads((prep / "a.statistics.json").read_text())["query"]["images"] == 3
    assert json.loads((prep / "b.statistics.json").read_text())["query"]["images"] == 1
    assert not (prep / "targets").exists()
    result = runner.invoke(app(), ["prepare", "--params", str(params), "--target", "far"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "m" / "targets" / "index.json").read_text())
    assert [t["name"] for t in index["targets"]] == ["far"]


# --- data.sources ------------------------------------------------------------------------------------


def test_merge_sources_offsets_ids_and_cameras_per_source() -> None:
    from reid.data.sources import merge_sources

    a = DatasetSplits("a", train=[Sample("/a/1", 1, 1), Sample("/a/2", 3, 2)], query=[Sample("/a/q", 2, 1)],
                      gallery=[Sample("/a/g", 2, 2), Sample("/a/d", 0, 1)], format="market1501")
    b = DatasetSplits("b", train=[Sample("/b/1", 1, 1), Sample("/b/2", 2, 3)], query=[Sample("/b/q", 5, 1)],
                      gallery=[Sample("/b/g", 5, 2), Sample("/b/d", 0, 2)], format="folder")
    merged = merge_sources([("a", a), ("b", b)])
    assert merged.name == "a+b"
    assert [(s.pid, s.camid) for s in merged.train] == [(1, 1), (3, 2), (4, 3), (5, 5)]
    assert [(s.pid, s.camid) for s in merged.query] == [(2, 1), (8, 3)]
    # distractors stay 0 in every source (they match nobody)
    assert [(s.pid, s.camid) for s in merged.gallery] == [(2, 2), (0, 1), (8, 4), (0, 4)]
    assert any("identities 1..5 -> 4..8" in n and "cameras 1..3 -> 3..5" in n for n in merged.notes)
    with pytest.raises(DatasetError, match=r"data.sources\[x\]"):
        merge_sources([("x", DatasetSplits("x", [Sample("/x", -1, 1)], [], []))])


def test_prepare_joint_sources_into_one_manifest(tmp_path: Path, synthetic_root: Path, domain_b: Path) -> None:
    from reid.data.datasets import read_dataset
    from reid.data.manifest import load_manifest

    params = _params(tmp_path, {"sources": [{"name": "synth_a", "format": "market1501", "root": str(synthetic_root)},
                                            {"name": "synth_b", "format": "market1501", "root": str(domain_b)}]})
    result = _prepare(params)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "pipeline/data/manifest.json")
    a, b = read_dataset("market1501", synthetic_root), read_dataset("market1501", domain_b)
    ids = lambda samples: {s.pid for s in samples}  # noqa: E731
    cams = lambda samples: {s.camid for s in samples}  # noqa: E731
    assert manifest.num_classes == len(ids(a.train)) + len(ids(b.train))
    assert len(manifest.train) == len(a.train) + len(b.train)
    assert len(manifest.query) == len(a.query) + len(b.query)
    from_b = [s for s in manifest.train + manifest.query + manifest.gallery if s.path.startswith(str(domain_b))]
    from_a = [s for s in manifest.train + manifest.query + manifest.gallery if s.path.startswith(str(synthetic_root))]
    assert len(from_a) + len(from_b) == len(manifest.train) + len(manifest.query) + len(manifest.gallery)
    assert not (ids(from_a) - {0}) & (ids(from_b) - {0})  # ids kept apart
    assert not cams(from_a) & cams(from_b)  # and cameras
    assert len(cams(from_b)) == len(cams(b.train + b.query + b.gallery))
    assert "source synth_b" in result.output
    missing = _prepare(_params(tmp_path, {"sources": [{"name": "gone", "format": "market1501",
                                                       "root": str(tmp_path / "gone")}]}))
    assert missing.exit_code == 2 and "data.sources[gone]" in missing.output


# --- the synthetic second domain -----------------------------------------------------------------------


def test_synthetic_domain_is_another_dataset_in_the_same_layout(tmp_path: Path, domain_b: Path) -> None:
    import numpy as np
    from PIL import Image

    from reid.data.datasets import read_dataset
    from reid.data.synthetic import generate_synthetic

    a = generate_synthetic(tmp_path / "a", seed=0, **SMALL)
    a0 = generate_synthetic(tmp_path / "a0", seed=0, domain=0, **SMALL)
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}  # noqa: E731
    fa, fb = files(a), files(domain_b)
    assert fa == files(a0)  # domain 0 is the default dataset, byte for byte
    da, db = read_dataset("market1501", a), read_dataset("market1501", domain_b)
    for split in ("train", "query"):  # same sizes (the query draw itself is random)
        assert len({s.pid for s in da.split(split)}) == len({s.pid for s in db.split(split)})
    assert len(da.train) == len(db.train)
    assert sum(fa.get(k) == v for k, v in fb.items()) == 0  # no shared image
    assert "domain=1" in (domain_b / "README.txt").read_text()
    # Another camera style: the average colour of the images moves between domains.
    mean = lambda root: np.mean([np.asarray(Image.open(p), dtype=np.float64).mean(axis=(0, 1))  # noqa: E731
                                 for p in sorted((root / "bounding_box_train").glob("*.jpg"))], axis=0)
    assert np.abs(mean(a) - mean(domain_b)).max() > 5.0
