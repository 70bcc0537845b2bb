"""DukeMTMC-reID, CUHK03-NP, MSMT17 and VehicleID readers, and data without camera ids.

Every layout is generated here with the real naming scheme and folder structure and the official
counts (no image of the real datasets is shipped; the readers parse names and lists, they never
decode, so the files are empty). DukeMTMC and CUHK03-NP are trees of named files, generated in full.
MSMT17 (126,441 images) and VehicleID (221,567) would take minutes of file creation on a busy CPU:
their list files are generated with the full official counts and parsed, and a small tree with the
images present runs the whole reader (existence checks, manifest) end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from reid.data.datasets import read_dataset, statistics
from reid.data.manifest import build_manifest, load_manifest, write_manifest
from reid.data.readers import one_per_identity_draws, parse_msmt17_lists, parse_vehicleid_lists
from reid.data.samples import NO_CAMERA
from reid.errors import DatasetError


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal positive counts (the first ones one larger)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def create(paths: list[str]) -> None:
    """Empty files (folders created once each)."""
    for folder in sorted({os.path.dirname(p) for p in paths}):
        os.makedirs(folder, exist_ok=True)
    for p in paths:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))


@pytest.fixture(scope="module")
def big_tmp(tmp_path_factory):
    """A folder for the full-size trees: in RAM (/dev/shm) where there is one, because creating tens of
    thousands of files on a busy disk takes several times longer; else pytest's temporary folder."""
    if not (os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)):
        yield tmp_path_factory.mktemp("big")
        return
    folder = tempfile.mkdtemp(prefix="reid-test-readers-", dir="/dev/shm")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def stats_of(splits) -> dict[str, tuple[int, int, int]]:
    return {k: (v["ids"], v["images"], v["cameras"]) for k, v in statistics(splits).items()}


# --- DukeMTMC-reID ----------------------------------------------------------------------------------
DUKE = {"train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661)}  # ids, images; 8 cameras


@pytest.fixture(scope="module")
def duke_root(big_tmp) -> Path:
    """``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with ``PPPP_cC_fFFFFFFF.jpg``: the 702
    test identities in query and gallery, 408 gallery-only distractor identities."""
    root = big_tmp / "DukeMTMC-reID"
    train_ids = [2 * i + 1 for i in range(702)]          # Duke ids are sparse, up to 7140
    test_ids = [2 * i + 2 for i in range(702)]
    distractors = [5000 + i for i in range(408)]
    paths = []
    for folder, ids, total in (("bounding_box_train", train_ids, 16522), ("query", test_ids, 2228),
                               ("bounding_box_test", test_ids + distractors, 17661)):
        k = 0
        for pid, n in zip(ids, spread(total, len(ids))):
            for _ in range(n):
                paths.append(str(root / folder / f"{pid:04d}_c{k % 8 + 1}_f{46182 + k:07d}.jpg"))
                k += 1
    create(paths)
    return root


def test_dukemtmc_official_statistics(duke_root):
    splits = read_dataset("dukemtmc", duke_root)
    assert stats_of(splits) == {k: (ids, n, 8) for k, (ids, n) in DUKE.items()}
    assert splits.has_cameras and splits.protocol == "standard"


def test_dukemtmc_malformed_name_is_named(tmp_path):
    for folder, name in (("bounding_box_train", "0001_c2_f0046182.jpg"), ("query", "0002_c1_f0000001.jpg"),
                         ("bounding_box_test", "0002_c3_f0000002.jpg")):
        create([str(tmp_path / folder / name)])
    create([str(tmp_path / "bounding_box_test" / "0002_c1s1_000151_01.jpg")])  # a Market name in a Duke tree
    with pytest.raises(DatasetError, match=r"bounding_box_test/0002_c1s1_000151_01\.jpg.*PPPP_cC_fFFFFFFF"):
        read_dataset("dukemtmc", tmp_path)


# --- CUHK03-NP --------------------------------------------------------------------------------------
CUHK03 = {"detected": {"train": (767, 7365), "query": (700, 1400), "gallery": (700, 5332)},
          "labeled": {"train": (767, 7368), "query": (700, 1400), "gallery": (700, 5328)}}


def make_cuhk03(root: Path, variant: str, counts: dict[str, tuple[int, int]]) -> None:
    """``<variant>/{bounding_box_train,query,bounding_box_test}/PPPP_cC_N.png``: train identities first,
    then the test identities (in query and gallery), cameras 1 and 2 of each identity's pair."""
    paths = []
    train_ids = list(range(1, counts["train"][0] + 1))
    test_ids = list(range(len(train_ids) + 1, len(train_ids) + 1 + counts["query"][0]))
    for folder, split, ids in (("bounding_box_train", "train", train_ids), ("query", "query", test_ids),
                               ("bounding_box_test", "gallery", test_ids)):
        for pid, n in zip(ids, spread(counts[split][1], len(ids))):
            paths += [str(root / variant / folder / f"{pid:04d}_c{j % 2 + 1}_{j + 1}.png") for j in range(n)]
    create(paths)


@pytest.fixture(scope="module")
def cuhk03_root(big_tmp) -> Path:
    root = big_tmp / "cuhk03-np"
    for variant, counts in CUHK03.items():
        make_cuhk03(root, variant, counts)
    return root


@pytest.mark.parametrize("variant", ["detected", "labeled"])
def test_cuhk03_np_official_statistics(cuhk03_root, variant):
    splits = read_dataset("cuhk03", cuhk03_root, cuhk03_variant=variant)
    assert stats_of(splits) == {k: (ids, n, 2) for k, (ids, n) in CUHK03[variant].items()}


def test_cuhk03_missing_variant_and_bad_name(tmp_path):
    make_cuhk03(tmp_path, "detected", {"train": (3, 6), "query": (2, 4), "gallery": (2, 4)})
    assert stats_of(read_dataset("cuhk03", tmp_path))["gallery"] == (2, 4, 2)
    with pytest.raises(DatasetError, match=r"no labeled/ folder.*cuhk03_variant=labeled"):
        read_dataset("cuhk03", tmp_path, cuhk03_variant="labeled")
    with pytest.raises(DatasetError, match=r"set data.root to the folder above"):
        read_dataset("cuhk03", tmp_path / "detected")
    create([str(tmp_path / "detected" / "query" / "0001_c3_1.png")])  # cameras are 1 or 2
    with pytest.raises(DatasetError, match=r"query/0001_c3_1\.png.*CUHK03-NP pattern"):
        read_dataset("cuhk03", tmp_path)


# --- MSMT17 -----------------------------------------------------------------------------------------
TIMES = ("morning", "noon", "afternoon")


def msmt17_lines(num_ids: int, total: int, first_index: int = 0) -> list[str]:
    """``<id folder>/<name> <label>`` lines, cameras 1-15 cycling over the images."""
    lines, k = [], 0
    for label, n in enumerate(spread(total, num_ids)):
        for j in range(n):
            name = f"{label:04d}_{first_index + j:03d}_{k % 15 + 1:02d}_0303{TIMES[k % 3]}_{k % 9000:04d}_{j % 3}.jpg"
            lines.append(f"{label:04d}/{name} {label}")
            k += 1
    return lines


def write_msmt17_lists(root: Path, sizes: dict[str, tuple[int, int]], train_dir="train", test_dir="test") -> dict:
    root.mkdir(parents=True, exist_ok=True)
    (root / train_dir).mkdir(exist_ok=True)
    (root / test_dir).mkdir(exist_ok=True)
    lists = {"train": msmt17_lines(*sizes["train"]),
             "val": msmt17_lines(*sizes["val"], first_index=500),  # val: more images of the training ids
             "query": msmt17_lines(*sizes["query"]),
             "gallery": msmt17_lines(*sizes["gallery"], first_index=100)}
    for key, lines in lists.items():
        (root / f"list_{key}.txt").write_text("\n".join(lines) + "\n")
    return lists


def test_msmt17_official_statistics_from_full_lists(tmp_path):
    write_msmt17_lists(tmp_path, {"train": (1041, 30248), "val": (1041, 2373),
                                  "query": (3060, 11659), "gallery": (3060, 82161)})
    with_val = parse_msmt17_lists(str(tmp_path), use_val=True).splits
    assert stats_of(with_val) == {"train": (1041, 32621, 15), "query": (3060, 11659, 15), "gallery": (3060, 82161, 15)}
    from_val = [s for s in with_val.train if int(os.path.basename(s.path).split("_")[1]) >= 500]
    assert len(from_val) == 2373  # list_val.txt's images (index field 500+) joined the training set
    assert min(s.pid for s in with_val.query) == 1  # labels start at 0; pid 0 stays "distractor"
    assert with_val.train[0].path.startswith(str(tmp_path / "train" / "0000") + os.sep)


@pytest.mark.parametrize("train_dir,test_dir", [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt17_reads_v1_and_v2_trees_end_to_end(tmp_path, train_dir, test_dir):
    lists = write_msmt17_lists(tmp_path, {"train": (6, 30), "val": (6, 6), "query": (4, 8), "gallery": (4, 20)},
                               train_dir, test_dir)
    paths = [str(tmp_path / train_dir / line.split()[0]) for key in ("train", "val") for line in lists[key]]
    paths += [str(tmp_path / test_dir / line.split()[0]) for key in ("query", "gallery") for line in lists[key]]
    create(paths)
    splits = read_dataset("msmt17", tmp_path)
    assert stats_of(splits) == {"train": (6, 36, 15), "query": (4, 8, 8), "gallery": (4, 20, 15)}
    assert len(read_dataset("msmt17", tmp_path, msmt17_use_val=False).train) == 30
    manifest = build_manifest(splits)
    assert manifest.has_cameras and manifest.statistics["train"]["images"] == 36
    # A listed image that is missing is named with its list file and line.
    os.remove(paths[3])
    with pytest.raises(DatasetError, match=rf"{paths[3]} \(listed in .*list_train\.txt:4\) does not exist"):
        read_dataset("msmt17", tmp_path)


def test_msmt17_malformed_line_and_missing_list(tmp_path):
    write_msmt17_lists(tmp_path, {"train": (2, 4), "val": (2, 2), "query": (2, 2), "gallery": (2, 4)})
    text = (tmp_path / "list_gallery.txt").read_text().splitlines()
    text[2] = "0001/0001_00x_01.jpg 1"  # no camera field where MSMT17 has it
    (tmp_path / "list_gallery.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=r"list_gallery\.txt:3: '0001/0001_00x_01\.jpg' does not follow"):
        parse_msmt17_lists(str(tmp_path))
    (tmp_path / "list_val.txt").unlink()
    with pytest.raises(DatasetError, match=r"list file .*list_val\.txt is missing"):
        read_dataset("msmt17", tmp_path)
    (tmp_path / "test").rmdir()
    with pytest.raises(DatasetError, match=r"not in the MSMT17 layout: no train/ \+ test/"):
        read_dataset("msmt17", tmp_path)


# --- VehicleID --------------------------------------------------------------------------------------
VEHICLEID = {"train": (13164, 113346), 800: (800, 7332), 1600: (1600, 12995), 2400: (2400, 20038)}


def write_vehicleid_lists(root: Path, sizes: dict) -> dict[str, list[str]]:
    """``train_test_split/{train_list,test_list_N}.txt`` with ``<7-digit image name> <vehicle id>`` lines."""
    (root / "image").mkdir(parents=True, exist_ok=True)
    (root / "train_test_split").mkdir(exist_ok=True)
    lists, image, vid = {}, 0, 1
    for key, (num_ids, total) in sizes.items():
        lines = []
        for n in spread(total, num_ids):
            lines += [f"{image + j:07d} {vid}" for j in range(n)]
            image += n
            vid += 1
        name = "train_list.txt" if key == "train" else f"test_list_{key}.txt"
        (root / "train_test_split" / name).write_text("\n".join(lines) + "\n")
        lists[key] = lines
    return lists


@pytest.fixture(scope="module")
def vehicleid_lists(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("VehicleID_V1.0")
    write_vehicleid_lists(root, VEHICLEID)
    return root


@pytest.mark.parametrize("size", [800, 1600, 2400])
def test_vehicleid_official_statistics_from_full_lists(vehicleid_lists, size):
    splits = parse_vehicleid_lists(str(vehicleid_lists), size).splits
    ids, images = VEHICLEID[size]
    # The protocol's split: one gallery image per vehicle, the rest queries; no cameras at all.
    assert stats_of(splits) == {"train": (13164, 113346, 0), "query": (ids, images - ids, 0), "gallery": (ids, ids, 0)}
    assert not splits.has_cameras and splits.protocol == "vehicleid"
    assert {s.camid for s in splits.gallery} == {NO_CAMERA}


def test_vehicleid_end_to_end_manifest_records_no_cameras(tmp_path):
    lists = write_vehicleid_lists(tmp_path, {"train": (5, 20), 800: (4, 13)})
    create([str(tmp_path / "image" / f"{line.split()[0]}.jpg") for lines in lists.values() for line in lines])
    splits = read_dataset("vehicleid", tmp_path, vehicleid_test_size=800)
    test = sorted(splits.query + splits.gallery, key=lambda s: s.path)
    expected = one_per_identity_draws(np.array([s.pid for s in test]), 1, seed=0)[0]
    assert [s.path for s in splits.gallery] == [test[i].path for i in expected]  # draw 0 is the stored split
    path = write_manifest(build_manifest(splits), tmp_path / "manifest.json")
    manifest = load_manifest(path)
    assert (manifest.has_cameras, manifest.protocol) == (False, "vehicleid")
    assert manifest.statistics["query"] == {"ids": 4, "images": 9, "cameras": 0}
    with pytest.raises(DatasetError, match=r"test_list_1600\.txt is missing"):
        read_dataset("vehicleid", tmp_path, vehicleid_test_size=1600)
    os.remove(tmp_path / "image" / "0000020.jpg")  # first image of the test list
    with pytest.raises(DatasetError, match=r"0000020\.jpg \(listed in .*test_list_800\.txt:1\) does not exist"):
        read_dataset("vehicleid", tmp_path)
    (tmp_path / "train_test_split" / "train_list.txt").write_text("0000001 1\n0000002\n")
    with pytest.raises(DatasetError, match=r"train_list\.txt:2: expected '<image name> <vehicle id>'"):
        read_dataset("vehicleid", tmp_path)


# --- data without camera ids ------------------------------------------------------------------------
def make_folder(root: Path, names: dict[str, dict[str, list[str]]]) -> None:
    create([str(root / split / ident / n) for split, ids in names.items() for ident, ns in ids.items() for n in ns])


def test_folder_without_cameras(tmp_path):
    make_folder(tmp_path, {"train": {"alice": ["0001.jpg", "0002.jpg"]},
                           "query": {"carol": ["front.jpg"]}, "gallery": {"carol": ["back.jpg"], "dave": ["x.jpg"]}})
    with pytest.raises(DatasetError, match=r"alice/0001\.jpg: the file name must start with its camera"):
        read_dataset("folder", tmp_path)
    splits = read_dataset("folder", tmp_path, cameras="none")
    assert not splits.has_cameras
    assert {s.camid for name in ("train", "query", "gallery") for s in splits.split(name)} == {NO_CAMERA}
    assert stats_of(splits)["gallery"] == (2, 2, 0)
    assert any("data.cameras=none" in n for n in splits.notes)
    manifest = build_manifest(splits)
    assert not manifest.has_cameras and manifest.protocol == "standard"


def test_named_layout_can_declare_no_cameras(duke_root):
    splits = read_dataset("dukemtmc", duke_root, cameras="none")
    assert not splits.has_cameras and stats_of(splits)["query"] == (702, 2228, 0)


def test_older_manifest_without_camera_fields_still_loads(tmp_path):
    make_folder(tmp_path / "data", {"train": {"a": ["c1_1.jpg", "c2_1.jpg"]}, "query": {"b": ["c1_2.jpg"]},
                                    "gallery": {"b": ["c2_3.jpg"]}})
    manifest = build_manifest(read_dataset("folder", tmp_path / "data"))
    raw = json.loads(manifest.model_dump_json())
    del raw["has_cameras"], raw["protocol"]  # what `reid prepare` wrote before these fields existed
    (tmp_path / "old.json").write_text(json.dumps(raw))
    old = load_manifest(tmp_path / "old.json")
    assert old.has_cameras and old.protocol == "standard" and old.content_hash == manifest.content_hash
