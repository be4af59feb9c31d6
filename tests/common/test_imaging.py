import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.common.errors import InvalidImage
from services.common.imaging import ImageLimits, decode_image, encode_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims ``width × height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)


def test_png_and_lossless_webp_round_trip_exactly(rgb):
    for fmt in ("PNG", "WEBP"):
        decoded = decode_image(encode_image(rgb, fmt, quality=100))
        assert decoded.format == fmt
        assert (decoded.width, decoded.height, decoded.channels) == (32, 24, 3)
        np.testing.assert_array_equal(decoded.pixels, rgb)


def test_jpeg_decodes_close(rgb):
    smooth = np.full_like(rgb, 128)
    decoded = decode_image(encode_image(smooth, "JPEG"))
    assert decoded.format == "JPEG"
    assert np.abs(decoded.pixels.astype(int) - 128).max() <= 2


def test_grey_and_rgba_become_rgb():
    grey = io.BytesIO()
    Image.new("L", (16, 16), 77).save(grey, "PNG")
    out = decode_image(grey.getvalue())
    assert out.channels == 1 and out.pixels.shape == (16, 16, 3) and (out.pixels == 77).all()
    rgba = io.BytesIO()
    Image.new("RGBA", (16, 16), (1, 2, 3, 4)).save(rgba, "PNG")
    assert decode_image(rgba.getvalue()).channels == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "could not be decoded"),
        (bomb_png(100_000, 100_000), "largest side|decompression bomb"),
        (bomb_png(5000, 5000), "pixels"),
    ],
    ids=["empty", "garbage", "huge-bomb", "pixel-bomb"],
)
def test_refuses_bad_images(data, message):
    with pytest.raises(InvalidImage, match=message):
        decode_image(data, ImageLimits(max_pixels=4096 * 4096, max_side=8192))


def test_bomb_is_refused_before_decoding(monkeypatch):
    called = []
    monkeypatch.setattr(Image.Image, "load", lambda self: called.append(1))
    with pytest.raises(InvalidImage):
        decode_image(bomb_png(20_000, 20_000))
    assert not called


def test_truncated_png_is_refused(rgb):
    data = encode_image(rgb, "PNG")
    with pytest.raises(InvalidImage, match="could not be decoded"):
        decode_image(data[: len(data) // 2])


def test_limits_bytes_format_channels_and_frames(rgb):
    png = encode_image(rgb, "PNG")
    with pytest.raises(InvalidImage, match="bytes") as info:
        decode_image(png, ImageLimits(max_bytes=len(png) - 1))
    assert info.value.details["limit"] == "max_bytes"
    with pytest.raises(InvalidImage, match="format PNG"):
        decode_image(png, ImageLimits(formats=["JPEG"]))
    gif = io.BytesIO()
    Image.fromarray(rgb).save(gif, "GIF")
    with pytest.raises(InvalidImage, match="GIF"):
        decode_image(gif.getvalue())
    with pytest.raises(InvalidImage, match="channels"):
        decode_image(png, ImageLimits(channels=[1]))
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    anim = io.BytesIO()
    frames[0].save(anim, "WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidImage, match="multi-frame"):
        decode_image(anim.getvalue())
    with pytest.raises(InvalidImage, match="smallest side"):
        decode_image(encode_image(rgb[:4, :4], "PNG"))


def test_encode_refuses_wrong_arrays(rgb):
    with pytest.raises(InvalidImage, match="uint8"):
        encode_image(rgb.astype(np.float32))
    with pytest.raises(InvalidImage, match="cannot encode"):
        encode_image(rgb, "BMP")
