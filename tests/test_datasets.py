"""Dataset readers: the exact Market-1501 protocol numbers, VeRi-776, the folder layout, and errors
that name the offending path and say what layout was expected.

Folder data as users bring it, through ``reid prepare``: any consistent camera token, .webp and .bmp read
like JPEG, files of unsupported types reported by name, query identities absent from the gallery named."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from reid.data.datasets import read_dataset, statistics, statistics_table
from reid.errors import DatasetError

from conftest import app, folder_dataset, good_layout, params_file, prepare_folder, runner

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def touch(folder: Path, *names: str) -> None:
    """Files with a few bytes: the readers parse names only, they never decode."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"\xff\xd8" + name.encode())


def fake_market(root: Path) -> Path:
    touch(root / "bounding_box_train", "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_077419_03.jpg",
          "Thumbs.db", ".DS_Store", "._0002_c1s1_000451_03.jpg")
    touch(root / "query", "0001_c1s1_001051_00.jpg", "1488_c1s6_023021_00.jpg.jpg", "readme.txt")
    touch(root / "bounding_box_test", "-1_c1s1_000401_03.jpg", "0000_c1s1_000151_01.jpg", "0001_c2s1_000301_01.jpg",
          "1488_c2s3_065527_00.jpg.jpg", "-1_c4s6_022316_11.jpg.jpg")
    return root


# --- real Market-1501 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def market(market_root: Path):
    return read_dataset("market1501", market_root)


@pytest.mark.market
def test_market1501_protocol_statistics(market) -> None:
    assert statistics(market) == {
        "train": {"ids": 751, "images": 12936, "cameras": 6},
        "query": {"ids": 750, "images": 3368, "cameras": 6},
        "gallery": {"ids": 751, "images": 15913, "cameras": 6},  # 19,732 files minus 3,819 junk (-1)
    }
    assert sum(s.pid == 0 for s in market.gallery) == 2798  # distractors stay in the gallery
    assert not any(s.pid == 0 for s in market.train + market.query)


@pytest.mark.market
def test_market1501_keeps_the_jpg_jpg_files_and_drops_junk(market) -> None:
    id_1488 = [s for s in market.query if s.pid == 1488]
    assert len(id_1488) == 6 and all(s.path.endswith(".jpg.jpg") for s in id_1488)
    for split in (market.train, market.query, market.gallery):
        assert {s.camid for s in split} == {1, 2, 3, 4, 5, 6}
        assert all(s.pid >= 0 for s in split)
    assert all(os.path.isabs(s.path) for s in market.gallery[:50])


@pytest.mark.market
def test_market1501_is_sorted_by_file_name(market) -> None:
    for split in (market.train, market.query, market.gallery):
        names = [os.path.basename(s.path) for s in split]
        assert names == sorted(names)
    assert os.path.basename(market.query[0].path) == "0001_c1s1_001051_00.jpg"


# --- Market-format trees built here -----------------------------------------------------------------


def test_market_parsing_rules(tmp_path: Path) -> None:
    splits = read_dataset("market1501", fake_market(tmp_path / "m"))
    assert [(s.pid, s.camid) for s in splits.train] == [(2, 1), (2, 2), (7, 3)]  # Thumbs.db, hidden files ignored
    assert [(s.pid, s.camid) for s in splits.query] == [(1, 1), (1488, 1)]  # .jpg.jpg parsed
    assert [(s.pid, s.camid) for s in splits.gallery] == [(0, 1), (1, 2), (1488, 2)]  # -1 dropped, 0000 kept
    assert splits.format == "market1501" and splits.root == str(tmp_path / "m") and splits.name == "m"
    assert any("2 junk" in note for note in splits.notes)


def test_relative_root_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_market(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    splits = read_dataset("market1501", Path("m"))
    assert splits.train[0].path == str(tmp_path / "m" / "bounding_box_train" / "0002_c1s1_000451_03.jpg")


def test_unparsable_image_name_is_an_error_naming_the_file(tmp_path: Path) -> None:
    root = fake_market(tmp_path / "m")
    touch(root / "query", "IMG_0042.jpg")
    with pytest.raises(DatasetError) as err:
        read_dataset("market1501", root)
    message = str(err.value)
    assert str(root / "query" / "IMG_0042.jpg") in message
    assert "PPPP_cCsS_FFFFFF_BB.jpg" in message


def test_missing_root_names_the_path_the_layout_and_reid_synth(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "Market-1501-v15.09.15"
    with pytest.raises(DatasetError) as err:
        read_dataset("market1501", missing)
    message = str(err.value)
    assert str(missing) in message and "does not exist" in message
    assert "bounding_box_train" in message and "reid synth" in message and "data.root" in message


def test_missing_split_folder_is_named(tmp_path: Path) -> None:
    root = fake_market(tmp_path / "m")
    for f in (root / "query").iterdir():
        f.unlink()
    (root / "query").rmdir()
    with pytest.raises(DatasetError, match=r"missing folder\(s\) query") as err:
        read_dataset("market1501", root)
    assert "bounding_box_test" in str(err.value) and "reid synth" in str(err.value)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    root = fake_market(tmp_path / "m")
    for f in (root / "bounding_box_train").iterdir():
        if f.name.endswith(".jpg"):
            f.unlink()
    with pytest.raises(DatasetError, match="train split .* holds no usable images") as err:
        read_dataset("market1501", root)
    assert str(root / "bounding_box_train") in str(err.value)


def test_split_of_only_junk_is_an_error_that_says_so(tmp_path: Path) -> None:
    root = tmp_path / "m"
    touch(root / "bounding_box_train", "0002_c1s1_000451_03.jpg")
    touch(root / "query", "0001_c1s1_001051_00.jpg")
    touch(root / "bounding_box_test", "-1_c1s1_000401_03.jpg")
    with pytest.raises(DatasetError, match=r"1 of them junk with identity -1"):
        read_dataset("market1501", root)


def test_wrong_layout_suggests_the_right_format(tmp_path: Path) -> None:
    root = tmp_path / "VeRi"
    for folder in ("image_train", "image_query", "image_test"):
        touch(root / folder, "0002_c002_00030600_0.jpg")
    with pytest.raises(DatasetError, match="data.format=veri776"):
        read_dataset("market1501", root)


def test_dataset_one_folder_down_suggests_the_inner_root(tmp_path: Path) -> None:
    fake_market(tmp_path / "downloads" / "Market-1501-v15.09.15")
    with pytest.raises(DatasetError, match=re.escape(f"data.root={tmp_path / 'downloads' / 'Market-1501-v15.09.15'}")):
        read_dataset("market1501", tmp_path / "downloads")


def test_root_that_is_a_file_and_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        read_dataset("market1501", tmp_path / "file")
    with pytest.raises(DatasetError, match="unknown dataset format 'duke'"):
        read_dataset("duke", tmp_path)  # type: ignore[arg-type]


# --- VeRi-776 -------------------------------------------------------------------------------------


def test_veri776_names(tmp_path: Path) -> None:
    root = tmp_path / "VeRi"
    touch(root / "image_train", "0001_c001_00016450_0.jpg", "0001_c019_00017345_1.jpg", "0002_c002_00030600_0.jpg")
    touch(root / "image_query", "0002_c002_00030600_0.jpg")
    touch(root / "image_test", "0002_c003_00084280_0.jpg", "0003_c020_00015645_1.jpg", "Thumbs.db")
    splits = read_dataset("veri776", root)
    assert [(s.pid, s.camid) for s in splits.train] == [(1, 1), (1, 19), (2, 2)]
    assert [(s.pid, s.camid) for s in splits.gallery] == [(2, 3), (3, 20)]
    touch(root / "image_test", "0002_c1s1_000451_03.jpg")  # a Market name in a VeRi folder
    with pytest.raises(DatasetError, match="VVVV_cCCC_FFFFFFFF_N.jpg"):
        read_dataset("veri776", root)


# --- generic folder layout -----------------------------------------------------------------------


def fake_folder(root: Path) -> Path:
    touch(root / "train" / "bob", "cam1_a.jpg", "cam2_b.png")
    touch(root / "train" / "alice", "cam1_0001.jpg", "cam3_0002.jpeg", "notes.txt")
    touch(root / "query" / "zoe", "cam1_q.jpg")
    touch(root / "query" / "carol", "cam2_q.jpg")
    touch(root / "gallery" / "zoe", "cam2_g.jpg")
    touch(root / "gallery" / "carol", "cam3_g.jpg", "cam1_h.jpg")
    touch(root / "gallery" / "_distractors", "cam1_x.jpg")
    return root


def test_folder_layout_maps_names_to_ids_and_cameras(tmp_path: Path) -> None:
    splits = read_dataset("folder", fake_folder(tmp_path / "custom"))
    # identities in sorted order over all splits: alice=1, bob=2, carol=3, zoe=4; cameras cam1..cam3 = 1..3
    assert [(s.pid, s.camid) for s in splits.train] == [(1, 1), (1, 3), (2, 1), (2, 2)]
    assert [(s.pid, s.camid) for s in splits.query] == [(3, 2), (4, 1)]
    assert [(s.pid, s.camid) for s in splits.gallery] == [(0, 1), (3, 1), (3, 3), (4, 2)]
    assert splits.gallery[0].path.endswith(os.path.join("_distractors", "cam1_x.jpg"))
    assert splits.format == "folder"


def test_folder_layout_errors(tmp_path: Path) -> None:
    root = fake_folder(tmp_path / "a")
    touch(root / "query", "loose.jpg")
    with pytest.raises(DatasetError, match="one folder per identity") as err:
        read_dataset("folder", root)
    assert str(root / "query" / "loose.jpg") in str(err.value)

    root = fake_folder(tmp_path / "b")
    touch(root / "gallery" / "zoe", "nocamera.jpg")
    with pytest.raises(DatasetError, match="<camera>_<anything>"):
        read_dataset("folder", root)

    root = fake_folder(tmp_path / "c")
    touch(root / "query" / "_distractors", "cam1_y.jpg")
    with pytest.raises(DatasetError, match="only appear in the gallery"):
        read_dataset("folder", root)


def test_statistics_table_lists_every_split(tmp_path: Path) -> None:
    table = statistics_table(read_dataset("market1501", fake_market(tmp_path / "m")))
    rows = {line.split("|")[0].strip(): [int(x) for x in line.split("|")[1:]] for line in table.splitlines()
            if line.strip().startswith(("train", "query", "gallery"))}
    assert rows == {"train": [2, 3, 3], "query": [2, 2, 1], "gallery": [3, 3, 2]}
    assert "# ids" in table and "# cameras" in table


# --- folder data never seen before: camera tokens, image types, query identities ----------------------


def test_any_consistent_camera_token_is_a_camera(tmp_path: Path) -> None:
    layout = {
        "train": {f"t{i}": [f"cam{c}_{n}.jpg" for c in "AB" for n in range(2)] for i in range(4)},
        "query": {f"p{i}": ["camA_0.jpg"] for i in range(3)},
        "gallery": {f"p{i}": ["camB_0.jpg", "camB_1.jpg"] for i in range(3)},
    }
    result, _ = prepare_folder(tmp_path, layout)
    assert result.exit_code == 0, result.output
    assert "do not look like cameras" not in result.stderr and "warning" not in result.stderr, result.stderr
    assert "camA=1, camB=2" in result.stdout


def test_unsupported_image_types_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    from PIL import Image

    layout = good_layout()
    root = folder_dataset(tmp_path / "ds", layout)
    Image.new("RGB", (16, 32)).save(root / "train" / "t0" / "cam1_9.gif")
    result = runner.invoke(app(), ["prepare", "--params", str(params_file(tmp_path, root))])
    assert result.exit_code == 0, result.output
    assert "1 image file(s) of an unsupported type (.gif) were ignored (t0/cam1_9.gif)" in result.stderr
    for path in (root / "query").rglob("*.jpg"):
        Image.open(path).save(path.with_suffix(".gif"))
        path.unlink()
    result = runner.invoke(app(), ["prepare", "--params", str(params_file(tmp_path, root))])
    assert result.exit_code == 2 and "no usable images" in result.stderr
    assert "3 image file(s) of an unsupported type (.gif)" in result.stderr and "convert them" in result.stderr
    assert "p0/cam1_0.gif, p1/cam1_0.gif, p2/cam1_0.gif" in result.stderr  # the ignored files are named


def test_webp_and_bmp_images_are_read_like_jpeg(tmp_path: Path) -> None:
    """Pillow decodes them, so a folder of .webp or .bmp crops is a dataset, not a list of ignored files."""
    from PIL import Image

    from reid.data.datasets import read_dataset
    from reid.data.images import decode_image

    root = folder_dataset(tmp_path / "ds", good_layout())
    converted = []
    for index, path in enumerate(sorted((root / "query").rglob("*.jpg"))):
        target = path.with_suffix(".webp" if index % 2 else ".bmp")
        Image.open(path).save(target)
        path.unlink()
        converted.append(str(target))
    splits = read_dataset("folder", root)
    assert sorted(s.path for s in splits.query) == sorted(converted) and not splits.warnings
    assert all(decode_image(p).shape[0] == 3 for p in converted)


def test_prepare_names_query_identities_absent_from_the_gallery(tmp_path: Path) -> None:
    layout = good_layout(gallery={f"p{i}": ["cam2_0.jpg"] for i in range(2)})  # p2 has no gallery image
    result, root = prepare_folder(tmp_path, layout)
    assert result.exit_code == 0, result.output
    assert "1 query identity has no image in the gallery" in result.stderr
    assert str(root / "query" / "p2" / "cam1_0.jpg") in result.stderr
