"""The checks the protection core runs on every answer: the same real operations as the
kernels' pipeline (which the protection is optimised against), without torch in the core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.inference.backend import ROBUSTNESS
from services.kernels import pipeline
from services.kernels.data.synthfaces import SynthFaces
from services.protection import transforms


def photo(size: int = 32) -> np.ndarray:
    return SynthFaces(n=1, seed=5, resolution=size).pixels(0)


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float()[None] / 127.5 - 1.0


def as_pixels(images: torch.Tensor) -> np.ndarray:
    return ((images[0] + 1.0) * 127.5).round().byte().permute(1, 2, 0).numpy()


def test_what_is_checked_is_what_the_kernels_optimise_for() -> None:
    assert transforms.JPEG_QUALITIES == pipeline.EOT_QUALITIES
    assert set(transforms.OPTIMISED_FOR) == set(transforms.CHECKS) == set(ROBUSTNESS)
    assert transforms.covers_jpeg("jpeg") and transforms.covers_jpeg("full")
    assert not transforms.covers_jpeg("none")


@pytest.mark.parametrize("quality", [70, 85, 95])
def test_jpeg_is_the_kernels_pillow_jpeg(quality: int) -> None:
    pixels = photo()
    expected = as_pixels(pipeline.jpeg(as_tensor(pixels), quality))
    got = transforms.jpeg(pixels, quality)
    assert np.array_equal(got, expected) and not np.array_equal(got, pixels)


def test_resize_is_the_kernels_bilinear_resize() -> None:
    pixels = photo()
    expected = as_pixels(pipeline.resize(as_tensor(pixels), 0.5, "bilinear"))
    assert np.array_equal(transforms.resize(pixels, 0.5), expected)


def test_shift_is_the_kernels_shift_and_scales_with_the_photo() -> None:
    pixels = photo()
    expected = as_pixels(pipeline.shift_approx(as_tensor(pixels), 2, 2))
    assert np.array_equal(transforms.operation("shift 2px", 32)(pixels), expected)
    big = photo(64)  # protected at 32 px: the same shift is 4 px at 64
    assert np.array_equal(transforms.operation("shift 2px", 32)(big), transforms.shift(big, 4))
    assert np.array_equal(transforms.shift(big, 4)[4:, 4:], big[:-4, :-4])


def test_margins_and_unknown_checks() -> None:
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    assert transforms.margins(logits, 0).tolist() == [1.5, -3.0]
    with pytest.raises(ValueError):
        transforms.operation("blur 3px", 32)
