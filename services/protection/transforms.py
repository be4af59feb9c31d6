"""What an image pipeline does to a protected image, with the real codecs, in numpy.

The kernels optimise a protection to survive a family of transformations
(:mod:`services.kernels.pipeline`: ``none``, ``jpeg``, ``full``). For each image it returns,
the core measures the authorized model after the edges of the family the protection was
optimised for: the returned image itself, a real JPEG at the lowest and highest quality the
family covers, and for ``full`` a 0.5× resize and a 2-pixel shift. The measurements are of
that image only; they bound nothing about other pipelines.

Pillow and numpy only: the core loads no torch. The JPEG and the resize are Pillow's, like
:func:`services.kernels.pipeline.jpeg` and :func:`~services.kernels.pipeline.resize`
(baseline JPEG, Pillow's default 4:2:0 subsampling; bilinear down and back up), applied at
the image's own size, which is where a platform applies them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

JPEG_QUALITIES = (70, 95)
"""The JPEG qualities ``jpeg`` and ``full`` are optimised for, inclusive
(``services.kernels.pipeline.EOT_QUALITIES``; a test holds the two equal)."""
DEFAULT_JPEG_QUALITY = 90
"""The quality of a JPEG answer whose request names none."""
SHIFT_PX = 2
"""The shift checked for ``full``, in pixels at the authorized model's resolution."""

OPTIMISED_FOR: dict[str, tuple[str, ...]] = {
    "none": ("8-bit rounding",),
    "jpeg": (f"jpeg q{JPEG_QUALITIES[0]}-{JPEG_QUALITIES[1]}", "8-bit rounding"),
    "full": (
        f"jpeg q{JPEG_QUALITIES[0]}-{JPEG_QUALITIES[1]}",
        "resize 0.5-2x",
        f"shift {SHIFT_PX}px",
        "8-bit rounding",
    ),
}
"""Per robustness, the transformations the protection was optimised to survive, by name."""

CHECKS: dict[str, tuple[str, ...]] = {
    "none": (),
    "jpeg": tuple(f"jpeg q{q}" for q in JPEG_QUALITIES),
    "full": (*(f"jpeg q{q}" for q in JPEG_QUALITIES), "resize 0.5x", f"shift {SHIFT_PX}px"),
}
"""Per robustness, the transformations checked on every returned image (besides the image
as returned): the edges of what it was optimised for."""

AS_RETURNED = "as returned"


def covers_jpeg(robustness: str) -> bool:
    """Whether a protection optimised for ``robustness`` may be answered as a JPEG."""
    return robustness in ("jpeg", "full")


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 encoded as a baseline JPEG at ``quality`` and decoded."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def resize(pixels: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 resized by ``scale`` and back, bilinear, 8-bit between."""
    height, width = pixels.shape[:2]
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = Image.fromarray(pixels, "RGB").resize(small, Image.Resampling.BILINEAR)
    return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def shift(pixels: np.ndarray, pixels_right_down: int) -> np.ndarray:
    """Moved right and down by ``pixels_right_down``; the top and left edges repeated."""
    k = max(0, int(pixels_right_down))
    if k == 0:
        return pixels
    padded = np.pad(pixels, ((k, 0), (k, 0), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[: pixels.shape[0], : pixels.shape[1]])


def operation(name: str, resolution: int) -> Callable[[np.ndarray], np.ndarray]:
    """The transformation named in :data:`CHECKS`, for an image protected at the authorized
    model's ``resolution`` (the shift scales with the image's width)."""
    if name.startswith("jpeg q"):
        quality = int(name.removeprefix("jpeg q"))
        return lambda p: jpeg(p, quality)
    if name == "resize 0.5x":
        return lambda p: resize(p, 0.5)
    if name == f"shift {SHIFT_PX}px":
        return lambda p: shift(p, max(1, round(SHIFT_PX * p.shape[1] / resolution)))
    raise ValueError(f"unknown check {name!r}")


def margins(logits: np.ndarray, label: int) -> np.ndarray:
    """Per row: the logit of ``label`` minus the largest other logit."""
    logits = np.asarray(logits, dtype=np.float64)
    others = np.delete(logits, label, axis=1)
    return logits[:, label] - others.max(axis=1)
