"""Input checks shared by every kernel: wrong shapes, dtypes or ranges fail early and typed.

A kernel fed an (H, W, 3) ``uint8`` array, or a batch at the wrong resolution, would
otherwise fail deep inside a convolution with a message about weight shapes, or, worse,
run and return garbage. Each check names the form it expected and the form it got.
"""

from __future__ import annotations

import torch

from services.common.errors import InvalidArgument

RANGE_TOLERANCE = 1e-3
"""Slack on [-1, 1]: images that went through float arithmetic may overshoot by rounding."""


class KernelInputError(InvalidArgument):
    """A tensor given to a kernel has the wrong type, shape, dtype or value range."""

    reason = "KERNEL_INPUT"


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"torch.Tensor {tuple(value.shape)} {value.dtype}"
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return f"{type(value).__name__} {tuple(shape)} {dtype}"
    return type(value).__name__


def check_float_tensor(value: object, name: str, expected: str) -> torch.Tensor:
    """``value`` must be a finite floating-point tensor; ``expected`` names the form."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise KernelInputError(f"{name}: expected {expected}; got {_describe(value)}")
    if not bool(torch.isfinite(value).all()):
        raise KernelInputError(f"{name}: expected {expected}; got NaN or infinite values")
    return value


def check_images(value: object, resolution: int, name: str = "images") -> torch.Tensor:
    """A float batch (B, 3, R, R) in [-1, 1] at ``resolution``; returns it unchanged."""
    expected = f"float tensor (B, 3, {resolution}, {resolution}) in [-1, 1]"
    images = check_float_tensor(value, name, expected)
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, resolution, resolution):
        raise KernelInputError(f"{name}: expected {expected}; got {_describe(images)}")
    if images.numel() and float(images.detach().abs().max()) > 1.0 + RANGE_TOLERANCE:
        low, high = float(images.min()), float(images.max())
        raise KernelInputError(
            f"{name}: expected {expected}; got values in [{low:.3g}, {high:.3g}]"
            " (convert uint8 pixels with services.kernels.data.from_uint8)"
        )
    return images


def check_noise(value: object, resolution: int, batch: int, name: str = "x_T") -> torch.Tensor:
    """Float noise (B, 3, R, R) matching a batch of ``batch`` codes (any range)."""
    expected = f"float tensor ({batch}, 3, {resolution}, {resolution})"
    noise = check_float_tensor(value, name, expected)
    if tuple(noise.shape) != (batch, 3, resolution, resolution):
        raise KernelInputError(f"{name}: expected {expected}; got {_describe(noise)}")
    return noise


def check_codes(value: object, dim: int, name: str = "z") -> torch.Tensor:
    """Float semantic codes (B, d)."""
    expected = f"float tensor (B, {dim})"
    codes = check_float_tensor(value, name, expected)
    if codes.ndim != 2 or codes.shape[1] != dim:
        raise KernelInputError(f"{name}: expected {expected}; got {_describe(codes)}")
    return codes


def check_steps(steps: int, train_timesteps: int) -> int:
    """A DDIM step count in [1, train_timesteps]."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= train_timesteps:
        raise KernelInputError(
            f"steps: expected an integer in [1, {train_timesteps}]; got {steps!r}"
        )
    return steps
