"""What upload pipelines do to an image, real and differentiable.

A protection or a sanitised release is rarely seen as it left us: platforms re-encode it
as JPEG, resize it, crop it by a pixel or two and always store 8-bit pixels. This module
gives each of those operations in two forms, on float batches (B, 3, H, W) in [-1, 1]
(:mod:`services.kernels.data.base`):

- the REAL operation, for evaluation: :func:`jpeg` is a round trip through Pillow's
  libjpeg-turbo encoder and decoder (baseline, 4:2:0: Pillow's defaults), :func:`resize` a
  Pillow resize to round(H·s) and back, :func:`quantize` 8-bit rounding. No gradient; runs
  on CPU and returns on the input's device and dtype.
- a DIFFERENTIABLE approximation, for expectation over transformation (Athalye et al. 2018,
  "Synthesizing robust adversarial examples", §2) inside an attack or defence optimisation:
  :func:`jpeg_approx`, :func:`resize_approx`, :func:`shift_approx` (exact),
  :func:`quantize_ste`. Batched (each image on its own), on any device, keeping the graph;
  :func:`sample_transform` draws one pipeline at random, and its :meth:`Transform.real`
  applies the same draw for real.

:func:`jpeg_approx` follows the baseline codec (ITU-T T.81, Annex A and K; libjpeg's
defaults): RGB→YCbCr (JFIF), 8-bit samples, edge-replicated padding to a multiple of 16,
4:2:0 chroma by 2×2 averaging, 8×8 block DCT (orthonormal, as matmuls), quantisation by the
Annex K tables scaled by quality as libjpeg's ``jpeg_quality_scaling`` and
``jpeg_add_quant_table`` do (Pillow writes the same tables: a test checks), dequantisation,
inverse DCT, the decoder's range limit, chroma upsampling by libjpeg's "fancy" triangle
filter (3/4 and 1/4 weights, edges clamped: bilinear ×2 with half-pixel centres), YCbCr→RGB
and a clamp. Coefficient rounding is replaced by round(x) + (x − round(x))³ (Shin & Song
2017, "JPEG-resistant adversarial images", §3): within 1/8 of a step of the true rounding,
with derivative 3(x − round(x))² instead of zero, so gradients through it are scaled by
about 1/4 on average (E[3u²] for u uniform on [−½, ½]). The 8-bit sample rounding after
colour conversion and after chroma downsampling is straight-through (forward exact,
backward identity): without it the agreement on colour faces drops by 1.6–1.9 dB.

Not modelled: libjpeg's integer arithmetic (its islow DCT and IDCT, the alternating 1/2 bias
of its chroma downsampler, the rounding of decoded samples before upsampling and colour
conversion), the cube's own error (exact rounding would gain about 2 dB on LFW at q=75,
and no gradient), the 8-bit rounding of the output (:func:`sample_transform` adds
:func:`quantize_ste`), progressive, 4:4:4 or 4:2:2 encodings, and what real uploads also do
(EXIF rotation, ICC profiles, sharpening). Resizing: :func:`resize_approx` keeps floats
between the two resizes where Pillow stores 8 bits.

Measured agreement: PSNR of the MSE pooled over all pixels, approximation vs real and,
for scale, the untouched image vs real, on the first 100 LFW faces (grey, 25×25 upsampled)
and 64 synthfaces (seed 3, colour), all 32×32; ``python -m services.kernels.pipeline``
(CPU, one thread, a few seconds):

==================  ==================  ==================
real operation      identity vs real    approx vs real
                    LFW / synthfaces    LFW / synthfaces
==================  ==================  ==================
JPEG q=50           30.5 / 25.2 dB      46.1 / 42.0 dB
JPEG q=75           33.5 / 26.6 dB      47.5 / 43.4 dB
JPEG q=90           38.7 / 28.5 dB      50.8 / 44.0 dB
JPEG q=95           43.3 / 29.5 dB      52.2 / 45.0 dB
resize ×0.5 near.   21.2 / 21.0 dB      exact / exact
resize ×0.75 near.  23.8 / 23.8 dB      exact / exact
resize ×0.5 bilin.  23.5 / 23.7 dB      53.5 / 53.6 dB
resize ×0.75 bilin. 27.3 / 26.4 dB      53.8 / 53.9 dB
resize ×2 bilin.    30.3 / 28.7 dB      53.9 / 54.0 dB
resize ×0.5 bicub.  25.7 / 25.3 dB      54.4 / 53.7 dB
resize ×0.75 bicub. 31.1 / 28.3 dB      54.3 / 53.9 dB
resize ×2 bicub.    38.1 / 33.8 dB      55.8 / 54.9 dB
==================  ==================  ==================

(On the colour faces, nearest-neighbour chroma upsampling instead of the triangle filter
costs 5–8 dB. At 25, 33 and 40 pixels, where padding applies, synthfaces at q=75 agree to
41.9–42.9 dB; 45.0 dB at 64.) Pillow 13.0 with libjpeg-turbo, torch 2.13.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from services.kernels.checks import RANGE_TOLERANCE, KernelInputError, check_float_tensor

ImageOp = Callable[[torch.Tensor], torch.Tensor]
"""A batch (B, 3, H, W) in, a batch of the same shape out: what :func:`sample_transform` draws."""
Resample = Literal["nearest", "bilinear", "bicubic"]
RESAMPLE: tuple[Resample, ...] = ("nearest", "bilinear", "bicubic")
"""Filters both forms of resizing know; Pillow's and torch's (antialiased) agree on them."""
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

ROBUSTNESS = ("none", "jpeg", "full")
"""The transform families :func:`sample_transform` draws from."""
EOT_QUALITIES = (70, 95)
"""JPEG qualities (inclusive) the sampler draws: typical of upload pipelines."""
EOT_SCALES = (0.5, 2.0)
"""Resize factors the "full" sampler draws, log-uniformly."""
EOT_MAX_SHIFT = 2
"""Largest shift, in pixels per axis, the "full" sampler draws."""
EOT_PROBABILITY = 0.5
"""Chance of each optional step (resize, shift, JPEG) in the "full" sampler."""

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), row-major.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)
# JFIF (ITU-R BT.601 full range) RGB → YCbCr; Cb and Cr are offset by 128.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)


def _check_batch(images: object, name: str = "images") -> torch.Tensor:
    """A float (B, 3, H, W); the cheap structural check every approximation makes (no sync)."""
    expected = "float tensor (B, 3, H, W) in [-1, 1]"
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise KernelInputError(f"{name}: expected {expected}; got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
        raise KernelInputError(f"{name}: expected {expected}; got shape {tuple(images.shape)}")
    return images


def _check_values(images: object, name: str = "images") -> torch.Tensor:
    """:func:`_check_batch` plus finite values in [-1, 1], for the real operations."""
    images = _check_batch(check_float_tensor(images, name, "float tensor (B, 3, H, W)"), name)
    if images.numel() and float(images.detach().abs().max()) > 1.0 + RANGE_TOLERANCE:
        raise KernelInputError(f"{name}: expected values in [-1, 1]")
    return images


def _check_int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise KernelInputError(f"{name}: expected an integer in [{low}, {high}]; got {value!r}")
    if not low <= int(value) <= high:
        raise KernelInputError(f"{name}: expected an integer in [{low}, {high}]; got {value!r}")
    return int(value)


def _check_resample(resample: object) -> Resample:
    if resample not in RESAMPLE:
        raise KernelInputError(f"resample: expected one of {RESAMPLE}; got {resample!r}")
    return resample


def _scaled_size(images: torch.Tensor, scale: object) -> tuple[int, int]:
    """(round(H·s), round(W·s)), each at least 1; ``scale`` in (0, 8]."""
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise KernelInputError(f"scale: expected a number in (0, 8]; got {scale!r}")
    if not (math.isfinite(scale) and 0.0 < scale <= 8.0):
        raise KernelInputError(f"scale: expected a number in (0, 8]; got {scale!r}")
    height, width = images.shape[-2:]
    return max(1, round(height * scale)), max(1, round(width * scale))


# --------------------------------------------------------------------------- real operations


def _to_pil(image: torch.Tensor) -> Image.Image:
    pixels = ((image.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")


def _from_pil(picture: Image.Image) -> torch.Tensor:
    pixels = np.asarray(picture.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(127.5).sub_(1.0)


def _per_image(
    images: torch.Tensor, operation: Callable[[Image.Image], Image.Image]
) -> torch.Tensor:
    """Run a Pillow operation on each image; the result on the input's device and dtype."""
    source = images.detach().float().cpu()
    results = [_from_pil(operation(_to_pil(image))) for image in source]
    stacked = torch.stack(results) if results else source.clone()
    return stacked.to(device=images.device, dtype=images.dtype)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode each image as a baseline JPEG with Pillow (4:2:0) at ``quality`` and decode it."""
    images = _check_values(images)
    quality = _check_int(quality, "quality", 1, 100)

    def round_trip(picture: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")

    return _per_image(images, round_trip)


def resize(images: torch.Tensor, scale: float, resample: Resample = "bilinear") -> torch.Tensor:
    """Pillow-resize each image to (round(H·s), round(W·s)) and back to (H, W), 8-bit between."""
    images = _check_values(images)
    filter_ = _PIL_FILTERS[_check_resample(resample)]
    height, width = images.shape[-2:]
    small_h, small_w = _scaled_size(images, scale)
    return _per_image(
        images,
        lambda p: p.resize((small_w, small_h), filter_).resize((width, height), filter_),
    )


def quantize(images: torch.Tensor) -> torch.Tensor:
    """To 8-bit and back: round((x + 1)/2·255)/255·2 − 1, after clamping to [-1, 1]."""
    images = _check_batch(images)
    return ((images.detach().clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0


# ------------------------------------------------------------------------- differentiable JPEG


def _quality_scale(quality: int) -> int:
    """libjpeg's ``jpeg_quality_scaling``: percentage applied to the Annex K tables."""
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def quantization_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """(luminance, chrominance) 8×8 tables as libjpeg builds them for ``quality`` (baseline):
    (t·s + 50) // 100 clamped to [1, 255]; read-only."""
    return _tables(_check_int(quality, "quality", 1, 100))


@lru_cache(maxsize=128)
def _tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    scale = _quality_scale(quality)
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        table = (np.asarray(base, dtype=np.int64) * scale + 50) // 100
        table = np.clip(table, 1, 255)
        table.flags.writeable = False
        tables.append(table)
    return tables[0], tables[1]


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """The orthonormal 8-point DCT-II: D[k, n] = c_k cos((2n + 1)kπ/16), D·Dᵀ = I."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    matrix = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    matrix[0] /= np.sqrt(2)
    return matrix


def round_approx(x: torch.Tensor) -> torch.Tensor:
    """round(x) + (x − round(x))³ (Shin & Song 2017, §3): within 0.125 of round(x),
    derivative 3(x − round(x))² instead of zero almost everywhere."""
    rounded = torch.round(x)
    return rounded + (x - rounded) ** 3


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of 8 → (B, C, H/8, W/8, 8, 8)."""
    b, c, h, w = plane.shape
    return plane.reshape(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    b, c, hb, wb = blocks.shape[:4]
    return blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, hb * 8, wb * 8)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward: libjpeg's 8-bit samples."""
    return x + (torch.round(x) - x).detach()


def _codec(plane: torch.Tensor, table: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """Level shift, block DCT, approximate quantisation, dequantisation, inverse DCT and
    the decoder's range limit to [0, 255]."""
    coefficients = dct @ _blocks(plane - 128.0) @ dct.T
    coefficients = round_approx(coefficients / table) * table
    return (_unblocks(dct.T @ coefficients @ dct) + 128.0).clamp(0.0, 255.0)


def jpeg_approx(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Differentiable baseline JPEG (4:2:0) at ``quality``; see the module docstring for what
    it models and how closely it follows :func:`jpeg`. Each image is coded on its own.
    Half-precision input is coded in float32 (DCT sums reach ±2040, beyond fp16's unit
    precision) and returned in its own dtype."""
    images = _check_batch(images)
    quality = _check_int(quality, "quality", 1, 100)
    height, width = images.shape[-2:]
    work = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    luma_table, chroma_table = (work.new_tensor(table) for table in _tables(quality))
    dct, to_ycc = work.new_tensor(_dct_matrix()), work.new_tensor(_RGB_TO_YCBCR)
    offset = work.new_tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)

    pad_h, pad_w = -height % 16, -width % 16
    pixels = (work + 1.0) * 127.5
    if pad_h or pad_w:
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
    ycc = _round_ste(torch.einsum("ij,bjhw->bihw", to_ycc, pixels) + offset)
    luma = _codec(ycc[:, :1], luma_table, dct)
    chroma = _codec(_round_ste(F.avg_pool2d(ycc[:, 1:], 2)), chroma_table, dct)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False) - 128.0
    rgb = torch.cat(
        (
            luma + 1.402 * chroma[:, 1:],
            luma - 0.344136286 * chroma[:, :1] - 0.714136286 * chroma[:, 1:],
            luma + 1.772 * chroma[:, :1],
        ),
        dim=1,
    )
    out = rgb[..., :height, :width].clamp(0.0, 255.0) / 127.5 - 1.0
    return out.to(images.dtype)


# ---------------------------------------------------------------- other differentiable forms


@lru_cache(maxsize=256)
def _nearest_indices(size_in: int, size_out: int) -> tuple[int, ...]:
    """The source pixel Pillow's NEAREST resize reads for each output pixel.

    Pillow accumulates the centre coordinate in float64 (x₀ = s/2, then += s with
    s = in/out) and truncates, so a centre landing exactly on a pixel boundary may fall to
    the pixel before; ``floor((i + ½)·s)`` (torch's "nearest-exact") misses those.
    """
    step = size_in / size_out
    position, indices = 0.5 * step, []
    for _ in range(size_out):
        indices.append(min(int(position), size_in - 1))
        position += step
    return tuple(indices)


def _nearest(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    rows = torch.tensor(_nearest_indices(images.shape[-2], size[0]), device=images.device)
    cols = torch.tensor(_nearest_indices(images.shape[-1], size[1]), device=images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


def _interpolate(images: torch.Tensor, size: tuple[int, int], mode: Resample) -> torch.Tensor:
    if mode == "nearest":
        return _nearest(images, size)
    return F.interpolate(images, size=size, mode=mode, antialias=True)


def resize_approx(images: torch.Tensor, scale: float, mode: Resample = "bilinear") -> torch.Tensor:
    """Resize to (round(H·s), round(W·s)) and back, clamped to [-1, 1]; the float twin of
    :func:`resize` (no 8-bit rounding in between).

    Bilinear and bicubic use torch's antialiased kernels, which follow Pillow's (support
    widened when shrinking; bicubic a = −0.5); nearest reads the pixels Pillow reads, so on
    8-bit images it equals :func:`resize` exactly.
    """
    images = _check_batch(images)
    mode = _check_resample(mode)
    height, width = images.shape[-2:]
    small = _interpolate(images, _scaled_size(images, scale), mode)
    return _interpolate(small, (height, width), mode).clamp(-1.0, 1.0)


def shift_approx(
    images: torch.Tensor,
    dx: int,
    dy: int,
    padding: Literal["replicate", "reflect"] = "replicate",
) -> torch.Tensor:
    """Move the content ``dx`` pixels right and ``dy`` down (negative: left, up), filling the
    uncovered border by edge replication or reflection. Exact, so also the real operation."""
    images = _check_batch(images)
    height, width = images.shape[-2:]
    dx = _check_int(dx, "dx", -(width - 1), width - 1)
    dy = _check_int(dy, "dy", -(height - 1), height - 1)
    if padding not in ("replicate", "reflect"):
        raise KernelInputError(f"padding: expected 'replicate' or 'reflect'; got {padding!r}")
    if dx == 0 and dy == 0:
        return images
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode=padding)
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + height, left : left + width]


def quantize_ste(images: torch.Tensor) -> torch.Tensor:
    """8-bit rounding with a straight-through gradient: forward :func:`quantize`, backward
    the identity (Bengio et al. 2013, "Estimating or propagating gradients through ...")."""
    images = _check_batch(images)
    return images + (quantize(images) - images).detach()


# ------------------------------------------------------------------------------------ sampler


@dataclass(frozen=True)
class Transform:
    """One drawn pipeline: resize, then shift, then JPEG, then 8-bit rounding; each optional.
    Calling it applies the differentiable forms; :meth:`real` the real ones."""

    scale: float | None = None
    mode: Resample = "bilinear"
    shift: tuple[int, int] = (0, 0)
    """(dx, dy) in pixels."""
    quality: int | None = None
    quantize: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            images = resize_approx(images, self.scale, self.mode)
        images = shift_approx(images, *self.shift)
        if self.quality is not None:
            images = jpeg_approx(images, self.quality)
        return quantize_ste(images) if self.quantize else images

    def real(self, images: torch.Tensor) -> torch.Tensor:
        """The same pipeline with Pillow's resize and JPEG (no gradient)."""
        images = _check_values(images).detach()
        if self.scale is not None:
            images = resize(images, self.scale, self.mode)
        images = shift_approx(images, *self.shift)
        if self.quality is not None:
            images = jpeg(images, self.quality)
        return quantize(images) if self.quantize else images


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, device=generator.device))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform on {low, …, high}."""
    return int(torch.randint(low, high + 1, (), generator=generator, device=generator.device))


def sample_transform(robustness: str, generator: torch.Generator) -> Transform:
    """Draw one differentiable pipeline for expectation over transformation.

    - ``"none"``: the identity (``Transform()``; no draw is made).
    - ``"jpeg"``: :func:`jpeg_approx` with quality uniform on the integers {70, …, 95}, then
      :func:`quantize_ste`.
    - ``"full"``: each step independently with probability 1/2, in this order: resize with
      scale log-uniform on [0.5, 2] (so shrinking and enlarging are equally likely) and mode
      uniform on ("nearest", "bilinear", "bicubic"); a shift with dx and dy each uniform on
      {−2, …, 2}; JPEG with quality uniform on {70, …, 95}; then always :func:`quantize_ste`.

    The draws come from ``generator`` only (on its own device), in a fixed order and number
    per robustness, so the same seed gives the same sequence of transforms.
    """
    if robustness not in ROBUSTNESS:
        raise KernelInputError(f"robustness: expected one of {ROBUSTNESS}; got {robustness!r}")
    if not isinstance(generator, torch.Generator):
        raise KernelInputError(f"generator: expected a torch.Generator; got {generator!r:.60}")
    if robustness == "none":
        return Transform()
    if robustness == "jpeg":
        return Transform(quality=_integer(generator, *EOT_QUALITIES), quantize=True)
    flips = [_uniform(generator) < EOT_PROBABILITY for _ in range(3)]
    low, high = (math.log(s) for s in EOT_SCALES)
    scale = math.exp(low + (high - low) * _uniform(generator))
    mode = RESAMPLE[_integer(generator, 0, len(RESAMPLE) - 1)]
    shift = tuple(_integer(generator, -EOT_MAX_SHIFT, EOT_MAX_SHIFT) for _ in range(2))
    quality = _integer(generator, *EOT_QUALITIES)
    return Transform(
        scale=scale if flips[0] else None,
        mode=mode if flips[0] else "bilinear",
        shift=(shift[0], shift[1]) if flips[1] else (0, 0),
        quality=quality if flips[2] else None,
        quantize=True,
    )


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of the MSE pooled over all pixels of two [-1, 1] batches (peak-to-peak 2);
    pooled, unlike :func:`services.kernels.metrics.psnr`, so exact images do not give inf."""
    mse = float((a - b).pow(2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(4.0 / mse)


def _agreement() -> None:
    """Print the module docstring's table (single-threaded, CPU)."""
    from services.kernels.data import LfwSubset, SynthFaces, from_uint8

    torch.set_num_threads(1)
    lfw, synth = LfwSubset(resolution=32), SynthFaces(n=64, seed=3, resolution=32)
    sets = {
        "LFW": torch.stack([lfw[i]["image"] for i in range(100)]),
        "synthfaces": torch.stack([from_uint8(synth.pixels(i)) for i in range(64)]),
    }
    Op = Callable[..., torch.Tensor]
    cases: list[tuple[str, Op, Op, tuple[object, ...]]] = [
        (f"JPEG q={q}", jpeg, jpeg_approx, (q,)) for q in (50, 75, 90, 95)
    ]
    cases += [
        (f"resize x{s} {m}", resize, resize_approx, (s, m))
        for m in RESAMPLE
        for s in (0.5, 0.75, 2.0)
    ]
    for label, real_op, approx_op, args in cases:
        for name, images in sets.items():
            real = real_op(images, *args)
            identity, approx = _psnr(images, real), _psnr(approx_op(images, *args), real)
            print(f"{label:20} {name:10} identity {identity:5.1f} dB  approx {approx:5.1f} dB")


if __name__ == "__main__":
    _agreement()
