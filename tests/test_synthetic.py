"""The synthetic generator: Market layout, determinism, a valid query/gallery protocol, identity signal
that survives camera changes, and `reid synth`."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from reid.commands import synth
from reid.data.datasets import read_dataset
from reid.data.images import load_images
from reid.data.layouts import MARKET1501
from reid.data.synthetic import generate_synthetic
from reid.errors import ReidError

SMALL = dict(num_train_ids=5, num_test_ids=4, num_cameras=3, images_per_id=4, height=32, width=16)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = tree_bytes(generate_synthetic(tmp_path / "a", seed=3, **SMALL))
    b = tree_bytes(generate_synthetic(tmp_path / "b", seed=3, **SMALL))
    c = tree_bytes(generate_synthetic(tmp_path / "c", seed=4, **SMALL))
    assert a == b and len(a) > 30
    assert a != c
    assert sum(a[k] != c.get(k) for k in a) > len(a) // 2


def test_layout_names_and_readme(synthetic_root: Path) -> None:
    files = {folder: sorted(p.name for p in (synthetic_root / folder).iterdir())
             for folder in ("bounding_box_train", "query", "bounding_box_test")}
    for names in files.values():
        assert names and all(MARKET1501.pattern.match(n) for n in names)
        assert all(re.match(r"^(-1|\d{4})_c[1-3]s\d_\d{6}_\d{2}\.jpg$", n) for n in names)
    gallery = files["bounding_box_test"]
    assert any(n.startswith("0000_") for n in gallery) and any(n.startswith("-1_") for n in gallery)
    assert not any(n.startswith(("0000_", "-1_")) for n in files["bounding_box_train"] + files["query"])
    assert "SYNTHETIC" in (synthetic_root / "README.txt").read_text()


def test_readable_with_the_requested_sizes(synthetic_root: Path) -> None:
    splits = read_dataset("market1501", synthetic_root)
    train_ids, test_ids = {s.pid for s in splits.train}, {s.pid for s in splits.query}
    assert len(train_ids) == 16 and len(splits.train) == 16 * 8
    assert len(test_ids) == 12 and not train_ids & test_ids
    assert {s.pid for s in splits.gallery} == test_ids | {0}
    assert sum(s.pid != 0 for s in splits.gallery) + len(splits.query) == 12 * 8
    assert {s.camid for s in splits.train + splits.query + splits.gallery} == {1, 2, 3}
    assert sorted(train_ids) != list(range(1, 17))  # ids are not labels: they are spread out, like Market's
    images, kept = load_images(splits.query[:5] + splits.gallery[-3:])
    assert len(kept) == 8 and all(img.shape == (3, 64, 32) for img in images)


def test_every_query_has_a_cross_camera_gallery_match(synthetic_root: Path) -> None:
    splits = read_dataset("market1501", synthetic_root)
    cams: dict[int, set[int]] = defaultdict(set)
    for s in splits.gallery:
        cams[s.pid].add(s.camid)
    for q in splits.query:
        assert cams[q.pid] - {q.camid}, f"query {q.path} has no gallery image of id {q.pid} on another camera"
    per_id_cam: dict[tuple[int, int], int] = defaultdict(int)
    for q in splits.query:
        per_id_cam[(q.pid, q.camid)] += 1
    assert max(per_id_cam.values()) == 1  # at most one query per identity and camera, like Market


def test_identity_survives_camera_changes(synthetic_root: Path) -> None:
    """Grey-world-normalised torso and leg colours (no learning at all) retrieve the right person on
    another camera far above chance: the identity signal is there for a model to learn, and the camera
    changes (colour cast, lighting, viewpoint) are not a trivial constant."""
    splits = read_dataset("market1501", synthetic_root)

    def features(samples):
        x = torch.stack(load_images(samples)[0]).float()
        x = x / x.mean(dim=(2, 3), keepdim=True)
        h, w = x.shape[2:]
        torso = x[:, :, int(0.3 * h):int(0.45 * h), int(0.4 * w):int(0.6 * w)].mean(dim=(2, 3))
        legs = x[:, :, int(0.65 * h):int(0.8 * h), int(0.35 * w):int(0.65 * w)].mean(dim=(2, 3))
        return torch.cat([torso, legs], 1)

    dist = torch.cdist(features(splits.query), features(splits.gallery)).numpy()
    gp = np.array([s.pid for s in splits.gallery])
    gc = np.array([s.camid for s in splits.gallery])
    hits = []
    for i, q in enumerate(splits.query):
        allowed = ~((gp == q.pid) & (gc == q.camid))
        hits.append(gp[np.argmin(np.where(allowed, dist[i], np.inf))] == q.pid)
    chance = 1 / 12
    assert np.mean(hits) > 3 * chance, f"rank-1 {np.mean(hits):.2f} vs chance {chance:.2f}"


def test_regenerating_over_own_output_and_refusing_foreign_folders(tmp_path: Path) -> None:
    root = generate_synthetic(tmp_path / "s", seed=1, **SMALL)
    first = tree_bytes(root)
    (root / "query" / "9999_c1s1_000001_00.jpg").write_bytes(b"stale")
    assert tree_bytes(generate_synthetic(root, seed=1, **SMALL)) == first  # stale files are gone

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"keep me")
    with pytest.raises(ReidError, match="not empty and was not written by `reid synth`"):
        generate_synthetic(foreign, **SMALL)
    assert (foreign / "holiday.jpg").read_bytes() == b"keep me"


@pytest.mark.parametrize("bad, match", [
    (dict(num_cameras=1), "num_cameras"),
    (dict(images_per_id=1), "images_per_id"),
    (dict(num_train_ids=0), "num_train_ids"),
])
def test_invalid_sizes_are_refused(tmp_path: Path, bad: dict, match: str) -> None:
    with pytest.raises(ReidError, match=match):
        generate_synthetic(tmp_path / "x", **{**SMALL, **bad})
    assert not (tmp_path / "x").exists()


def test_synth_command_prints_the_statistics(tmp_path: Path) -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(synth.command)
    out = tmp_path / "synthetic-market"
    result = CliRunner().invoke(app, [str(out), "--num-train-ids", "5", "--num-test-ids", "4", "--cameras", "3",
                                      "--images-per-id", "4", "--height", "32", "--width", "16", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert re.search(r"train\s+\|\s+5\s+\|\s+20\s+\|\s+3", result.output), result.output
    assert tree_bytes(out) == tree_bytes(generate_synthetic(tmp_path / "again", seed=3, **SMALL))

    result = CliRunner().invoke(app, [str(tmp_path / "bad"), "--cameras", "1"])
    assert result.exit_code == 2 and "--cameras" in result.output
