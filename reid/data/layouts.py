"""File-name layouts shared by every dataset reader: how a split folder becomes samples.

The readers of :mod:`reid.data.readers` (CUHK03-NP's Market-style trees) and of
:mod:`reid.data.datasets` (Market-1501, DukeMTMC-reID, VeRi-776) read named files the same way, so
the layout type, the patterns and the split reader live here, below both: the data package then
reads top-down (samples -> layouts -> readers -> datasets -> manifest), and no reader imports the
module that dispatches to it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from reid.data.samples import Sample
from reid.errors import DatasetError

# The image types the readers take: every one that Pillow decodes in the project's environment
# (WebP through its bundled libwebp, BMP natively), so that a folder of .webp crops is read, not ignored.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Image types a dataset folder may hold that the readers do not take: they are counted and named,
# never dropped without a word.
UNSUPPORTED_IMAGE_EXTENSIONS: tuple[str, ...] = (".gif", ".tif", ".tiff", ".jfif", ".jp2",
                                                 ".avif", ".heic", ".heif", ".ppm", ".pgm", ".pnm")
#: How many ignored files a warning names (the count is complete).
NAMED_IGNORED = 5
SYNTH_HINT = "to try the toolkit without it, generate a synthetic Market-format dataset with `reid synth DIR`"

EXT = r"(?:\.(?:jpe?g|png|webp|bmp))+"  # one or more image extensions: Market's ``.jpg.jpg`` files must parse
MARKET_STYLE_FOLDERS: dict[str, str] = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


@dataclass(frozen=True)
class NamedLayout:
    """A dataset whose identity and camera are encoded in the file name (Market-1501, VeRi-776, ...)."""

    title: str
    folders: dict[str, str]  # split -> folder under the root
    pattern: re.Pattern[str]  # group 1: identity, group 2: camera
    pattern_text: str
    example: str

    def describe(self, root: str) -> str:
        folders = ", ".join(f"{f}/" for f in self.folders.values())
        return (f"{self.title} layout: {folders} inside {root}, holding files named {self.pattern_text} "
                f"(e.g. {self.example})")


MARKET1501 = NamedLayout(
    title="Market-1501",
    folders=MARKET_STYLE_FOLDERS,
    pattern=re.compile(rf"^(-?\d+)_c(\d+)s\d+_\d+_\d+{EXT}$", re.IGNORECASE),
    pattern_text="PPPP_cCsS_FFFFFF_BB.jpg",
    example="0002_c1s1_000451_03.jpg",
)
VERI776 = NamedLayout(
    title="VeRi-776",
    folders={"train": "image_train", "query": "image_query", "gallery": "image_test"},
    pattern=re.compile(rf"^(-?\d+)_c(\d+)_\d+_\d+{EXT}$", re.IGNORECASE),
    pattern_text="VVVV_cCCC_FFFFFFFF_N.jpg",
    example="0002_c002_00030600_0.jpg",
)
DUKEMTMC = NamedLayout(
    title="DukeMTMC-reID",
    folders=MARKET_STYLE_FOLDERS,
    pattern=re.compile(rf"^(-?\d+)_c(\d+)_f\d+{EXT}$", re.IGNORECASE),
    pattern_text="PPPP_cC_fFFFFFFF.jpg",
    example="0001_c2_f0046182.jpg",
)
CUHK03 = NamedLayout(
    title="CUHK03-NP",
    folders=MARKET_STYLE_FOLDERS,
    pattern=re.compile(rf"^(-?\d+)_c([12])_\d+{EXT}$", re.IGNORECASE),
    pattern_text="PPPP_cC_N.png (camera 1 or 2)",
    example="0001_c1_1.png",
)


def is_image_name(name: str) -> bool:
    """True for a visible file whose name ends in an image extension (the files a dataset is made of)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class DatasetKeys:
    """Where a dataset's settings come from, for the errors: ``data`` (with the ``reid prepare`` options
    that set it), or a cross-domain target ``evaluate.targets[<name>]``, which is evaluation only."""

    source: str = "data"
    evaluation_only: bool = False

    @property
    def root_fix(self) -> str:
        return (f"Set {self.source}.root in params.yaml"
                + (" (or `reid prepare --root PATH`) to your copy; " + SYNTH_HINT if self.source == "data" else
                   " to the folder of your copy"))

    def format_fix(self, other: str) -> str:
        return f"set {self.source}.format={other}" + (f" (or `reid prepare --format {other}`)" if self.source == "data" else "")

    @property
    def complete(self) -> str:
        if self.evaluation_only:
            return "query/ and gallery/ need images (train/ may be empty or absent for an evaluation-only dataset)"
        return f"copy the dataset completely (every split needs images), or {SYNTH_HINT}"

    def optional(self, split: str, folder: str) -> bool:
        """True when ``split`` may be skipped: the train split of an evaluation-only dataset, absent or empty."""
        if not (self.evaluation_only and split == "train"):
            return False
        return not os.path.isdir(folder) or not any(is_image_name(f) for _, _, files in os.walk(folder) for f in files)


def unsupported_images(names: list[str]) -> list[str]:
    """The visible file names among ``names`` that are images of a type the readers skip (``.webp``...)."""
    return [n for n in names if not n.startswith(".") and n.lower().endswith(UNSUPPORTED_IMAGE_EXTENSIONS)]


def ignored_warning(where: str, names: list[str]) -> str:
    """The warning for image files of an unsupported type found in ``where`` (a split, its folder)."""
    return f"{where}: {unsupported_note(names)}"


def unsupported_note(names: list[str]) -> str:
    types = ", ".join(sorted({os.path.splitext(n)[1].lower() for n in names}))
    shown = ", ".join(sorted(names)[:NAMED_IGNORED]) + (" ..." if len(names) > NAMED_IGNORED else "")
    return (f"{len(names)} image file(s) of an unsupported type ({types}) were ignored ({shown}): only "
            f"{', '.join(IMAGE_EXTENSIONS)} are read; convert them (e.g. with Pillow) to include them")


def visible_files(folder: str) -> list[str]:
    """File names in ``folder`` (no hidden files, no sub-folders), sorted."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_file())
    except OSError as exc:
        raise DatasetError(f"cannot list {folder}: {exc}") from exc


def empty_split_error(split: str, folder: str, detail: str, keys: DatasetKeys = DatasetKeys()) -> DatasetError:
    return DatasetError(f"the {split} split ({folder}) holds no usable images{detail}; {keys.complete}.")


def read_named_split(layout: NamedLayout, root: str, split: str, folder_name: str,
                     format: str, keys: DatasetKeys = DatasetKeys()) -> tuple[list[Sample], int, list[str]]:
    """Samples of one split (identity -1 dropped), how many junk images were dropped, and the image files
    of an unsupported type that were ignored."""
    folder = os.path.join(root, folder_name)
    samples: list[Sample] = []
    junk = 0
    files = visible_files(folder)
    images = [n for n in files if is_image_name(n)]
    ignored = unsupported_images(files)
    for name in images:
        match = layout.pattern.match(name)
        if match is None:
            raise DatasetError(
                f"{os.path.join(folder, name)}: the file name does not follow the {layout.title} pattern "
                f"{layout.pattern_text} (e.g. {layout.example}); rename or remove the file, or set {keys.source}.format "
                f"if this is another layout (current: {format}).")
        pid, camid = int(match.group(1)), int(match.group(2))
        if pid == -1:
            junk += 1
            continue
        if pid < -1 or camid < 1:
            raise DatasetError(f"{os.path.join(folder, name)}: identity {pid} / camera {camid} out of range "
                               f"(identities are >= 0, or -1 for junk; cameras start at 1)")
        samples.append(Sample(os.path.join(folder, name), pid, camid))
    if not samples:
        detail = " (no image files)"
        if images:
            detail = f" ({len(images)} image file(s), {junk} of them junk with identity -1)"
        if ignored:
            detail += f"; {unsupported_note(ignored)}"
        raise empty_split_error(split, folder, detail, keys)
    return samples, junk, ignored
