"""The one image codec every service uses, with explicit limits.

Images cross the wire as encoded bytes (PNG, JPEG, WebP). Decoding checks, in order:
the encoded size, the container format (sniffed from the bytes, never trusted from a
hint), the frame count, then width/height/pixels **from the header, before any pixel is
decoded** — so a decompression bomb (a tiny file that claims a huge canvas) is refused
without allocating it. Pixels come back as ``uint8`` RGB ``(H, W, 3)``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from services.common.errors import InvalidImage

_CHANNELS = {
    "1": 1,
    "L": 1,
    "P": 3,
    "LA": 2,
    "PA": 4,
    "RGB": 3,
    "RGBA": 4,
    "CMYK": 4,
    "YCbCr": 3,
    "I;16": 1,
    "I": 1,
    "F": 1,
}


class ImageLimits(BaseModel):
    """Limits every decoded image must meet; anything else is INVALID_ARGUMENT."""

    max_bytes: int = 8 * 1024 * 1024
    """Largest encoded image accepted, in bytes."""
    max_pixels: int = 4096 * 4096
    """Largest width × height, checked from the header before any pixel is decoded."""
    max_side: int = 8192
    """Largest width or height in pixels."""
    min_side: int = 8
    """Smallest width or height in pixels."""
    formats: list[str] = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP"])
    """Accepted container formats, as Pillow names them."""
    channels: list[int] = Field(default_factory=lambda: [1, 3, 4])
    """Accepted channel counts of the source (grey, RGB, RGBA); output is always RGB."""


@dataclass(frozen=True)
class DecodedImage:
    """Pixels and what the header said about them."""

    pixels: np.ndarray
    """``uint8`` array of shape (H, W, 3), RGB."""
    format: str
    width: int
    height: int
    channels: int
    """Channels of the source (before conversion to RGB)."""
    encoded_bytes: int


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode ``data`` to RGB pixels, refusing anything outside ``limits``.

    Raises :class:`InvalidImage` (INVALID_ARGUMENT) with a message that says which limit.
    """
    limits = limits or ImageLimits()
    if not data:
        raise InvalidImage("image is empty")
    if len(data) > limits.max_bytes:
        raise InvalidImage(
            f"image is {len(data)} bytes; the limit is {limits.max_bytes}",
            details={"limit": "max_bytes", "max_bytes": limits.max_bytes},
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=None)
            _check_header(image, limits)
            image.load()
            channels = _CHANNELS.get(image.mode, 3)
            rgb = image.convert("RGB")
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"image could not be decoded: {type(exc).__name__}") from None
    if channels not in limits.channels:
        raise InvalidImage(f"image has {channels} channels; accepted: {limits.channels}")
    return DecodedImage(
        pixels=np.asarray(rgb, dtype=np.uint8),
        format=str(image.format),
        width=image.width,
        height=image.height,
        channels=channels,
        encoded_bytes=len(data),
    )


def _check_header(image: Image.Image, limits: ImageLimits) -> None:
    fmt = image.format or "unknown"
    if fmt not in limits.formats:
        raise InvalidImage(f"image format {fmt} is not accepted; accepted: {limits.formats}")
    if getattr(image, "n_frames", 1) != 1:
        raise InvalidImage("animated or multi-frame images are not accepted")
    width, height = image.size
    if min(width, height) < limits.min_side:
        raise InvalidImage(
            f"image is {width}x{height}; the smallest side allowed is {limits.min_side}"
        )
    if max(width, height) > limits.max_side:
        raise InvalidImage(
            f"image is {width}x{height}; the largest side allowed is {limits.max_side}",
            details={"limit": "max_side", "max_side": limits.max_side},
        )
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"image has {width * height} pixels; the limit is {limits.max_pixels}",
            details={"limit": "max_pixels", "max_pixels": limits.max_pixels},
        )


def encode_image(pixels: np.ndarray, fmt: str = "PNG", *, quality: int = 95) -> bytes:
    """Encode ``uint8`` pixels of shape (H, W, 3) or (H, W) as PNG, JPEG or WebP bytes."""
    array = np.asarray(pixels)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] != 3)
    ):
        raise InvalidImage(f"expected uint8 (H, W, 3) or (H, W); got {array.dtype} {array.shape}")
    fmt = fmt.upper()
    if fmt not in ("PNG", "JPEG", "WEBP"):
        raise InvalidImage(f"cannot encode as {fmt}; use PNG, JPEG or WEBP")
    buffer = io.BytesIO()
    params = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "WEBP" and quality >= 100:
        params = {"lossless": True}
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()
