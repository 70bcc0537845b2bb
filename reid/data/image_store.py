"""The whole training set decoded once into one uint8 tensor, ready to live on the GPU.

ReID training sets are small in pixels: Market-1501 is 12,936 crops of 128 x 64, 0.3 GB as uint8
(1.2 GB at the 256 x 128 input size). Decoding them once and keeping them on the GPU removes JPEG
decoding and per-image PIL transforms from every step, which is what limits an H100 fed by a
handful of CPU loader workers. A batch is then one ``index_select`` plus the batch augmentation of
:mod:`reid.data.transforms`.

Storage size: when every image has the same size and it is no larger than the input size, images
are kept at their native size (4x less memory for Market at 256 x 128) and each batch is resized
on the device by the same function that would otherwise resize them at load; otherwise each image is
resized to the input size once, at load.

Corrupt images follow ``data.corrupt_images``: ``fail`` raises :class:`~reid.errors.CorruptImageError`
naming the file; ``skip`` drops it with a warning and the labels stay aligned (``kept`` maps store
rows back to the input samples).

An optional cache (``cache_dir``) saves the decoded tensor as a ``.pt`` keyed by a hash of every
sample's path, label, file size and modification time plus the storage parameters, so a changed or
replaced image invalidates it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from reid.atomic import atomic_target
from reid.data.images import already_reported
from reid.data.pack import file_stamp
from reid.data.transforms import resize_uint8
from reid.errors import CorruptImageError, ReidError

Policy = Literal["fail", "skip"]
CACHE_VERSION = 1


def estimate_bytes(num_images: int, size: tuple[int, int]) -> int:
    """uint8 bytes of ``num_images`` RGB images of ``size`` (an upper bound for a store at that size)."""
    return int(num_images) * 3 * int(size[0]) * int(size[1])


def _default_decoder() -> Callable[[str], torch.Tensor]:
    from reid.data.images import decode_image

    return decode_image


@dataclass
class ImageStore:
    """``images`` uint8 ``[N, 3, h, w]``, ``labels`` int64 ``[N]`` (same device), ``kept`` the input
    positions of the rows, ``dropped`` the paths of skipped corrupt images."""

    images: torch.Tensor
    labels: torch.Tensor
    kept: list[int]
    dropped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def image_size(self) -> tuple[int, int]:
        """The stored ``(height, width)`` (native or the input size; see the module docstring)."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def to(self, device: torch.device | str) -> "ImageStore":
        """The same store on ``device`` (the images are copied once; nothing is copied per batch)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return ImageStore(self.images.to(device), self.labels.to(device), list(self.kept), list(self.dropped))

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``indices`` (an int64 tensor on the store's device): ``(uint8 images, labels)``."""
        return self.images.index_select(0, indices), self.labels.index_select(0, indices)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, samples: Sequence[Any], labels: Sequence[int], size: tuple[int, int], policy: Policy = "fail",
              num_threads: int = 4, cache_dir: Path | str | None = None,
              decoder: Callable[[str], torch.Tensor] | None = None) -> "ImageStore":
        """Decode ``samples`` (objects with a ``path``) with a thread pool into a CPU store.

        ``labels`` are aligned with ``samples``; ``size`` is the ``(height, width)`` input size; ``decoder``
        defaults to :func:`reid.data.images.decode_image` (uint8 ``[3, H, W]``, raising
        ``CorruptImageError``).
        """
        if policy not in ("fail", "skip"):
            raise ReidError(f"data.corrupt_images must be 'fail' or 'skip', got {policy!r}")
        if len(samples) != len(labels):
            raise ReidError(f"{len(samples)} samples but {len(labels)} labels; they must be aligned")
        if not samples:
            raise ReidError("the training split is empty: nothing to load into the image store")
        size = (int(size[0]), int(size[1]))
        paths = [str(s.path) for s in samples]
        cache_path = None
        if cache_dir is not None:
            cache_path = Path(cache_dir) / f"image-store-{_cache_key(paths, labels, size, policy)}.pt"
            cached = _load_cache(cache_path)
            if cached is not None:
                return cached
        decode = decoder or _default_decoder()
        images, dropped = _decode_all(paths, decode, policy, max(1, int(num_threads)))
        kept = [i for i, img in enumerate(images) if img is not None]
        if not kept:
            raise CorruptImageError(f"every one of the {len(paths)} training images is corrupt (first: {paths[0]})")
        unnamed = [path for path in dropped if not already_reported(path)]  # not named before training
        if unnamed:
            shown = ", ".join(unnamed[:5]) + (" ..." if len(unnamed) > 5 else "")
            warnings.warn(f"data.corrupt_images=skip: dropped {len(unnamed)} corrupt training image(s): {shown}",
                          stacklevel=2)
        decoded = [images[i] for i in kept]
        stacked = _stack(decoded, size, max(1, int(num_threads)))
        label_t = torch.tensor([int(labels[i]) for i in kept], dtype=torch.long)
        store = cls(stacked, label_t, kept, dropped)
        if cache_path is not None:
            _save_cache(cache_path, store)
        return store


def _decode_all(paths: list[str], decode: Callable[[str], torch.Tensor], policy: Policy,
                threads: int) -> tuple[list[torch.Tensor | None], list[str]]:
    """Decode in a thread pool (decoders release the GIL); with ``fail`` the first corrupt file stops it."""
    results: list[torch.Tensor | None] = [None] * len(paths)
    dropped: list[str] = []
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reid-decode")
    try:
        futures: list[Future[torch.Tensor]] = [pool.submit(decode, p) for p in paths]
        for i, fut in enumerate(futures):
            try:
                img = fut.result()
            except CorruptImageError:
                if policy == "fail":
                    raise
                dropped.append(paths[i])
                continue
            if img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] != 3:
                raise CorruptImageError(f"{paths[i]}: decoded to {img.dtype} {tuple(img.shape)}, expected uint8 [3, H, W]")
            results[i] = img
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results, dropped


def _stack(images: list[torch.Tensor], size: tuple[int, int], threads: int) -> torch.Tensor:
    """One ``[N, 3, h, w]`` tensor: native size when uniform and not larger than ``size``, else resized."""
    first = tuple(images[0].shape[1:])
    uniform = all(tuple(img.shape[1:]) == first for img in images)
    if uniform and first[0] * first[1] <= size[0] * size[1]:
        return torch.stack(images)
    out = torch.empty((len(images), 3, size[0], size[1]), dtype=torch.uint8)

    def put(i: int) -> None:
        out[i] = resize_uint8(images[i].unsqueeze(0), size)[0]

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reid-resize") as pool:
        list(pool.map(put, range(len(images))))
    return out


def _cache_key(paths: list[str], labels: Sequence[int], size: tuple[int, int], policy: str) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{size[0]}x{size[1]}|{policy}".encode())
    for path, label in zip(paths, labels):
        try:
            stamp = file_stamp(path)
        except OSError:
            stamp = "missing"
        digest.update(f"\n{path}|{int(label)}|{stamp}".encode())
    return digest.hexdigest()[:20]


def _load_cache(path: Path) -> ImageStore | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return ImageStore(data["images"], data["labels"], [int(i) for i in data["kept"].tolist()],
                          list(data["dropped"]))
    except Exception as exc:  # a truncated or foreign file: rebuild rather than fail
        warnings.warn(f"ignoring unreadable image-store cache {path}: {exc}", stacklevel=3)
        return None


def _save_cache(path: Path, store: ImageStore) -> None:
    with atomic_target(path) as tmp:  # a concurrent reader sees the old file or the whole new one
        torch.save({"images": store.images, "labels": store.labels,
                    "kept": torch.tensor(store.kept, dtype=torch.long), "dropped": list(store.dropped)}, tmp)
