"""Real and differentiable image-pipeline operations (services/kernels/pipeline.py).

Agreement bounds were measured on these very faces (PSNR pooled over the batch; the
module docstring has the larger table): JPEG approx vs real 48.9 / 51.2 dB on LFW at
q=75 / 90 where the untouched image is at 33.8 / 38.8 dB, and 43.0 / 43.8 dB on the colour
synthfaces against 26.1 / 28.1 dB; bilinear ×0.5 round trip 53.5 / 53.7 dB against
24.0 / 23.0 dB. The bounds below leave about 3 dB of slack.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from services.kernels import pipeline as P
from services.kernels.checks import KernelInputError
from services.kernels.data import LfwSubset, SynthFaces, from_uint8


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(4.0 / mse))


@pytest.fixture(scope="module")
def lfw() -> torch.Tensor:
    """16 real faces: scikit-image's grey 25×25 LFW crops, to RGB and Lanczos-resized to 32."""
    dataset = LfwSubset(resolution=32)
    return torch.stack([dataset[i]["image"] for i in range(16)])


@pytest.fixture(scope="module")
def synth() -> torch.Tensor:
    faces = SynthFaces(n=8, seed=3, resolution=32)
    return torch.stack([from_uint8(faces.pixels(i)) for i in range(8)])


@pytest.fixture(params=["lfw", "synth"])
def faces(request: pytest.FixtureRequest) -> torch.Tensor:
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("quality", [75, 90])
def test_jpeg_approx_agrees_with_pillow(faces: torch.Tensor, quality: int) -> None:
    real = P.jpeg(faces, quality)
    identity, approx = psnr(faces, real), psnr(P.jpeg_approx(faces, quality), real)
    assert approx >= 40.0, (identity, approx)
    assert approx >= identity + 10.0, (identity, approx)


def test_jpeg_approx_pads_like_libjpeg(synth: torch.Tensor) -> None:
    """25×25 is not a multiple of the 16-pixel MCU: measured 41.6 dB against 28.7 untouched."""
    small = P.quantize(F.interpolate(synth, size=(25, 25), mode="area"))
    real = P.jpeg(small, 75)
    approx = P.jpeg_approx(small, 75)
    assert approx.shape == small.shape
    assert psnr(approx, real) >= 38.0 and psnr(approx, real) >= psnr(small, real) + 10.0


@pytest.mark.parametrize("quality", [1, 10, 50, 75, 90, 100])
def test_quantization_tables_are_the_ones_pillow_writes(quality: int) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buffer, format="JPEG", quality=quality)
    written = Image.open(io.BytesIO(buffer.getvalue())).quantization  # type: ignore[attr-defined]
    luma, chroma = P.quantization_tables(quality)
    assert list(written[0]) == luma.ravel().tolist()
    assert list(written[1]) == chroma.ravel().tolist()


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_resize_approx_agrees_with_pillow(faces: torch.Tensor, resample: P.Resample) -> None:
    real = P.resize(faces, 0.5, resample)
    identity, approx = psnr(faces, real), psnr(P.resize_approx(faces, 0.5, resample), real)
    assert approx >= 50.0 and identity <= 30.0, (identity, approx)


@pytest.mark.parametrize("scale", [0.5, 0.75, 1.3])
def test_nearest_resize_reads_the_pixels_pillow_reads(lfw: torch.Tensor, scale: float) -> None:
    """Exact on 8-bit input, ties included (×0.75 has centres on pixel boundaries)."""
    assert torch.equal(P.resize_approx(lfw, scale, "nearest"), P.resize(lfw, scale, "nearest"))


def test_real_operations_return_8bit_images_of_the_same_shape(synth: torch.Tensor) -> None:
    for out in (P.jpeg(synth, 80), P.resize(synth, 0.6, "bicubic"), P.quantize(synth + 0.003)):
        assert out.shape == synth.shape and out.dtype == synth.dtype
        assert torch.equal(P.quantize(out), out)
    assert torch.equal(P.quantize(synth), synth)  # from_uint8 pixels are already 8-bit
    assert P.resize(synth[:, :, :, :20], 0.5).shape == (8, 3, 32, 20)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "transform",
    [
        lambda x: P.jpeg_approx(x, 75),
        lambda x: P.jpeg_approx(x[..., :27, :30], 95),
        lambda x: P.resize_approx(x, 0.5, "bilinear"),
        lambda x: P.resize_approx(x, 1.7, "bicubic"),
        lambda x: P.resize_approx(x, 0.6, "nearest"),
        lambda x: P.shift_approx(x, 2, -1),
        lambda x: P.shift_approx(x, -2, 2, padding="reflect"),
        P.quantize_ste,
    ],
    ids=["jpeg", "jpeg-padded", "bilinear", "bicubic", "nearest", "shift", "reflect", "ste"],
)
def test_gradients_flow(lfw: torch.Tensor, transform: P.ImageOp) -> None:
    images = (lfw[:4] * 0.9).requires_grad_(True)
    weights = torch.randn(images.shape[0], 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = transform(images)
    (grad,) = torch.autograd.grad(
        (out * weights[..., : out.shape[-2], : out.shape[-1]]).sum(), images
    )
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_quantize_ste_is_exact_forward_and_identity_backward(synth: torch.Tensor) -> None:
    images = (synth * 0.97 + 0.001).requires_grad_(True)
    out = P.quantize_ste(images)
    assert torch.equal(out.detach(), P.quantize(images))
    (grad,) = torch.autograd.grad((out * 3.0).sum(), images)
    assert torch.equal(grad, torch.full_like(grad, 3.0))


def test_jpeg_approx_gradient_is_about_a_quarter_of_the_identity(synth: torch.Tensor) -> None:
    """The cube's derivative 3(x − round x)² averages 1/4 over a uniform offset."""
    images = synth.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(P.jpeg_approx(images, 75).sum(), images)
    assert 0.15 < float(grad.mean()) < 0.35


# ------------------------------------------------------------------ shapes and semantics


def test_jpeg_approx_batch_equals_images_one_by_one(synth: torch.Tensor) -> None:
    batch = P.jpeg_approx(synth, 85)
    single = torch.cat([P.jpeg_approx(synth[i : i + 1], 85) for i in range(len(synth))])
    assert batch.shape == synth.shape and batch.dtype == synth.dtype
    torch.testing.assert_close(batch, single, rtol=0.0, atol=1e-5)
    assert float(batch.min()) >= -1.0 and float(batch.max()) <= 1.0


def test_jpeg_approx_keeps_dtype_and_tends_to_identity_at_q100(lfw: torch.Tensor) -> None:
    out = P.jpeg_approx(lfw.double(), 100)
    assert out.dtype == torch.float64
    assert psnr(out, lfw.double()) > psnr(P.jpeg_approx(lfw, 50), lfw) + 5.0
    half = P.jpeg_approx(lfw.bfloat16(), 75)  # coded in float32, returned in bfloat16
    assert half.dtype == torch.bfloat16
    assert psnr(half.float(), P.jpeg_approx(lfw.bfloat16().float(), 75)) > 45.0


def test_shift_moves_content_and_fills_the_border() -> None:
    image = torch.linspace(-1, 1, 3 * 5 * 6).reshape(1, 3, 5, 6)
    moved = P.shift_approx(image, 2, -1)
    assert moved.shape == image.shape
    assert torch.equal(moved[..., :4, 2:], image[..., 1:, :4])  # right by 2, up by 1
    assert torch.equal(moved[..., :4, 0], image[..., 1:, 0])  # replicated left edge
    assert torch.equal(moved[..., 4, :], moved[..., 3, :])  # replicated bottom edge
    reflected = P.shift_approx(image, 1, 0, padding="reflect")
    assert torch.equal(reflected[..., 0], image[..., 1])
    assert P.shift_approx(image, 0, 0) is image


def test_resize_approx_preserves_shape_and_range(synth: torch.Tensor) -> None:
    for mode in P.RESAMPLE:
        for scale in (0.5, 1.0, 2.0):
            out = P.resize_approx(synth, scale, mode)
            assert out.shape == synth.shape
            assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_approximations_run_on_the_gpu(synth: torch.Tensor) -> None:
    transform = P.Transform(scale=0.7, mode="bicubic", shift=(1, -2), quality=80, quantize=True)
    gpu = transform(synth.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), transform(synth), rtol=0.0, atol=2 / 255 + 1e-6)
    assert P.jpeg(synth.cuda(), 80).device.type == "cuda"


# ----------------------------------------------------------------------------- sampler


def draws(robustness: str, seed: int, count: int = 12) -> list[P.Transform]:
    generator = torch.Generator().manual_seed(seed)
    return [P.sample_transform(robustness, generator) for _ in range(count)]


def test_sampler_is_deterministic_given_the_seed() -> None:
    for robustness in P.ROBUSTNESS:
        assert draws(robustness, 5) == draws(robustness, 5)
    assert draws("full", 5) != draws("full", 6)
    assert draws("jpeg", 5) != draws("jpeg", 6)


def test_sampler_none_is_the_identity(synth: torch.Tensor) -> None:
    transform = P.sample_transform("none", torch.Generator().manual_seed(0))
    assert transform(synth) is synth
    assert transform == P.Transform()


def test_sampler_draws_stay_in_their_documented_ranges(synth: torch.Tensor) -> None:
    for transform in draws("jpeg", 0, 30):
        assert transform.quantize and transform.scale is None and transform.shift == (0, 0)
        assert transform.quality is not None and 70 <= transform.quality <= 95
    full = draws("full", 0, 200)
    for transform in full:
        assert transform.quantize
        assert transform.scale is None or 0.5 <= transform.scale <= 2.0
        assert all(abs(step) <= 2 for step in transform.shift)
        assert transform.quality is None or 70 <= transform.quality <= 95
    for step in ("scale", "quality"):
        share = np.mean([getattr(t, step) is not None for t in full])
        assert 0.35 < share < 0.65
    assert {t.mode for t in full if t.scale is not None} == set(P.RESAMPLE)
    for transform in full[:6]:
        out = transform(synth)
        assert out.shape == synth.shape and torch.equal(P.quantize(out), out.detach())
        assert transform.real(synth).shape == synth.shape


def test_transform_real_agrees_with_its_approximation(synth: torch.Tensor) -> None:
    transform = P.Transform(scale=0.5, mode="bilinear", shift=(1, 1), quality=85, quantize=True)
    assert psnr(transform(synth), transform.real(synth)) >= 38.0


def test_sampler_rejects_unknown_robustness() -> None:
    with pytest.raises(KernelInputError, match=r"'none', 'jpeg', 'full'"):
        P.sample_transform("jpg", torch.Generator())


# ------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("quality", [0, 101, True, 75.0, "75"])
def test_quality_must_be_an_integer_in_range(synth: torch.Tensor, quality: object) -> None:
    with pytest.raises(KernelInputError, match="quality"):
        P.jpeg_approx(synth, quality)  # type: ignore[arg-type]
    with pytest.raises(KernelInputError, match="quality"):
        P.jpeg(synth, quality)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((1, 3, 8, 8), np.float32),
        torch.zeros(1, 1, 8, 8),
        torch.zeros(3, 8, 8),
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
    ],
    ids=["numpy", "grey", "unbatched", "uint8"],
)
def test_images_must_be_float_batches_of_rgb(images: Any) -> None:
    for op in (lambda x: P.jpeg_approx(x, 75), P.quantize_ste, lambda x: P.jpeg(x, 75)):
        with pytest.raises(KernelInputError, match=r"\(B, 3, H, W\)"):
            op(images)


def test_real_operations_check_the_range() -> None:
    with pytest.raises(KernelInputError, match=r"\[-1, 1\]"):
        P.jpeg(torch.full((1, 3, 8, 8), 2.0), 75)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: P.resize_approx(x, 0.0), "scale"),
        (lambda x: P.resize(x, float("nan")), "scale"),
        (lambda x: P.resize_approx(x, 0.5, "lanczos"), "resample"),  # type: ignore[arg-type]
        (lambda x: P.shift_approx(x, 32, 0), "dx"),
        (lambda x: P.shift_approx(x, 0, 1.5), "dy"),  # type: ignore[arg-type]
        (lambda x: P.shift_approx(x, 1, 0, padding="zeros"), "padding"),  # type: ignore[arg-type]
        (lambda x: P.sample_transform("full", 3), "generator"),  # type: ignore[arg-type]
    ],
)
def test_arguments_are_checked(synth: torch.Tensor, call: Any, match: str) -> None:
    with pytest.raises(KernelInputError, match=match):
        call(synth)
