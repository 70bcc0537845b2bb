"""Decode images to uint8 RGB tensors, and apply the corrupt-image policy (``data.corrupt_images``).

One decoder for the whole toolkit, so training, evaluation and ``reid prepare --check-images`` agree
on what "corrupt" means. It is Pillow (libjpeg-turbo; the decode runs without the GIL, so thread
pools scale): torchvision's decoders are deprecated from 0.29 on and warn on every call. Pillow
rejects truncated files as long as ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` stays False (its
default; some other ReID code bases switch it on globally, which makes broken images load as grey
padding). Whatever goes wrong is a :class:`CorruptImageError` naming the file, so a long run never
dies on a bare decoder error with no path in it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Sequence

import torch

from reid.data.samples import Sample
from reid.errors import CorruptImageError, DatasetError

log = logging.getLogger(__name__)
CorruptPolicy = Literal["fail", "skip"]
_FIX = "replace or delete the file, or set data.corrupt_images=skip"


def decode_image(path: str) -> torch.Tensor:
    """``path`` as a uint8 ``[3, H, W]`` RGB tensor (grayscale, palette and RGBA images become RGB).

    Raises :class:`CorruptImageError` naming the file when it is missing, empty, truncated or not an
    image at all.
    """
    import numpy as np
    from PIL import Image

    from reid.data.pack import image_source, is_pack_path

    path = str(path)
    if not is_pack_path(path) and not os.path.isfile(path):
        raise CorruptImageError(f"{path}: image file not found (was the dataset moved? rerun `reid prepare`)")
    try:
        source = image_source(path)  # the path itself, or the bytes of a pack member (reid/data/pack.py)
    except DatasetError as exc:
        raise CorruptImageError(f"{path}: {exc}") from None
    try:
        with Image.open(source) as img:
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            array = np.array(rgb)  # forces the full decode; a writable copy the tensor can own
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not an image we can read"
        reason = str(exc) or type(exc).__name__
        raise CorruptImageError(f"{path}: cannot decode the image ({_short(reason)}); {_FIX}") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImageError(f"{path}: decoded to an unusable shape {array.shape}; {_FIX}")
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _short(text: str, limit: int = 160) -> str:
    """A one-line, bounded version of a decoder's message."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def without_fix(message: str) -> str:
    """A corrupt-image message without the advice to set ``data.corrupt_images=skip``: for the warnings
    printed when that policy is already on."""
    return message.replace(f"; {_FIX}", "")


def _check_policy(policy: str) -> None:
    if policy not in ("fail", "skip"):
        raise DatasetError(f"data.corrupt_images must be 'fail' or 'skip', got {policy!r}")


def load_images(samples: Sequence[Sample], policy: CorruptPolicy = "fail") -> tuple[list[torch.Tensor], list[int]]:
    """Decode every sample in order: ``(images, kept)`` where ``kept[i]`` is the index of ``images[i]``.

    ``fail`` raises at the first corrupt file; ``skip`` logs a warning with each bad file's path and
    leaves it out, so callers realign their labels through ``kept``.
    """
    _check_policy(policy)
    images: list[torch.Tensor] = []
    kept: list[int] = []
    for index, sample in enumerate(samples):
        try:
            images.append(decode_image(sample.path))
        except CorruptImageError as exc:
            if policy == "fail":
                raise
            log.warning("skipping corrupt image (data.corrupt_images=skip): %s", without_fix(str(exc)))
            continue
        kept.append(index)
    return images, kept


def find_corrupt(samples: Sequence[Sample], threads: int = 2) -> list[tuple[int, str]]:
    """``[(index, message)]`` of every sample that does not decode; decoded pixels are discarded.

    Used by ``reid prepare --check-images`` to scan a whole dataset in bounded memory (a thread pool:
    the decoders release the GIL).
    """

    def check(index: int) -> tuple[int, str] | None:
        try:
            decode_image(samples[index].path)
        except CorruptImageError as exc:
            return index, str(exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="reid-check") as pool:
        results = pool.map(check, range(len(samples)))
        return [r for r in results if r is not None]


def check_test_images(manifest: object, policy: str, threads: int | None = None) -> list[str]:
    """Decode every query and gallery image of ``manifest`` before training (they are few and small).

    Under ``fail`` a corrupt one raises :class:`CorruptImageError` listing every bad file, so the run
    stops before its first step instead of after its last epoch; under ``skip`` returns one warning per
    file (evaluation leaves them out). Training images are not decoded here: the loader meets them.
    """
    _check_policy(policy)
    threads = threads or max(1, min(8, os.cpu_count() or 1))
    bad = [msg for split in ("query", "gallery")
           for _, msg in find_corrupt(list(getattr(manifest, split)), threads=threads)]
    if not bad:
        return []
    if policy == "skip":
        return [f"corrupt test image left out of every evaluation (data.corrupt_images=skip): {without_fix(m)}"
                for m in bad]
    shown = "\n  ".join(without_fix(m) for m in bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
    raise CorruptImageError(
        f"{len(bad)} corrupt query/gallery image(s), found before training (data.corrupt_images=fail):\n  {shown}\n"
        "Nothing was trained. Replace or delete them and rerun `reid prepare`, or set data.corrupt_images=skip "
        "to leave them out of the evaluation (neither change blocks a later --resume)")
