"""Read a dataset folder into train / query / gallery samples, and describe it.

The layouts understood are (see docs/DATASETS.md for examples):

* ``market1501``: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with file names
  ``PPPP_cCsS_FFFFFF_BB.jpg``. Identity ``-1`` (junk detections) is dropped at load, as every
  reference evaluator does; identity ``0000`` (distractors) is kept as gallery negatives. The
  extension may repeat (``.jpg.jpg``): 24 files of the original release are named that way, six of
  them the query images of id 1488, and a parser anchored on a single ``.jpg`` silently loses them.
* ``veri776``: ``image_train/``, ``image_query/``, ``image_test/`` with ``VVVV_cCCC_FFFFFFFF_N.jpg``.
* ``dukemtmc``: DukeMTMC-reID, Market's folders with ``PPPP_cC_fFFFFFFF.jpg``.
* ``cuhk03``, ``msmt17``, ``vehicleid``: read by :mod:`reid.data.readers` (variant folders, list files).
* ``folder``: ``train/``, ``query/``, ``gallery/``, each holding one folder per identity (any name)
  with ``<camera>_<anything>.jpg|.jpeg|.png`` inside; for custom data.

Every split is read in file-name order so that the same folder always gives the same lists (and
the same manifest hash). Non-image files (``Thumbs.db``, ``readme.txt``) and hidden files
(``.DS_Store``, macOS ``._*`` forks) are ignored; an image whose name does not parse is an error that
names it, because skipping it would silently change the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from reid.data.checks import folder_camera_warnings
from reid.data.layouts import (DUKEMTMC, MARKET1501, SYNTH_HINT, VERI776, DatasetKeys, NamedLayout,
                               empty_split_error, ignored_warning, is_image_name, read_named_split,
                               unsupported_images, unsupported_note, visible_files)
from reid.data.pack import read_pack
from reid.data.readers import read_benchmark
from reid.data.samples import NO_CAMERA, SPLIT_NAMES, DatasetSplits, Sample
from reid.errors import DatasetError

DatasetFormat = Literal["market1501", "veri776", "folder", "pack",  # pack: see reid/data/pack.py
                        "dukemtmc", "cuhk03", "msmt17", "vehicleid"]  # the last three: reid/data/readers.py
FORMATS: tuple[str, ...] = get_args(DatasetFormat)
LIST_FORMATS: tuple[str, ...] = ("cuhk03", "msmt17", "vehicleid")  # read by reid.data.readers
CAMERA_MODES: tuple[str, ...] = ("auto", "none")  # data.cameras
DISTRACTOR_FOLDER = "_distractors"  # folder format: gallery-only images of nobody (pid 0)
FOLDER_SPLITS: dict[str, str] = {"train": "train", "query": "query", "gallery": "gallery"}
_NAMED: dict[str, NamedLayout] = {"market1501": MARKET1501, "veri776": VERI776, "dukemtmc": DUKEMTMC}


def read_dataset(format: DatasetFormat, root: Path | str, allow_id_overlap: bool = False, *, cameras: str = "auto",
                 cuhk03_variant: str = "detected", msmt17_use_val: bool = True,
                 vehicleid_test_size: int = 800, evaluation_only: bool = False, source: str = "data") -> DatasetSplits:
    """Read ``root`` in the given layout; raises :class:`DatasetError` saying what is wrong and how to fix it.

    ``allow_id_overlap`` (``data.allow_id_overlap``, folder layout): accept an identity folder name that
    appears both in ``train/`` and in ``query/`` or ``gallery/``, which is otherwise refused as a leak.
    ``cameras="none"`` (``data.cameras``) declares data without camera ids: ``folder`` file names need
    no ``<camera>_`` prefix, every camid becomes -1 and evaluation drops the same-camera rule. The other
    keywords are the ``data.*`` options of the list-based benchmarks (:mod:`reid.data.readers`);
    :func:`reader_options` takes them all from a ``DataConfig``.

    ``evaluation_only`` (a cross-domain target): the train split may be missing or empty, only query and
    gallery need images. ``source`` is the parameter section the root and format come from, named in
    the errors (``data``, or ``evaluate.targets[<name>]``).
    """
    if format not in FORMATS:
        raise DatasetError(f"unknown dataset format {format!r}; expected one of {', '.join(FORMATS)} ({source}.format)")
    if cameras not in CAMERA_MODES:
        raise DatasetError(f"unknown camera mode {cameras!r} (data.cameras); expected auto or none")
    root_str = os.path.abspath(os.path.expanduser(str(root)))
    if format in LIST_FORMATS:
        splits = read_benchmark(format, root_str, cuhk03_variant=cuhk03_variant, msmt17_use_val=msmt17_use_val,
                                vehicleid_test_size=vehicleid_test_size)
        return _with_cameras(splits, cameras)
    if format == "pack":  # one file holding the three splits, already filtered like market1501
        return read_pack(root_str)
    keys = DatasetKeys(source, evaluation_only)
    _check_root(format, root_str, keys)
    if format == "folder":
        return _with_cameras(_read_folder(root_str, allow_id_overlap, cameras == "none", keys), cameras)
    layout = _NAMED[format]
    splits: dict[str, list[Sample]] = {}
    notes: list[str] = []
    warnings: list[str] = []
    for split, folder in layout.folders.items():
        if keys.optional(split, os.path.join(root_str, folder)):
            splits[split] = []
            continue
        samples, junk, ignored = read_named_split(layout, root_str, split, folder, format, keys)
        splits[split] = samples
        if junk:
            notes.append(f"{split}: dropped {junk} junk image(s) of identity -1")
        if ignored:
            warnings.append(ignored_warning(f"{split} ({folder}/)", ignored))
    name = os.path.basename(root_str) or layout.title
    read = DatasetSplits(name=name, train=splits["train"], query=splits["query"], gallery=splits["gallery"],
                         format=format, root=root_str, notes=notes, warnings=warnings)
    return _with_cameras(read, cameras)


def reader_options(data: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`read_dataset` held by a ``DataConfig`` (``data.*``)."""
    return {"allow_id_overlap": data.allow_id_overlap, "cameras": data.cameras, "cuhk03_variant": data.cuhk03_variant,
            "msmt17_use_val": data.msmt17_use_val, "vehicleid_test_size": data.vehicleid_test_size}


def _with_cameras(splits: DatasetSplits, cameras: str) -> DatasetSplits:
    """``splits`` with every camid set to -1 and ``has_cameras`` False when cameras are declared absent."""
    if cameras != "none" or not splits.has_cameras:
        return splits
    for name in SPLIT_NAMES:
        setattr(splits, name, [Sample(s.path, s.pid, NO_CAMERA) for s in splits.split(name)])
    splits.has_cameras = False
    splits.notes = [n for n in splits.notes if not n.startswith("cameras:")] + [
        "no camera ids (data.cameras=none): evaluation counts same-camera matches (no same-camera rule)"]
    return splits


# -- layout checks -------------------------------------------------------------------------------------
def _expected(format: str, root: str) -> str:
    if format == "folder":
        return (f"folder layout: train/, query/, gallery/ inside {root}, each with one folder per identity "
                f"holding <camera>_<anything>.jpg files (e.g. {root}/train/alice/cam1_0001.jpg); see docs/DATASETS.md")
    return _NAMED[format].describe(root)


def _layout_guess(root: str, format: str, keys: DatasetKeys) -> str:
    """A hint when ``root`` holds another known layout, or when the dataset sits one folder deeper."""
    layouts = {**{k: set(v.folders.values()) for k, v in _NAMED.items()}, "folder": set(FOLDER_SPLITS.values())}
    try:
        entries = {e.name for e in os.scandir(root) if e.is_dir()}
    except OSError:
        return ""
    for other, folders in layouts.items():
        if other != format and folders <= entries:
            return f" It looks like a {other} dataset: {keys.format_fix(other)}."
    wanted = layouts[format]
    for sub in sorted(entries):
        try:
            inner = {e.name for e in os.scandir(os.path.join(root, sub)) if e.is_dir()}
        except OSError:
            continue
        if wanted <= inner:
            return f" The dataset seems to be one level down: set {keys.source}.root={os.path.join(root, sub)}."
    return ""


def _check_root(format: str, root: str, keys: DatasetKeys) -> None:
    if not os.path.exists(root):
        raise DatasetError(
            f"dataset root {root} does not exist ({keys.source}.root). Expected the {_expected(format, root)}. "
            f"{keys.root_fix}.")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset root {root} is a file, not a folder ({keys.source}.root). "
                           f"Expected the {_expected(format, root)}.")
    folders = _NAMED[format].folders if format in _NAMED else FOLDER_SPLITS
    missing = [f for split, f in folders.items()
               if not os.path.isdir(os.path.join(root, f)) and not (keys.evaluation_only and split == "train")]
    if missing:
        present = sorted(os.listdir(root))
        shown = ", ".join(present[:12]) + (" ..." if len(present) > 12 else "") if present else "nothing"
        raise DatasetError(
            f"{root} is not in the {format} layout: missing folder(s) {', '.join(missing)} (it holds: {shown}). "
            f"Expected the {_expected(format, root)}.{_layout_guess(root, format, keys)} "
            f"Fix {keys.source}.root / {keys.source}.format" + (f", or {SYNTH_HINT}." if keys.source == "data" else "."))


# -- generic folder layout -----------------------------------------------------------------------------
def _read_folder(root: str, allow_id_overlap: bool = False, no_cameras: bool = False,
                 keys: DatasetKeys = DatasetKeys()) -> DatasetSplits:
    """``root/<split>/<identity>/<camera>_<anything>.<ext>``; identities and cameras named freely.

    Identity folder names are mapped to 1..N in sorted order over all splits (so an identity keeps its
    number across query and gallery), ``_distractors`` to 0; camera tokens likewise to 1..M. The same
    folder name in ``train/`` and in a test split means the same person, i.e. test identities seen in
    training: a data leak that inflates every metric, refused unless ``allow_id_overlap``. With
    ``no_cameras`` (``data.cameras=none``) file names are free and carry no camera.
    """
    found: dict[str, list[tuple[str, str, str]]] = {}  # split -> [(path, identity, camera)]
    ignored: dict[str, list[str]] = {}  # split -> image files of an unsupported type
    for split, folder_name in FOLDER_SPLITS.items():
        folder = os.path.join(root, folder_name)
        entries: list[tuple[str, str, str]] = []
        if keys.optional(split, folder):
            found[split] = entries
            continue
        for loose in visible_files(folder):
            if is_image_name(loose):
                raise DatasetError(
                    f"{os.path.join(folder, loose)}: in the folder layout images go inside one folder per identity, "
                    f"e.g. {folder}/<identity>/<camera>_{loose}; see docs/DATASETS.md")
        with os.scandir(folder) as it:
            identities = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        for identity in identities:
            if identity == DISTRACTOR_FOLDER and split != "gallery":
                raise DatasetError(f"{os.path.join(folder, identity)}: {DISTRACTOR_FOLDER} (images of nobody) "
                                   f"may only appear in the gallery split")
            id_folder = os.path.join(folder, identity)
            files = visible_files(id_folder)
            ignored.setdefault(split, []).extend(f"{identity}/{n}" for n in unsupported_images(files))
            for name in files:
                if not is_image_name(name):
                    continue
                camera, sep, rest = ("", "_", name) if no_cameras else name.partition("_")
                if not no_cameras and (not sep or not camera or not rest):
                    raise DatasetError(
                        f"{os.path.join(id_folder, name)}: the file name must start with its camera and an underscore, "
                        f"<camera>_<anything>.jpg (e.g. cam1_0001.jpg); rename the file")
                entries.append((os.path.join(id_folder, name), identity, camera))
        if not entries:
            others = ignored.get(split)
            detail = " (no <identity>/<camera>_<name>.jpg files" + (f"; {unsupported_note(others)})" if others else ")")
            raise empty_split_error(split, folder, detail, keys)
        found[split] = entries
    if not allow_id_overlap:
        _refuse_id_overlap(root, found)
    names = sorted({ident for entries in found.values() for _, ident, _ in entries} - {DISTRACTOR_FOLDER})
    pid_of = {name: i + 1 for i, name in enumerate(names)}
    pid_of[DISTRACTOR_FOLDER] = 0
    cameras = sorted({cam for entries in found.values() for _, _, cam in entries})
    cam_of = {cam: i + 1 for i, cam in enumerate(cameras)}
    splits = {split: [Sample(path, pid_of[ident], cam_of[cam]) for path, ident, cam in entries]
              for split, entries in found.items()}
    notes = [f"identities: {len(names)} folder names mapped to 1..{len(names)} in sorted order",
             f"cameras: {', '.join(f'{c}={cam_of[c]}' for c in cameras[:12])}{' ...' if len(cameras) > 12 else ''}"]
    warnings = [ignored_warning(f"{split}/", files) for split, files in ignored.items() if files]
    if not no_cameras:
        warnings += folder_camera_warnings([e for entries in found.values() for e in entries], len(names))
    return DatasetSplits(name=os.path.basename(root) or "folder", train=splits["train"], query=splits["query"],
                         gallery=splits["gallery"], format="folder", root=root, notes=notes, warnings=warnings)


def _refuse_id_overlap(root: str, found: dict[str, list[tuple[str, str, str]]]) -> None:
    """Raise when an identity folder name of ``train/`` also appears in ``query/`` or ``gallery/``."""
    train = {ident for _, ident, _ in found["train"]}
    test = {ident for split in ("query", "gallery") for _, ident, _ in found[split]} - {DISTRACTOR_FOLDER}
    shared = sorted(train & test)
    if shared:
        shown = ", ".join(shared[:10]) + (f" ... ({len(shared)} in all)" if len(shared) > 10 else "")
        raise DatasetError(
            f"{root}: identity folder(s) {shown} appear in train/ and in query/ or gallery/: the test would "
            f"measure people the model was trained on (a data leak). Move these identities out of train/ "
            f"(or out of the test splits), or set data.allow_id_overlap=true if the overlap is intended "
            f"(see docs/DATASETS.md)")


# -- statistics ----------------------------------------------------------------------------------------
def split_statistics(samples: list[Sample]) -> dict[str, int]:
    """``{"ids", "images", "cameras"}`` of one split; distractors (pid 0) count as one identity, and data
    without camera ids (camid -1) has 0 cameras."""
    return {"ids": len({s.pid for s in samples}), "images": len(samples),
            "cameras": len({s.camid for s in samples} - {NO_CAMERA})}


def statistics(splits: DatasetSplits) -> dict[str, dict[str, int]]:
    """Per-split identity / image / camera counts, in split order."""
    return {name: split_statistics(splits.split(name)) for name in SPLIT_NAMES}


def statistics_table(splits: DatasetSplits) -> str:
    """The dataset summary the strong baseline prints at start-up (ids / images / cameras per split)."""
    stats = statistics(splits)
    rule = "  " + "-" * 40
    lines = [f"=> {splits.name} ({splits.format or 'custom'}) loaded", "Dataset statistics:", rule,
             "  subset   | # ids | # images | # cameras", rule]
    for name, row in stats.items():
        lines.append(f"  {name:<8} | {row['ids']:5d} | {row['images']:8d} | {row['cameras']:9d}")
    lines.append(rule)
    return "\n".join(lines)
