"""Batch augmentation of uint8 image tensors; one implementation for the CPU and every GPU.

The strong-baseline recipe is a chain of per-image PIL transforms run in loader workers: resize,
horizontal flip, pad + random crop, to-tensor, normalise, random erasing. On a fast GPU those workers
cannot keep up, so here the whole chain works on a *batch* ``uint8 [B, 3, H, W]`` on whatever device
the batch lives on, with no Python loop over images and no host synchronisation. The CPU loader path
and the GPU-resident path call the same functions, so their semantics are identical by construction.

Randomness is split from pixel work: :meth:`TrainAugment.sample` draws every random decision of a
batch (flip, crop offsets, erasing rectangles) into a small :class:`AugmentParams` from an explicit
``torch.Generator``; :meth:`TrainAugment.apply` then does the pixel work. Drawing on the generator's
device (a CPU generator by default) means the same seed gives the same augmentation on the CPU and
on a GPU, and lets a data-parallel run draw the parameters of the *global* batch and give each rank
its slice, so N ranks augment exactly as one process would.

Semantics (what the reference PIL/torchvision chain does, vectorised):

* resize: bilinear with antialiasing and half-pixel centres, as torchvision's tensor ``resize``;
  computed in float32 and rounded back to uint8, so every device agrees.
* flip: each image mirrored left-right with probability ``flip_prob``.
* pad + crop: ``padding`` zero (black) pixels on every side, then an ``H x W`` window at a uniformly
  drawn offset ``(dy, dx)`` in ``[0, 2 * padding]^2``, i.e. a shift of ``offset - padding`` pixels.
  Flip, pad and crop are one gather with precomputed source indices.
* normalise: ``(x / 255 - mean) / std`` per channel.
* random erasing (Zhong et al., as in the strong baseline): with probability ``random_erasing_prob`` per
  image, up to 100 attempts of a rectangle with area ``U(0.02, 0.4) x H x W`` and aspect ratio
  ``U(0.3, 1 / 0.3)``, ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))``; the first
  attempt with ``h < H`` and ``w < W`` is placed uniformly and erased; if none fits the image is kept.
  All attempts are drawn at once and the first fitting one is selected, which is the same
  distribution as the sequential loop.

  Fill value: reid-strong-baseline's ``build_transforms`` erases with
  ``RandomErasing(mean=INPUT.PIXEL_MEAN)``, i.e. it writes the normalisation mean ``data.mean``
  ((0.485, 0.456, 0.406)) into the *normalised* tensor, the setting its published results were
  measured with. (The ``RandomErasing`` class's own default, the CIFAR means (0.4914, 0.4822, 0.4465),
  is not what its Market runs used.) We fill with ``data.mean`` on every path.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence, Union

import torch
import torch.nn.functional as F

ImageBatch = Union[torch.Tensor, Sequence[torch.Tensor]]

ERASE_AREA: tuple[float, float] = (0.02, 0.4)
ERASE_MIN_ASPECT: float = 0.3
ERASE_ATTEMPTS: int = 100


# -- deterministic building blocks ------------------------------------------------------------------
def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 [B, 3, h, w] -> uint8 [B, 3, H, W]``: antialiased bilinear, computed in float32, rounded.

    A no-op (the same tensor) when the batch already has the target size.
    """
    height, width = int(size[0]), int(size[1])
    if images.shape[-2:] == (height, width):
        return images
    out = F.interpolate(images.float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def to_batch(images: ImageBatch, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 batch at ``size`` from a batch tensor or from a list of (possibly differently sized) images."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        _check_uint8(images)
        return resize_uint8(images, size)
    items = list(images)
    if not items:
        raise ValueError("cannot build a batch from an empty list of images")
    for img in items:
        _check_uint8(img if img.dim() == 4 else img.unsqueeze(0))
    if all(img.shape[-2:] == items[0].shape[-2:] for img in items):
        return resize_uint8(torch.stack(items), size)
    return torch.cat([resize_uint8(img.unsqueeze(0), size) for img in items])


def _check_uint8(batch: torch.Tensor) -> None:
    if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected uint8 images [B, 3, H, W] (or [3, H, W]), got {batch.dtype} {tuple(batch.shape)}")


_CONSTANTS: dict[tuple[tuple[float, ...], str], torch.Tensor] = {}


def channel_constant(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """``float32 [1, 3, 1, 1]`` on ``device``, created once per device.

    Cached because building it from a Python list for every batch would be a pageable host-to-device
    copy per step, which can stall the host on the GPU stream.
    """
    key = (tuple(float(v) for v in values), str(device))
    found = _CONSTANTS.get(key)
    if found is None:
        found = torch.tensor(key[0], dtype=torch.float32).view(1, -1, 1, 1).to(device)
        _CONSTANTS[key] = found
    return found


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8 [B, 3, H, W] -> float32``, ``(x / 255 - mean) / std`` (ToTensor + Normalize)."""
    dev = images.device
    return images.float().div_(255.0).sub_(channel_constant(mean, dev)).div_(channel_constant(std, dev))


# -- random parameters -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentParams:
    """Every random decision for a batch, one row per image (int64 tensors, on one device).

    ``flip`` 0/1; ``crop_y``/``crop_x`` offsets into the padded image in ``[0, 2 * padding]``;
    ``erase`` 0/1; ``erase_y``/``erase_x``/``erase_h``/``erase_w`` the rectangle (zeros when not erased).
    """

    flip: torch.Tensor
    crop_y: torch.Tensor
    crop_x: torch.Tensor
    erase: torch.Tensor
    erase_y: torch.Tensor
    erase_x: torch.Tensor
    erase_h: torch.Tensor
    erase_w: torch.Tensor

    def __len__(self) -> int:
        return int(self.flip.shape[0])

    def slice(self, start: int, stop: int) -> "AugmentParams":
        """Rows ``start:stop`` (this rank's share of a global batch)."""
        return AugmentParams(*(getattr(self, f.name)[start:stop] for f in fields(self)))

    def to(self, device: torch.device | str) -> "AugmentParams":
        """Copy to ``device`` as one packed transfer (pinned and asynchronous when going to CUDA)."""
        device = torch.device(device)
        if self.flip.device == device:
            return self
        packed = torch.stack([getattr(self, f.name) for f in fields(self)])
        if packed.device.type == "cpu" and device.type == "cuda":
            packed = packed.pin_memory()
        packed = packed.to(device, non_blocking=True)
        return AugmentParams(*packed.unbind(0))


def sample_params(batch: int, height: int, width: int, flip_prob: float, padding: int, erasing_prob: float,
                  generator: torch.Generator) -> AugmentParams:
    """Draw the augmentation of ``batch`` images of ``height x width`` (see the module docstring).

    A fixed number of values is drawn for every call whatever the outcome, so the generator advances
    identically for every batch of the same size.
    """
    dev = generator.device
    flip = (torch.rand(batch, generator=generator, device=dev) < flip_prob).long()
    crop = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator, device=dev)
    erase = torch.rand(batch, generator=generator, device=dev) < erasing_prob
    u = torch.rand(batch, ERASE_ATTEMPTS, 2, generator=generator, device=dev, dtype=torch.float64)
    area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * u[..., 0]) * (height * width)
    aspect = ERASE_MIN_ASPECT + (1.0 / ERASE_MIN_ASPECT - ERASE_MIN_ASPECT) * u[..., 1]
    h = torch.sqrt(area * aspect).round().long()
    w = torch.sqrt(area / aspect).round().long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
    h = h.gather(1, first).squeeze(1)
    w = w.gather(1, first).squeeze(1)
    erase = erase & fits.any(dim=1)
    pos = torch.rand(batch, 2, generator=generator, device=dev, dtype=torch.float64)
    y = (pos[:, 0] * (height - h + 1)).floor().long().clamp_(min=0)
    x = (pos[:, 1] * (width - w + 1)).floor().long().clamp_(min=0)
    keep = erase.long()
    return AugmentParams(flip=flip, crop_y=crop[:, 0], crop_x=crop[:, 1], erase=keep,
                         erase_y=y * keep, erase_x=x * keep, erase_h=h * keep, erase_w=w * keep)


# -- pixel work --------------------------------------------------------------------------------------
def flip_pad_crop(images: torch.Tensor, flip: torch.Tensor, crop_y: torch.Tensor, crop_x: torch.Tensor,
                  padding: int) -> torch.Tensor:
    """Flip, zero-pad by ``padding`` and crop back to the input size, per image, as one gather.

    Output pixel ``(i, j)`` of image ``b`` is padded-flipped pixel ``(i + dy, j + dx)``, i.e. source row
    ``i + dy - padding`` and source column ``j + dx - padding`` of the flipped image (column ``W - 1 - c``
    of the original when flipped); sources outside the image give 0.
    """
    b, c, height, width = images.shape
    dev = images.device
    rows = torch.arange(height, device=dev).unsqueeze(0) + (crop_y.unsqueeze(1) - padding)  # [B, H]
    cols = torch.arange(width, device=dev).unsqueeze(0) + (crop_x.unsqueeze(1) - padding)  # [B, W]
    valid = ((rows >= 0) & (rows < height)).unsqueeze(2) & ((cols >= 0) & (cols < width)).unsqueeze(1)
    cols = torch.where(flip.unsqueeze(1).bool(), width - 1 - cols, cols)
    flat = rows.clamp(0, height - 1).unsqueeze(2) * width + cols.clamp(0, width - 1).unsqueeze(1)  # [B, H, W]
    out = images.reshape(b, c, height * width).gather(2, flat.view(b, 1, -1).expand(b, c, -1))
    out = out.view(b, c, height, width)
    return out * valid.unsqueeze(1).to(out.dtype)


def erase(images: torch.Tensor, params: AugmentParams, fill: Sequence[float]) -> torch.Tensor:
    """Write ``fill`` into each image's rectangle (float batch; images with ``erase == 0`` are untouched)."""
    b, _, height, width = images.shape
    dev = images.device
    ys = torch.arange(height, device=dev).unsqueeze(0)
    xs = torch.arange(width, device=dev).unsqueeze(0)
    in_rows = (ys >= params.erase_y.unsqueeze(1)) & (ys < (params.erase_y + params.erase_h).unsqueeze(1))
    in_cols = (xs >= params.erase_x.unsqueeze(1)) & (xs < (params.erase_x + params.erase_w).unsqueeze(1))
    mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1) & params.erase.bool().view(b, 1, 1)).unsqueeze(1)
    return torch.where(mask, channel_constant(fill, dev).to(images.dtype), images)


class TrainAugment:
    """The training augmentation of ``config.data``: ``(uint8 images, generator) -> normalised float``.

    ``images`` is ``uint8 [B, 3, h, w]`` (resized to ``data.height x data.width`` when needed) or a list
    of uint8 ``[3, h, w]`` images of any sizes. The result is float32 ``[B, 3, H, W]`` on the images'
    device. ``sample``/``apply`` split the call for callers that draw a global batch's parameters and
    apply a slice of them (data-parallel ranks).
    """

    def __init__(self, data_cfg: object) -> None:
        self.height = int(data_cfg.height)
        self.width = int(data_cfg.width)
        self.mean = tuple(float(m) for m in data_cfg.mean)
        self.std = tuple(float(s) for s in data_cfg.std)
        self.flip_prob = float(data_cfg.flip_prob)
        self.padding = int(data_cfg.padding)
        self.erasing_prob = float(data_cfg.random_erasing_prob)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def sample(self, batch: int, generator: torch.Generator) -> AugmentParams:
        return sample_params(batch, self.height, self.width, self.flip_prob, self.padding, self.erasing_prob,
                             generator)

    def apply(self, images: ImageBatch, params: AugmentParams) -> torch.Tensor:
        batch = to_batch(images, self.size)
        if len(params) != batch.shape[0]:
            raise ValueError(f"{len(params)} augmentation parameter rows for a batch of {batch.shape[0]} images")
        params = params.to(batch.device)
        out = flip_pad_crop(batch, params.flip, params.crop_y, params.crop_x, self.padding)
        out = normalize(out, self.mean, self.std)
        if self.erasing_prob > 0:
            out = erase(out, params, self.mean)  # the reference's PIXEL_MEAN fill (module docstring)
        return out

    def __call__(self, images: ImageBatch, generator: torch.Generator) -> torch.Tensor:
        batch = to_batch(images, self.size)
        return self.apply(batch, self.sample(batch.shape[0], generator))


class TestTransform:
    """The test-time transform of ``config.data``: resize to ``data.height x data.width`` and normalise."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, data_cfg: object) -> None:
        self.height = int(data_cfg.height)
        self.width = int(data_cfg.width)
        self.mean = tuple(float(m) for m in data_cfg.mean)
        self.std = tuple(float(s) for s in data_cfg.std)

    def __call__(self, images: ImageBatch) -> torch.Tensor:
        return normalize(to_batch(images, (self.height, self.width)), self.mean, self.std)

