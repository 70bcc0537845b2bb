"""Which images to embed: folders (recursive, with a glob), list files, or a manifest split.

Identities and cameras are taken from a manifest that lists the file (the only source for ``folder``
data, whose identities are folder names numbered at prepare), else from the file names where they carry
them (Market-1501 and VeRi-776 naming, the parsers of :mod:`reid.data.datasets`), else -1; a manifest
split gives its own labels.
"""

from __future__ import annotations

import glob as _glob
from pathlib import Path
from typing import Sequence

from reid.data.layouts import MARKET1501, VERI776, is_image_name
from reid.errors import ReidError

LIST_SUFFIXES = (".txt", ".lst", ".list")
SPLITS = ("query", "gallery", "train")


def _from_folder(folder: Path, pattern: str) -> list[str]:
    found = sorted(p for p in _glob.glob(str(folder / pattern), recursive=True)
                   if Path(p).is_file() and is_image_name(Path(p).name))
    if not found:
        raise ReidError(f"no images matching {pattern!r} in {folder} (looked for .jpg/.jpeg/.png files, "
                        "recursively); check the folder or pass --glob")
    return [str(Path(p).resolve()) for p in found]


def _from_list(path: Path) -> list[str]:
    """One path per line (blank lines and ``#`` comments skipped), relative to the list's folder."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    paths = [ln for ln in lines if ln and not ln.startswith("#")]
    if not paths:
        raise ReidError(f"list file {path} names no images; put one image path per line")
    return [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in paths]


def collect_images(sources: Sequence[Path], pattern: str = "**/*") -> list[str]:
    """Absolute image paths of ``sources`` (image files, folders, list files), in the given order."""
    paths: list[str] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            paths.extend(_from_folder(source, pattern))
        elif source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
            paths.extend(_from_list(source))
        elif source.is_file():
            paths.append(str(source.resolve()))
        else:
            raise ReidError(f"{source} does not exist (give image files, folders or .txt lists of paths)")
    if not paths:
        raise ReidError("no images given: pass files, folders or list files, or --split with a manifest")
    return paths


def labels_from_name(path: str) -> tuple[int, int]:
    """``(pid, camid)`` parsed from a Market-1501 or VeRi-776 file name, else ``(-1, -1)``."""
    name = Path(path).name
    for layout in (MARKET1501, VERI776):
        match = layout.pattern.match(name)
        if match:
            return int(match.group(1)), int(match.group(2))
    return -1, -1


def manifest_labels(manifest: Path | str) -> dict[str, tuple[int, int]]:
    """``{absolute path: (pid, camid)}`` over every split of a manifest: the labels of data whose file
    names carry none (the ``folder`` layout names identities by folder, mapped to numbers at prepare)."""
    from reid.data.manifest import load_manifest

    if not Path(manifest).is_file():
        raise ReidError(f"manifest {manifest} does not exist; run `reid prepare` or give --manifest")
    loaded = load_manifest(manifest)
    return {str(Path(s.path).resolve()): (s.pid, s.camid) for split in SPLITS for s in getattr(loaded, split)}


def labels_for(paths: Sequence[str], known: dict[str, tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """``(pid, camid)`` of each path: from ``known`` (a manifest's labels) when it lists the file, else
    from the file name (:func:`labels_from_name`), else ``(-1, -1)``."""
    known = known or {}
    return [known.get(str(Path(p).resolve())) or labels_from_name(p) for p in paths]


def manifest_split(manifest: Path | str, split: str) -> tuple[list[str], list[int], list[int]]:
    """``(paths, pids, camids)`` of one split of a manifest written by ``reid prepare``."""
    from reid.data.manifest import load_manifest

    if split not in SPLITS:
        raise ReidError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not Path(manifest).is_file():
        raise ReidError(f"manifest {manifest} does not exist; run `reid prepare` or give --manifest")
    samples = getattr(load_manifest(manifest), split)
    if not samples:
        raise ReidError(f"the {split} split of {manifest} is empty")
    return [s.path for s in samples], [s.pid for s in samples], [s.camid for s in samples]
