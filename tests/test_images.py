"""Image decoding: RGB uint8 tensors, and corrupt files reported by path under both policies."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid.data.images import decode_image, find_corrupt, load_images
from reid.data.samples import Sample
from reid.errors import CorruptImageError, DatasetError


def gradient(h: int = 24, w: int = 12) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y * 10, x * 20, np.full_like(x, 128)], axis=-1).astype(np.uint8)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    rgb = gradient()
    paths = {"png": tmp_path / "a.png", "jpg": tmp_path / "b.jpg", "gray": tmp_path / "c.png",
             "bmp": tmp_path / "d.bmp", "garbage": tmp_path / "e.jpg", "truncated": tmp_path / "f.jpg",
             "empty": tmp_path / "g.jpg"}
    Image.fromarray(rgb).save(paths["png"])
    Image.fromarray(rgb).save(paths["jpg"], quality=95)
    Image.fromarray(rgb[..., 0]).save(paths["gray"])
    Image.fromarray(rgb).save(paths["bmp"])
    paths["garbage"].write_bytes(b"this is not an image" * 20)
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(big, quality=95)
    data = big.read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["empty"].write_bytes(b"")
    return paths


def test_decode_png_exactly_and_jpeg_closely(files: dict[str, Path]) -> None:
    png = decode_image(str(files["png"]))
    assert png.dtype == torch.uint8 and png.shape == (3, 24, 12)
    assert torch.equal(png, torch.from_numpy(gradient()).permute(2, 0, 1))
    jpg = decode_image(str(files["jpg"]))
    assert jpg.shape == (3, 24, 12)
    assert (jpg.int() - png.int()).abs().float().mean() < 4


def test_grayscale_becomes_three_equal_channels(files: dict[str, Path]) -> None:
    gray = decode_image(str(files["gray"]))
    assert gray.shape == (3, 24, 12)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.equal(gray[0], torch.from_numpy(gradient()[..., 0]))


def test_bmp_decodes_like_png(files: dict[str, Path]) -> None:
    assert torch.equal(decode_image(str(files["bmp"])), decode_image(str(files["png"])))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_files_raise_naming_the_path(files: dict[str, Path], kind: str) -> None:
    with pytest.raises(CorruptImageError) as err:
        decode_image(str(files[kind]))
    assert str(files[kind]) in str(err.value)
    assert "corrupt_images=skip" in str(err.value)
    assert isinstance(err.value, DatasetError)  # callers may catch the broader dataset error


def test_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CorruptImageError, match="not found"):
        decode_image(str(tmp_path / "gone.jpg"))


def samples_of(files: dict[str, Path], kinds: list[str]) -> list[Sample]:
    return [Sample(str(files[k]), i, 1) for i, k in enumerate(kinds)]


def test_load_images_fail_policy_raises(files: dict[str, Path]) -> None:
    with pytest.raises(CorruptImageError, match="f.jpg"):
        load_images(samples_of(files, ["png", "truncated", "jpg"]), policy="fail")


def test_load_images_skip_policy_keeps_the_rest_and_warns_per_file(files: dict[str, Path],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    samples = samples_of(files, ["png", "garbage", "jpg", "truncated", "gray"])
    with caplog.at_level(logging.WARNING, logger="reid.data.images"):
        images, kept = load_images(samples, policy="skip")
    assert kept == [0, 2, 4]
    assert len(images) == 3 and all(img.shape == (3, 24, 12) for img in images)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert str(files["garbage"]) in warnings[0] and str(files["truncated"]) in warnings[1]


def test_unknown_policy_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(DatasetError, match="'fail' or 'skip'"):
        load_images(samples_of(files, ["png"]), policy="ignore")  # type: ignore[arg-type]


def test_find_corrupt_lists_every_bad_file_in_order(files: dict[str, Path]) -> None:
    found = find_corrupt(samples_of(files, ["empty", "png", "garbage", "jpg", "truncated"]), threads=2)
    assert [index for index, _ in found] == [0, 2, 4]
    assert str(files["garbage"]) in found[1][1]
