"""A dataset pack (reid/data/pack.py): written once, read through the normal data path."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.data.datasets import read_dataset
from reid.data.images import decode_image
from reid.data.manifest import build_manifest
from reid.data.pack import encode_image, write_pack
from reid.errors import CorruptImageError, DatasetError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def packed(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("pack") / "synthetic.reidpack"
    summary = write_pack(read_dataset("market1501", synthetic_root), path, quality=80, threads=2)
    return path, summary


def test_pack_holds_the_three_splits_with_identities_in_order(synthetic_root: Path, packed) -> None:
    path, summary = packed
    original = read_dataset("market1501", synthetic_root)
    splits = read_dataset("pack", path)
    assert splits.format == "pack" and splits.root == str(path)
    for split in ("train", "query", "gallery"):
        ours, theirs = splits.split(split), original.split(split)
        assert summary[split] == len(theirs) > 0
        assert [(s.pid, s.camid) for s in ours] == [(s.pid, s.camid) for s in theirs]
        assert all(s.path.startswith(f"{path}/{split}/") for s in ours)
    assert summary["bytes"] == path.stat().st_size


def test_a_pack_image_decodes_to_the_stored_encoding_of_the_original(synthetic_root: Path, packed) -> None:
    from PIL import Image

    path, _ = packed
    original = read_dataset("market1501", synthetic_root).query[3]
    sample = read_dataset("pack", path).query[3]
    image = decode_image(sample.path)
    with Image.open(io.BytesIO(encode_image(original.path, "webp", 80))) as img:
        expected = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    assert image.dtype == torch.uint8 and torch.equal(image, expected)
    assert image.shape == decode_image(original.path).shape


def test_manifest_of_a_pack_keeps_the_training_labels(synthetic_root: Path, packed) -> None:
    path, _ = packed
    ours = build_manifest(read_dataset("pack", path))
    theirs = build_manifest(read_dataset("market1501", synthetic_root))
    assert ours.train_labels == theirs.train_labels and ours.num_classes == theirs.num_classes
    assert ours.content_hash == build_manifest(read_dataset("pack", path)).content_hash
    assert ours.content_hash != theirs.content_hash  # other bytes, other data


def test_image_store_and_test_loader_read_the_pack(packed, tiny_config) -> None:
    from reid.data.image_store import ImageStore
    from reid.data.loaders import build_test_loader

    path, _ = packed
    manifest = build_manifest(read_dataset("pack", path))
    store = ImageStore.build(manifest.train, manifest.train_labels, (64, 32), num_threads=2)
    assert len(store) == len(manifest.train) and store.images.dtype == torch.uint8
    # Forked loader workers read the same pack through their own descriptor.
    tiny_config.data.num_workers = 2
    tiny_config.data.test_batch_size = 16
    batches = list(build_test_loader(manifest.query, tiny_config, "cpu"))
    assert sum(b.shape[0] for b in batches) == len(manifest.query)


def test_damaged_pack_and_missing_member_are_clear_errors(packed, tmp_path: Path) -> None:
    path, _ = packed
    cut = tmp_path / "cut.reidpack"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match="truncated|unreadable"):
        read_dataset("pack", cut)
    with pytest.raises(DatasetError, match="not found"):
        read_dataset("pack", tmp_path / "absent.reidpack")
    with pytest.raises(CorruptImageError, match="holds no image"):
        decode_image(f"{path}/query/nobody.jpg.webp")
    short = tmp_path / "short.reidpack"
    short.write_bytes(path.read_bytes()[:-100])  # the last image cut short
    last = read_dataset("pack", short).gallery[-1]
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(last.path)


def test_pack_script_refuses_a_pack_over_the_size_limit(synthetic_root: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import pack_market
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out = tmp_path / "p.reidpack"
    assert pack_market.main(["--root", str(synthetic_root), "--output", str(out), "--max-mib", "0.001"]) == 1
    assert not out.exists()
    assert pack_market.main(["--root", str(synthetic_root), "--output", str(out), "--quality", "50"]) == 0
    assert read_dataset("pack", out).query
