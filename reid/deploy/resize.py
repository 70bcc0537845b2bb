"""How a crop of any size becomes the model's input size: the contract's resize and the trackers' resize.

A ReID model is only as good as the pixels it is fed. Two resizes matter in practice:

* ``bilinear-antialias`` (:data:`CONTRACT_RESIZE`): what training and evaluation use
  (:func:`reid.data.transforms.resize_uint8`): bilinear with half-pixel centres (``align_corners=False``)
  and antialiasing (the kernel widens by the scale factor when shrinking), computed in float32 on the
  uint8 values, rounded half-to-even back to uint8; the aspect ratio is not kept (the crop is stretched
  to ``H x W``, no padding). This is torchvision's tensor ``resize(..., antialias=True)`` and close to
  PIL's bilinear resize.
* ``opencv-linear`` (:data:`OPENCV_RESIZE`): ``cv2.resize(crop, (W, H), interpolation=cv2.INTER_LINEAR)``,
  what BoxMOT and most trackers do. Half-pixel centres too, but *no antialiasing* (each output pixel
  reads its 2 x 2 nearest source pixels, whatever the scale) and OpenCV's fixed-point uint8 arithmetic.

When a crop is enlarged (Market-1501's 128 x 64 crops to a 256 x 128 input) the two agree to uint8
rounding, because antialiasing only acts when shrinking. When a crop is shrunk (a person 400 pixels tall
in a video frame to 256 x 128, or any crop to a 64 x 32 CPU model) ``opencv-linear`` aliases fine
texture and the features move (see docs/TRACKING.md for the measured cosines and the Market-1501 cost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

from reid.errors import ReidError

if TYPE_CHECKING:  # numpy and torch load lazily: the contract (imported cheaply) names CONTRACT_RESIZE
    import numpy as np
    import torch

ResizeMethod = Literal["bilinear-antialias", "opencv-linear"]
CONTRACT_RESIZE = "bilinear-antialias"
OPENCV_RESIZE = "opencv-linear"
RESIZE_METHODS: tuple[str, ...] = (CONTRACT_RESIZE, OPENCV_RESIZE)


def check_method(method: str) -> str:
    if method not in RESIZE_METHODS:
        raise ReidError(f"unknown resize {method!r}; use one of {', '.join(RESIZE_METHODS)} "
                        f"({CONTRACT_RESIZE} is what the model was trained and evaluated with)")
    return method


def import_cv2():
    try:
        import cv2
    except ImportError:
        raise ReidError(f"the {OPENCV_RESIZE!r} resize needs OpenCV: pip install 'reid-toolkit[trackers]' "
                        "(or pip install opencv-python-headless)") from None
    return cv2


def resize_hwc(crop: np.ndarray, size: tuple[int, int], method: str = CONTRACT_RESIZE) -> np.ndarray:
    """One uint8 ``[h, w, 3]`` crop (any channel order; the resize is per channel) -> uint8 ``[H, W, 3]``."""
    import numpy as np
    import torch

    check_method(method)
    crop = np.ascontiguousarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or min(crop.shape[:2]) < 1:
        raise ReidError(f"a crop must be a non-empty uint8 [H, W, 3] array, got {crop.dtype} {crop.shape}")
    height, width = int(size[0]), int(size[1])
    if method == OPENCV_RESIZE:
        cv2 = import_cv2()
        return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
    from reid.data.transforms import resize_uint8

    chw = torch.from_numpy(crop).permute(2, 0, 1).unsqueeze(0)
    return resize_uint8(chw, (height, width))[0].permute(1, 2, 0).contiguous().numpy()


def resize_batch(images: Sequence[torch.Tensor], size: tuple[int, int], method: str = CONTRACT_RESIZE) -> torch.Tensor:
    """uint8 ``[3, h, w]`` images of any sizes -> one uint8 ``[B, 3, H, W]`` batch on their device."""
    import torch

    check_method(method)
    if method == CONTRACT_RESIZE:
        from reid.data.transforms import to_batch

        return to_batch(list(images), size)
    out = [torch.from_numpy(resize_hwc(img.permute(1, 2, 0).cpu().numpy(), size, method)).permute(2, 0, 1)
           for img in images]
    return torch.stack(out).to(images[0].device) if out else torch.zeros((0, 3, *size), dtype=torch.uint8)
