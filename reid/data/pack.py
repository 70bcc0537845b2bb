"""A dataset packed into one file: re-encoded images plus their identities, read in place.

Why: a GPU machine that receives at most 64 MiB of the checkout per call cannot get Market-1501's
71 MiB of JPEGs (and 32,217 small files are slow to copy anyway). A pack holds train, query and
gallery of a dataset (as :func:`reid.data.datasets.read_dataset` reads it: junk ``-1`` dropped,
distractors ``0000`` kept) in one file, each image re-encoded (WebP by default, lossy: its effect on
mAP is measured, see benchmarks/README.md).

Reading goes through the normal path: ``data.format: pack`` with ``data.root`` the pack file makes
:func:`reid.data.datasets.read_dataset` return samples whose ``path`` is
``<absolute pack file>/<member>`` (e.g. ``/x/pack/market1501.reidpack/train/0002_c1s1_000451_03.jpg.webp``),
and :func:`reid.data.images.decode_image` reads such a path's bytes from the pack. Manifests, the
image store, both input pipelines and the evaluation therefore need nothing else.

File layout (version 1): ``MAGIC`` (10 bytes), the header length (8 bytes, little-endian), a UTF-8 JSON
header, then the image bytes back to back. The header holds ``name``, ``source_format``, ``codec``,
``quality`` and, per split, rows ``[member, pid, camid, offset, size]`` (offset relative to the end of
the header). Reads use ``os.pread`` on a descriptor opened once per process: no shared file offset,
so decoder threads and forked ``DataLoader`` workers can read concurrently.
"""

from __future__ import annotations

import io
import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reid.data.samples import SPLIT_NAMES, DatasetSplits, Sample
from reid.errors import DatasetError

MAGIC = b"REIDPACK\x00\x01"
PACK_SUFFIX = ".reidpack"
_MARKER = PACK_SUFFIX + "/"
_LEN = struct.Struct("<Q")
CODECS = ("webp", "jpeg")
_FIX = "rebuild it with `python scripts/pack_market.py`"


def split_pack_path(path: str) -> tuple[str, str] | None:
    """``"/x/a.reidpack/train/f.webp"`` -> ``("/x/a.reidpack", "train/f.webp")``; None for a plain path."""
    path = str(path)
    at = path.find(_MARKER)
    if at < 0:
        return None
    return path[: at + len(PACK_SUFFIX)], path[at + len(_MARKER):]


def is_pack_path(path: str) -> bool:
    """True when ``path`` names an image inside a pack (see :func:`split_pack_path`)."""
    return split_pack_path(path) is not None


@dataclass(frozen=True)
class PackEntry:
    member: str
    pid: int
    camid: int
    offset: int
    size: int


class PackReader:
    """The header of one pack and a descriptor to read its members; one per (process, file)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise DatasetError(f"pack {self.path} cannot be opened ({exc.strerror}); {_FIX}") from None
        try:
            head = os.pread(fd, len(MAGIC) + _LEN.size, 0)
            if len(head) < len(MAGIC) + _LEN.size or head[: len(MAGIC)] != MAGIC:
                raise DatasetError(f"{self.path} is not a reid pack (bad magic bytes); {_FIX}")
            (length,) = _LEN.unpack(head[len(MAGIC):])
            raw = os.pread(fd, length, len(head))
            if len(raw) != length:
                raise DatasetError(f"pack {self.path} is truncated (header cut short); {_FIX}")
            try:
                self.header: dict[str, Any] = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DatasetError(f"pack {self.path} has an unreadable header ({exc}); {_FIX}") from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.stamp: tuple[int, int, int] = (-1, -1, -1)
        self.data_start = len(head) + length
        try:
            self.entries: dict[str, list[PackEntry]] = {
                split: [PackEntry(str(m), int(p), int(c), int(o), int(s))
                        for m, p, c, o, s in self.header["splits"][split]]
                for split in SPLIT_NAMES
            }
        except (KeyError, TypeError, ValueError) as exc:
            os.close(fd)
            raise DatasetError(f"pack {self.path} has a malformed header ({type(exc).__name__}: {exc}); {_FIX}") from None
        self.members: dict[str, PackEntry] = {e.member: e for rows in self.entries.values() for e in rows}

    def read(self, member: str) -> bytes:
        """The stored bytes of ``member`` (a ``DatasetError`` naming it when absent or cut short)."""
        entry = self.members.get(member)
        if entry is None:
            raise DatasetError(f"{self.path} holds no image {member!r}; the manifest does not match the pack, "
                               f"rerun `reid prepare`")
        data = os.pread(self.fd, entry.size, self.data_start + entry.offset)
        if len(data) != entry.size:
            raise DatasetError(f"pack {self.path} is truncated at {member!r}; {_FIX}")
        return data


_readers: dict[tuple[int, str], PackReader] = {}
_lock = threading.Lock()


def _stamp(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def open_pack(path: str | Path) -> PackReader:
    """The cached reader of the pack at ``path`` for this process (forked workers open their own).

    A pack rewritten at the same path (a new inode, size or mtime) is reopened, never read through a
    stale header.
    """
    key = (os.getpid(), os.path.abspath(str(path)))
    stamp = _stamp(key[1])
    reader = _readers.get(key)
    if reader is None or reader.stamp != stamp:
        with _lock:
            reader = _readers.get(key)
            if reader is None or reader.stamp != stamp:
                # The old descriptor stays open: another thread may be reading through it right now.
                reader = PackReader(key[1])
                reader.stamp = stamp
                _readers[key] = reader
    return reader


def read_member(path: str) -> bytes:
    """The encoded bytes of the image a pack path (``<pack>/<member>``) names."""
    parts = split_pack_path(path)
    if parts is None:
        raise DatasetError(f"{path} is not a path inside a {PACK_SUFFIX} file")
    return open_pack(parts[0]).read(parts[1])


def image_source(path: str) -> str | io.BytesIO:
    """What ``PIL.Image.open`` takes for ``path``: the path itself, or the member's bytes of a pack."""
    return io.BytesIO(read_member(path)) if is_pack_path(path) else path


def stored_size(path: str) -> int:
    """The stored size in bytes of the image at ``path`` (a file, or a pack member): for content hashes."""
    parts = split_pack_path(path)
    if parts is None:
        return os.stat(path).st_size
    entry = open_pack(parts[0]).members.get(parts[1])
    if entry is None:
        raise OSError(f"{parts[1]} is not in {parts[0]}")
    return entry.size


def file_stamp(path: str) -> str:
    """``"size:mtime_ns"`` of a file; for a pack member its stored size and the pack file's mtime."""
    parts = split_pack_path(path)
    st = os.stat(parts[0] if parts is not None else path)
    return f"{stored_size(path) if parts is not None else st.st_size}:{st.st_mtime_ns}"


def read_pack(path: str | Path) -> DatasetSplits:
    """The splits of a pack, with sample paths pointing into it (``data.format: pack``)."""
    root = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(root):
        raise DatasetError(f"pack {root} not found (data.root with data.format=pack names a {PACK_SUFFIX} file); "
                           f"build one with `python scripts/pack_market.py --output {root}`")
    reader = open_pack(root)
    splits = {split: [Sample(f"{root}/{e.member}", e.pid, e.camid) for e in reader.entries[split]]
              for split in SPLIT_NAMES}
    header = reader.header
    note = (f"packed {header.get('source_format', '?')} dataset, images re-encoded as {header.get('codec', '?')} "
            f"quality {header.get('quality', '?')}")
    return DatasetSplits(name=str(header.get("name") or Path(root).stem), format="pack", root=root, notes=[note],
                         **splits)


# -- writing ---------------------------------------------------------------------------------------
def encode_image(path: str, codec: str, quality: int) -> bytes:
    """The image at ``path`` re-encoded (RGB) with ``codec`` at ``quality``."""
    from PIL import Image

    out = io.BytesIO()
    with Image.open(image_source(path)) as img:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        if codec == "webp":
            rgb.save(out, "WEBP", quality=int(quality), method=4)
        else:
            rgb.save(out, "JPEG", quality=int(quality))
    return out.getvalue()


def write_pack(splits: DatasetSplits, path: str | Path, codec: str = "webp", quality: int = 80, threads: int = 2,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Re-encode every image of ``splits`` into one pack at ``path`` (written atomically).

    Returns a summary: images per split, ``bytes`` of the pack and ``source_bytes`` of the originals.
    Member names are ``<split>/<original file name>.<codec>``, unique within a split.
    """
    from reid.atomic import atomic_target

    if codec not in CODECS:
        raise DatasetError(f"unknown codec {codec!r}; expected one of {', '.join(CODECS)}")
    jobs: list[tuple[str, Sample]] = [(split, s) for split in SPLIT_NAMES for s in splits.split(split)]
    if not jobs:
        raise DatasetError(f"dataset {splits.name} has no images to pack")
    done = 0
    lock = threading.Lock()

    def encode(job: tuple[str, Sample]) -> bytes:
        nonlocal done
        data = encode_image(job[1].path, codec, quality)
        if progress is not None:
            with lock:
                done += 1
                progress(done, len(jobs))
        return data

    with ThreadPoolExecutor(max_workers=max(1, int(threads)), thread_name_prefix="reid-pack") as pool:
        blobs = list(pool.map(encode, jobs))
    rows: dict[str, list[list[Any]]] = {split: [] for split in SPLIT_NAMES}
    seen: set[str] = set()
    offset = 0
    for (split, sample), blob in zip(jobs, blobs):
        member = f"{split}/{os.path.basename(sample.path)}.{codec}"
        if member in seen:
            raise DatasetError(f"two {split} images are both named {os.path.basename(sample.path)}; "
                               "a pack needs unique file names per split")
        seen.add(member)
        rows[split].append([member, int(sample.pid), int(sample.camid), offset, len(blob)])
        offset += len(blob)
    header = json.dumps({"version": 1, "name": splits.name, "source_format": splits.format, "codec": codec,
                         "quality": int(quality), "splits": rows}, separators=(",", ":")).encode("utf-8")
    path = Path(path)
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC)
            fh.write(_LEN.pack(len(header)))
            fh.write(header)
            for blob in blobs:
                fh.write(blob)
    source = sum(stored_size(s.path) for _, s in jobs)
    return {"path": str(path), "bytes": path.stat().st_size, "source_bytes": source, "codec": codec,
            "quality": int(quality), **{split: len(rows[split]) for split in SPLIT_NAMES}}

