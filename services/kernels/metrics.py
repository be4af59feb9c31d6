"""Image-quality metrics for reconstructions: PSNR and SSIM, in torch.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to
structural similarity", eq. 13) with their 11×11 Gaussian window (σ = 1.5), K1 = 0.01,
K2 = 0.03, computed per channel over the valid region and averaged — the same choices as
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)``. Inputs are in [-1, 1] (data range 2).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

DATA_RANGE = 2.0


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, (B,)."""
    mse = (x - y).square().flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(DATA_RANGE**2 / mse)


def _window(size: int, sigma: float, channels: int) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM, (B,); the window shrinks (odd) for images smaller than it."""
    size = min(size, x.shape[-1] - (1 - x.shape[-1] % 2))
    x, y = x.double(), y.double()
    w = _window(size, sigma, x.shape[1])

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=x.shape[1])

    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    mx, my = blur(x), blur(y)
    vx, vy = blur(x * x) - mx * mx, blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * cov + c2)
    den = (mx * mx + my * my + c1) * (vx + vy + c2)
    return (num / den).flatten(1).mean(1).float()
