"""Readers of the benchmarks whose layout is more than three folders of named files.

:func:`reid.data.datasets.read_dataset` stays the one entry point; it hands these formats here:

* ``cuhk03``: CUHK03-NP, the new 767/700 protocol (Zhong et al., CVPR 2017). The release holds one
  Market-style tree per box source, ``detected/`` and ``labeled/`` (``data.cuhk03_variant``), each with
  ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` and files ``PPPP_cC_N.png`` (identity,
  camera 1 or 2 of the identity's camera pair, running number).
* ``msmt17``: MSMT17. The split is given by list files beside the image folders,
  ``list_train.txt`` / ``list_val.txt`` (paths under ``train/``) and ``list_query.txt`` /
  ``list_gallery.txt`` (paths under ``test/``), one ``<id folder>/<file name> <label>`` per line, e.g.
  ``0000/0000_000_01_0303morning_0015_0.jpg 0``; the camera (1-15) is the third ``_`` field of the
  name. V1 names the image folders ``train/`` and ``test/``; V2 (faces blurred) ``mask_train_v2/`` and
  ``mask_test_v2/``, with the same lists. The official training set is train + val (32,621 images);
  ``data.msmt17_use_val=false`` trains on ``list_train.txt`` alone (30,248).
* ``vehicleid``: PKU VehicleID. ``image/<name>.jpg`` and ``train_test_split/train_list.txt`` plus
  ``test_list_800.txt`` / ``test_list_1600.txt`` / ``test_list_2400.txt`` (``data.vehicleid_test_size``),
  one ``<name> <vehicle id>`` per line. There are no camera ids, and the protocol has no fixed
  query/gallery split: one random image per vehicle forms the gallery, the others are queries,
  averaged over 10 draws (:mod:`reid.evaluation.protocols`). The manifest stores draw 0 as its
  query/gallery split, so everything that takes a fixed split still works, and records the protocol.

The list labels of MSMT17 and VehicleID become ``pid = label + 1``: identity 0 keeps meaning
"distractor" everywhere in the toolkit, and MSMT17's labels start at 0. The readers never decode an
image; a listed file that does not exist, a malformed line or a file name that does not parse is an
error naming the list file and line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from reid.data.layouts import CUHK03, EXT, MARKET_STYLE_FOLDERS, SYNTH_HINT, ignored_warning, read_named_split
from reid.data.samples import NO_CAMERA, DatasetSplits, Sample
from reid.errors import DatasetError

CUHK03_VARIANTS: tuple[str, ...] = ("detected", "labeled")
VEHICLEID_TEST_SIZES: tuple[int, ...] = (800, 1600, 2400)
MSMT17_LISTS: dict[str, str] = {"train": "list_train.txt", "val": "list_val.txt",
                                "query": "list_query.txt", "gallery": "list_gallery.txt"}
MSMT17_FOLDERS: dict[str, tuple[str, str]] = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}

# 0000_000_01_0303morning_0015_0.jpg: identity, index, camera, date + time of day, frame, box.
_MSMT17_NAME = re.compile(rf"^(\d+)_\d+_(\d+)_[0-9A-Za-z]+_\d+_\d+{EXT}$", re.IGNORECASE)
_MSMT17_EXAMPLE = "0000/0000_000_01_0303morning_0015_0.jpg 0"
_VEHICLEID_NAME = re.compile(r"^[0-9A-Za-z_-]+$")


@dataclass
class ListedDataset:
    """Splits read from list files, and where each sample was listed (to name the line of a missing file)."""

    splits: DatasetSplits
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)  # sample path -> (list file, line)


def read_benchmark(format: str, root: str, *, cuhk03_variant: str = "detected", msmt17_use_val: bool = True,
                   vehicleid_test_size: int = 800) -> DatasetSplits:
    """Read ``root`` (absolute) as ``cuhk03``, ``msmt17`` or ``vehicleid``."""
    if format == "cuhk03":
        return read_cuhk03(root, cuhk03_variant)
    if format == "msmt17":
        return require_files(parse_msmt17_lists(root, msmt17_use_val))
    if format == "vehicleid":
        return require_files(parse_vehicleid_lists(root, vehicleid_test_size))
    raise DatasetError(f"no list reader for format {format!r}")


# -- shared helpers ------------------------------------------------------------------------------------
def _require_root(root: str, expected: str) -> None:
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is a file, not a folder"
        raise DatasetError(f"dataset root {root} {what}. Expected {expected}. Set data.root in params.yaml "
                           f"(or `reid prepare --root PATH`) to your copy; {SYNTH_HINT}.")


def _holds(root: str) -> str:
    try:
        present = sorted(os.listdir(root))
    except OSError:
        return "nothing readable"
    return ", ".join(present[:12]) + (" ..." if len(present) > 12 else "") if present else "nothing"


def _find_entry(root: str, name: str) -> str | None:
    """The entry of ``root`` called ``name``, matched case-insensitively (copies differ: mask_train_V2)."""
    try:
        entries = os.listdir(root)
    except OSError:
        return None
    if name in entries:
        return name
    lowered = [e for e in sorted(entries) if e.lower() == name.lower()]
    return lowered[0] if lowered else None


def _read_lines(path: str, expected: str) -> list[tuple[int, list[str]]]:
    """``(line number, whitespace-split fields)`` of every non-blank line of a list file."""
    if not os.path.isfile(path):
        raise DatasetError(f"list file {path} is missing; expected {expected}. Copy the complete dataset "
                           f"(the split is defined by its list files).")
    try:
        with open(path, encoding="utf-8") as fh:
            return [(no, line.split()) for no, line in enumerate(fh, start=1) if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read list file {path}: {exc}") from None


def _label(text: str, list_path: str, no: int, example: str) -> int:
    try:
        label = int(text)
    except ValueError:
        label = -1
    if label < 0:
        raise DatasetError(f"{list_path}:{no}: the label {text!r} is not a non-negative integer "
                           f"(lines look like {example!r})")
    return label


def require_files(listed: ListedDataset) -> DatasetSplits:
    """The splits, after checking that every listed image exists; else an error naming list file and line.

    Each folder is listed once (a set lookup per sample) instead of one ``stat`` per image, which
    keeps MSMT17's 126,441 files at well under a second.
    """
    contents: dict[str, set[str]] = {}
    missing: list[str] = []
    splits = listed.splits
    for name in ("train", "query", "gallery"):
        for sample in splits.split(name):
            folder, file = os.path.split(sample.path)
            names = contents.get(folder)
            if names is None:
                try:
                    names = set(os.listdir(folder))
                except OSError:
                    names = set()
                contents[folder] = names
            if file not in names:
                missing.append(sample.path)
    if missing:
        first = missing[0]
        where = ":".join(map(str, listed.origin[first])) if first in listed.origin else "a list file"
        raise DatasetError(f"{first} (listed in {where}) does not exist"
                           f"{f', and {len(missing) - 1} more listed images are missing' if len(missing) > 1 else ''}; "
                           f"copy the complete dataset or point data.root at it")
    return splits


# -- CUHK03-NP -----------------------------------------------------------------------------------------
def read_cuhk03(root: str, variant: str = "detected") -> DatasetSplits:
    """CUHK03-NP: ``root/<variant>/{bounding_box_train,query,bounding_box_test}/PPPP_cC_N.png``."""
    if variant not in CUHK03_VARIANTS:
        raise DatasetError(f"unknown CUHK03 variant {variant!r} (data.cuhk03_variant); expected detected or labeled")
    expected = ("the CUHK03-NP layout: detected/ and labeled/ inside the root, each holding bounding_box_train/, "
                f"query/, bounding_box_test/ with files named {CUHK03.pattern_text} (e.g. {CUHK03.example})")
    _require_root(root, expected)
    base = os.path.join(root, variant)
    if not os.path.isdir(base):
        deeper = ""
        if set(MARKET_STYLE_FOLDERS.values()) <= set(os.listdir(root)):
            deeper = (f" {root} itself holds bounding_box_train/: set data.root to the folder above it (the one "
                      f"holding detected/ and labeled/).")
        raise DatasetError(f"{root} has no {variant}/ folder (data.cuhk03_variant={variant}; it holds: "
                           f"{_holds(root)}). Expected {expected}.{deeper}")
    missing = [f for f in MARKET_STYLE_FOLDERS.values() if not os.path.isdir(os.path.join(base, f))]
    if missing:
        raise DatasetError(f"{base} is not a CUHK03-NP tree: missing folder(s) {', '.join(missing)} "
                           f"(it holds: {_holds(base)}). Expected {expected}.")
    splits: dict[str, list[Sample]] = {}
    notes = [f"CUHK03-NP {variant} boxes (data.cuhk03_variant)"]
    warnings: list[str] = []
    for split, folder in CUHK03.folders.items():
        samples, junk, ignored = read_named_split(CUHK03, base, split, folder, "cuhk03")
        splits[split] = samples
        if junk:
            notes.append(f"{split}: dropped {junk} junk image(s) of identity -1")
        if ignored:
            warnings.append(ignored_warning(f"{split} ({folder}/)", ignored))
    return DatasetSplits(name=f"{os.path.basename(root) or 'cuhk03'}-{variant}", train=splits["train"],
                         query=splits["query"], gallery=splits["gallery"], format="cuhk03", root=root, notes=notes,
                         warnings=warnings)


# -- MSMT17 --------------------------------------------------------------------------------------------
def _msmt17_version(root: str) -> tuple[str, str, str]:
    """``(version, train folder, test folder)`` as found in ``root``."""
    for version, (train, test) in MSMT17_FOLDERS.items():
        found_train, found_test = _find_entry(root, train), _find_entry(root, test)
        if found_train and found_test and os.path.isdir(os.path.join(root, found_train)) \
                and os.path.isdir(os.path.join(root, found_test)):
            return version, found_train, found_test
    raise DatasetError(f"{root} is not in the MSMT17 layout: no train/ + test/ (V1) nor mask_train_v2/ + "
                       f"mask_test_v2/ (V2) image folders (it holds: {_holds(root)}). Expected those folders and "
                       f"{', '.join(MSMT17_LISTS.values())} beside them; see docs/DATASETS.md.")


def parse_msmt17_lists(root: str, use_val: bool = True) -> ListedDataset:
    """The MSMT17 splits as its list files define them (the images themselves are not looked at).

    ``use_val`` adds ``list_val.txt`` (images of the same 1,041 training identities) to the training
    set, which makes the official 32,621-image training set.
    """
    expected = (f"MSMT17: train/ and test/ (V1) or mask_train_v2/ and mask_test_v2/ (V2) with "
                f"{', '.join(MSMT17_LISTS.values())} beside them")
    _require_root(root, expected)
    version, train_dir, test_dir = _msmt17_version(root)
    origin: dict[str, tuple[str, int]] = {}
    out: dict[str, list[Sample]] = {"train": [], "query": [], "gallery": []}
    parts = [("train", "train", train_dir)] + ([("val", "train", train_dir)] if use_val else []) + \
            [("query", "query", test_dir), ("gallery", "gallery", test_dir)]
    for list_key, split, folder in parts:
        list_path = os.path.join(root, MSMT17_LISTS[list_key])
        base = os.path.join(root, folder) + os.sep
        samples = out[split]
        # 126,441 lines: the loop body stays lean; messages are only formatted on an error.
        for no, fields in _read_lines(list_path, f"lines like {_MSMT17_EXAMPLE!r}"):
            if len(fields) != 2:
                raise DatasetError(f"{list_path}:{no}: expected '<id folder>/<file name> <label>' "
                                   f"(e.g. {_MSMT17_EXAMPLE!r}), got {' '.join(fields)!r}")
            rel, text = fields
            match = _MSMT17_NAME.match(rel.rpartition("/")[2])
            if match is None:
                raise DatasetError(f"{list_path}:{no}: {rel!r} does not follow the MSMT17 naming "
                                   f"PPPP_III_CC_<date><time>_FFFF_N.jpg (e.g. 0000_000_01_0303morning_0015_0.jpg); "
                                   f"the camera is the third field")
            camid = int(match.group(2))
            if camid < 1:
                raise DatasetError(f"{list_path}:{no}: camera {camid} in {rel!r} is out of range "
                                   f"(MSMT17 cameras are 1-15)")
            path = base + (rel if os.sep == "/" else rel.replace("/", os.sep))
            origin[path] = (list_path, no)
            samples.append(Sample(path, _label(text, list_path, no, _MSMT17_EXAMPLE) + 1, camid))
    for split, samples in out.items():
        if not samples:
            raise DatasetError(f"MSMT17 {split} split is empty: its list file in {root} has no lines; "
                               f"copy the complete dataset")
        samples.sort(key=lambda s: s.path)
    notes = [f"MSMT17 {version} ({train_dir}/, {test_dir}/); identities are the list labels + 1",
             "training set: list_train.txt + list_val.txt (the official 32,621-image set; data.msmt17_use_val)"
             if use_val else "training set: list_train.txt only (data.msmt17_use_val=false)"]
    splits = DatasetSplits(name=os.path.basename(root) or "msmt17", train=out["train"], query=out["query"],
                           gallery=out["gallery"], format="msmt17", root=root, notes=notes)
    return ListedDataset(splits, origin)


# -- VehicleID -----------------------------------------------------------------------------------------
def one_per_identity_draws(pids: np.ndarray, num_draws: int, seed: int) -> list[np.ndarray]:
    """For each of ``num_draws`` draws, the sorted indices of one randomly chosen item per identity.

    The VehicleID protocol's gallery: the remaining items are the queries. Seeded with ``seed``, so
    the reader's split (draw 0) and the evaluator's draws agree when they see the items in the same
    order (both sort the test images by path).
    """
    pids = np.asarray(pids)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(num_draws):
        order = rng.permutation(len(pids))
        _, first = np.unique(pids[order], return_index=True)
        draws.append(np.sort(order[first]))
    return draws


def parse_vehicleid_lists(root: str, test_size: int = 800, seed: int = 0) -> ListedDataset:
    """VehicleID as its ``train_test_split`` lists define it; query/gallery are draw 0 (``seed``) of the protocol."""
    if test_size not in VEHICLEID_TEST_SIZES:
        raise DatasetError(f"VehicleID test size {test_size} is not one of {', '.join(map(str, VEHICLEID_TEST_SIZES))} "
                           f"(data.vehicleid_test_size)")
    test_list = f"test_list_{test_size}.txt"
    expected = f"VehicleID: image/ (the .jpg files) and train_test_split/ holding train_list.txt and {test_list}"
    _require_root(root, expected)
    image_dir = os.path.join(root, "image")
    split_dir = os.path.join(root, "train_test_split")
    missing = [f"{d}/" for d in ("image", "train_test_split") if not os.path.isdir(os.path.join(root, d))]
    if missing:
        raise DatasetError(f"{root} is not in the VehicleID layout: missing {', '.join(missing)} "
                           f"(it holds: {_holds(root)}). Expected {expected}; see docs/DATASETS.md.")
    origin: dict[str, tuple[str, int]] = {}
    found: dict[str, list[Sample]] = {}
    example = "0000004 1"
    for split, name in (("train", "train_list.txt"), ("test", test_list)):
        list_path = os.path.join(split_dir, name)
        samples = []
        base = image_dir + os.sep
        for no, fields in _read_lines(list_path, f"lines like {example!r} (image name without .jpg, vehicle id)"):
            if len(fields) != 2 or not _VEHICLEID_NAME.match(fields[0]):
                raise DatasetError(f"{list_path}:{no}: expected '<image name> <vehicle id>' (e.g. {example!r}), "
                                   f"got {' '.join(fields)!r}")
            path = base + fields[0] + ".jpg"
            origin[path] = (list_path, no)
            samples.append(Sample(path, _label(fields[1], list_path, no, example) + 1, NO_CAMERA))
        if not samples:
            raise DatasetError(f"{list_path} lists no images; copy the complete dataset")
        found[split] = sorted(samples, key=lambda s: s.path)
    test = found["test"]
    gallery_idx = one_per_identity_draws(np.array([s.pid for s in test]), 1, seed)[0]
    is_gallery = np.zeros(len(test), dtype=bool)
    is_gallery[gallery_idx] = True
    query = [s for s, g in zip(test, is_gallery) if not g]
    gallery = [s for s, g in zip(test, is_gallery) if g]
    if not query:
        raise DatasetError(f"{os.path.join(split_dir, test_list)}: every vehicle has a single image, so the "
                           f"protocol (one gallery image per vehicle, the rest queries) leaves no query")
    notes = [f"VehicleID test set {test_list} ({len(test)} images); no camera ids: evaluation counts every "
             f"match (no same-camera rule)",
             "query/gallery: one random gallery image per vehicle; `reid evaluate` re-draws it "
             "eval.gallery_draws times and averages; identities are the vehicle ids + 1"]
    splits = DatasetSplits(name=f"{os.path.basename(root) or 'vehicleid'}-{test_size}", train=found["train"],
                           query=query, gallery=gallery, format="vehicleid", root=root, notes=notes,
                           has_cameras=False, protocol="vehicleid")
    return ListedDataset(splits, origin)
