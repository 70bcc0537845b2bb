"""Batch augmentation semantics, checked on the CPU against a per-image reference written here."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from reid.data.transforms import (
    TestTransform,
    TrainAugment,
    flip_pad_crop,
    normalize,
    resize_uint8,
    sample_params,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def data_cfg(**kw: object) -> SimpleNamespace:
    base = dict(height=32, width=16, mean=MEAN, std=STD, flip_prob=0.5, padding=3, random_erasing_prob=0.5)
    base.update(kw)
    return SimpleNamespace(**base)


def images(b: int = 8, h: int = 32, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def manual_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def test_normalisation_matches_manual_computation() -> None:
    x = images()
    assert torch.allclose(normalize(x, MEAN, STD), manual_normalize(x), atol=1e-6)
    out = TrainAugment(data_cfg(flip_prob=0.0, padding=0, random_erasing_prob=0.0))(x, gen())
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, manual_normalize(x), atol=1e-6)


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_flip_mirrors_left_right(prob: float) -> None:
    x = images()
    out = TrainAugment(data_cfg(flip_prob=prob, padding=0, random_erasing_prob=0.0))(x, gen())
    expected = x.flip(-1) if prob == 1.0 else x
    assert torch.allclose(out, manual_normalize(expected), atol=1e-6)


def reference(x: torch.Tensor, params, padding: int) -> torch.Tensor:
    """Per image, the PIL-chain order: flip, zero pad, crop, to float, normalise, erase."""
    outs = []
    for b in range(x.shape[0]):
        img = x[b]
        if int(params.flip[b]):
            img = img.flip(-1)
        padded = F.pad(img, (padding,) * 4)
        dy, dx = int(params.crop_y[b]), int(params.crop_x[b])
        img = padded[:, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        img = manual_normalize(img.unsqueeze(0))[0]
        if int(params.erase[b]):
            y, xx, h, w = (int(params.erase_y[b]), int(params.erase_x[b]), int(params.erase_h[b]),
                           int(params.erase_w[b]))
            for c in range(3):
                img[c, y:y + h, xx:xx + w] = MEAN[c]
        outs.append(img)
    return torch.stack(outs)


def test_full_augmentation_equals_the_per_image_reference() -> None:
    cfg = data_cfg()
    aug = TrainAugment(cfg)
    x = images(32)
    params = aug.sample(32, gen(4))
    out = aug.apply(x, params)
    assert torch.allclose(out, reference(x, params, cfg.padding), atol=1e-6)
    assert 0 < int(params.flip.sum()) < 32 and 0 < int(params.erase.sum()) < 32  # both branches exercised
    # __call__ is sample + apply with the same generator stream
    assert torch.equal(aug(x, gen(4)), out)


def test_crop_offsets_stay_within_padding_and_cover_the_range() -> None:
    p = sample_params(4000, 32, 16, 0.5, 3, 0.5, gen(1))
    for off in (p.crop_y, p.crop_x):
        assert int(off.min()) == 0 and int(off.max()) == 6
    # a pure shift: content moves by (offset - padding) and the uncovered border is black (zero)
    x = torch.full((1, 3, 8, 8), 200, dtype=torch.uint8)
    out = flip_pad_crop(x, torch.tensor([0]), torch.tensor([0]), torch.tensor([5]), padding=3)
    assert (out[0, :, :3, :] == 0).all()  # shifted down by 3: top rows come from the padding
    assert (out[0, :, 3:, :6] == 200).all() and (out[0, :, 3:, 6:] == 0).all()  # shifted left by 2


def test_erasing_rectangles_follow_the_strong_baseline_distribution() -> None:
    n, height, width = 4000, 256, 128
    p = sample_params(n, height, width, 0.5, 10, 0.5, gen(2))
    erased = p.erase.bool()
    rate = erased.float().mean().item()
    assert 0.46 < rate < 0.54
    assert 0.46 < p.flip.float().mean().item() < 0.54
    h, w = p.erase_h[erased].double(), p.erase_w[erased].double()
    y, x = p.erase_y[erased], p.erase_x[erased]
    assert (h < height).all() and (w < width).all() and (h >= 1).all() and (w >= 1).all()
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= height).all() and (x + w <= width).all()
    area = h * w / (height * width)
    # h and w are rounded, so the ratio can leave [0.02, 0.4] by a little
    assert area.min() > 0.018 and area.max() < 0.42
    aspect = h / w
    assert aspect.min() > 0.3 * 0.9 and aspect.max() < (1 / 0.3) * 1.1
    assert (p.erase_h[~erased] == 0).all() and (p.erase_w[~erased] == 0).all()
    # wide rectangles (w >= W) are rejected and redrawn, so tall ones dominate the upper aspect range
    assert (aspect > 1).float().mean() > 0.5


def test_erased_pixels_hold_the_fill_and_nothing_else_changes() -> None:
    cfg = data_cfg(flip_prob=0.0, padding=0, random_erasing_prob=1.0)
    aug = TrainAugment(cfg)
    x = images(16)
    params = aug.sample(16, gen(9))
    out = aug.apply(x, params)
    plain = manual_normalize(x)
    for b in range(16):
        assert int(params.erase[b]) == 1
        y, xx, h, w = (int(params.erase_y[b]), int(params.erase_x[b]), int(params.erase_h[b]), int(params.erase_w[b]))
        inside = torch.zeros(32, 16, dtype=torch.bool)
        inside[y:y + h, xx:xx + w] = True
        for c in range(3):
            assert torch.all(out[b, c][inside] == torch.tensor(cfg.mean[c]))  # the normalisation mean
            assert torch.allclose(out[b, c][~inside], plain[b, c][~inside], atol=1e-6)


def test_same_seed_same_output_other_seed_differs() -> None:
    aug = TrainAugment(data_cfg())
    x = images(16)
    assert torch.equal(aug(x, gen(3)), aug(x, gen(3)))
    assert not torch.equal(aug(x, gen(3)), aug(x, gen(4)))
    torch.manual_seed(0)
    a = aug(x, gen(3))
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(a, aug(x, gen(3)))


def test_generator_advances_the_same_amount_whatever_is_drawn() -> None:
    g1, g2 = gen(0), gen(0)
    sample_params(8, 32, 16, 0.0, 0, 0.0, g1)
    sample_params(8, 32, 16, 1.0, 5, 1.0, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_slices_of_global_parameters_equal_rows_of_the_global_batch() -> None:
    aug = TrainAugment(data_cfg())
    x = images(8)
    params = aug.sample(8, gen(5))
    full = aug.apply(x, params)
    halves = [aug.apply(x[i:i + 4], params.slice(i, i + 4)) for i in (0, 4)]
    assert torch.equal(torch.cat(halves), full)


def test_resize_matches_torchvision_and_handles_lists_of_sizes() -> None:
    from torchvision.transforms.v2 import functional as TF

    x = images(2, 50, 30)
    ours = resize_uint8(x, (32, 16))
    assert ours.dtype == torch.uint8 and ours.shape == (2, 3, 32, 16)
    tv = TF.resize(x.float(), [32, 16], antialias=True)
    assert torch.equal(ours.float(), tv.round().clamp(0, 255))  # same filter, rounded back to uint8
    assert resize_uint8(x, (50, 30)) is x
    mixed = [images(1, 50, 30)[0], images(1, 32, 16, seed=1)[0], images(1, 20, 10, seed=2)[0]]
    out = TestTransform(data_cfg())(mixed)
    assert out.shape == (3, 3, 32, 16)
    assert torch.allclose(out[1], manual_normalize(mixed[1].unsqueeze(0))[0], atol=1e-6)
    assert torch.allclose(out[0], manual_normalize(resize_uint8(mixed[0].unsqueeze(0), (32, 16)))[0], atol=1e-6)


def test_batch_resize_equals_per_image_resize() -> None:
    """The CPU loader resizes per image, the image store per batch: they must agree bit for bit."""
    x = images(6, 16, 8)
    batch = resize_uint8(x, (32, 16))
    single = torch.cat([resize_uint8(x[i:i + 1], (32, 16)) for i in range(6)])
    assert torch.equal(batch, single)


def test_rejects_non_uint8_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        TrainAugment(data_cfg())(images().float(), gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_applies_the_same_decisions_as_the_cpu() -> None:
    aug = TrainAugment(data_cfg(height=64, width=32))
    x = images(16, 32, 16)  # upsampled on the device
    params = aug.sample(16, gen(6))
    cpu = aug.apply(x, params)
    cuda = aug.apply(x.cuda(), params)
    assert cuda.device.type == "cuda"
    # identical decisions; pixel values may differ by one uint8 level where a resize rounds differently
    assert (cuda.cpu() - cpu).abs().max() < 1.5 / 255 / min(STD)
