"""Upload-pipeline augmentation for classifier training, with the real operations.

A classifier trained on pristine 8-bit renders loses pose accuracy on the same faces once
an image pipeline has touched them (a Pillow resize to half size and back: about 0.72 on
fresh faces for the first ``task-resnet``). Training on images passed through the
operations such pipelines perform (data augmentation as robustness to a known family of
corruptions; Hendrycks & Dietterich 2019, "Benchmarking neural network robustness to common
corruptions and perturbations", §4) closes most of that gap.

Each image of a batch, independently, goes through :class:`pipeline.Transform.real
<services.kernels.pipeline.Transform>`, that is Pillow's resize, an exact shift, Pillow's
libjpeg round trip and 8-bit rounding, with the parameters :func:`sample_augmentation`
draws. No codec is reimplemented here. The JPEG qualities go lower than the protection's
(:data:`~services.kernels.pipeline.EOT_QUALITIES`, 70-95) so the owner's model also keeps
its accuracy at q=50.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from services.kernels.checks import KernelInputError
from services.kernels.pipeline import RESAMPLE, Transform, _check_values

AUGMENTATIONS = ("none", "pipeline")
"""What ``train_classifier(augment=...)`` and ``veil train classifier --augment`` accept."""


@dataclass(frozen=True)
class PipelineAugment:
    """How often and how strongly each step is drawn; the defaults are what training uses."""

    p_resize: float = 0.5
    """Chance of a resize to round(R·s) and back, s log-uniform on ``scales``."""
    scales: tuple[float, float] = (0.5, 2.0)
    p_shift: float = 0.5
    """Chance of a shift (dx, dy), each uniform on {−max_shift, …, max_shift}, edges replicated."""
    max_shift: int = 3
    p_jpeg: float = 0.5
    """Chance of a JPEG round trip, quality uniform on the integers of ``qualities``."""
    qualities: tuple[int, int] = (50, 95)

    def __post_init__(self) -> None:
        for name in ("p_resize", "p_shift", "p_jpeg"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise KernelInputError(f"{name}: expected a probability in [0, 1]")
        if not 0.0 < self.scales[0] <= self.scales[1]:
            raise KernelInputError(f"scales: expected 0 < low <= high; got {self.scales}")
        if not 1 <= self.qualities[0] <= self.qualities[1] <= 100:
            raise KernelInputError(
                f"qualities: expected 1 <= low <= high <= 100; got {self.qualities}"
            )
        if self.max_shift < 0:
            raise KernelInputError(f"max_shift: expected >= 0; got {self.max_shift}")


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """Uniform on {low, …, high}."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def sample_augmentation(config: PipelineAugment, generator: torch.Generator) -> Transform:
    """One image's pipeline. Every parameter is drawn whether or not its step fires (a fixed
    number of draws per image), so the sequence depends on ``generator`` alone."""
    fires = [_uniform(generator) < p for p in (config.p_resize, config.p_shift, config.p_jpeg)]
    low, high = (math.log(s) for s in config.scales)
    scale = math.exp(low + (high - low) * _uniform(generator))
    mode = RESAMPLE[_integer(generator, 0, len(RESAMPLE) - 1)]
    dx, dy = (_integer(generator, -config.max_shift, config.max_shift) for _ in range(2))
    quality = _integer(generator, *config.qualities)
    return Transform(
        scale=scale if fires[0] else None,
        mode=mode if fires[0] else "bilinear",
        shift=(dx, dy) if fires[1] else (0, 0),
        quality=quality if fires[2] else None,
        quantize=True,
    )


def augment_pipeline(
    images: torch.Tensor, generator: torch.Generator, config: PipelineAugment | None = None
) -> torch.Tensor:
    """``images`` (B, 3, R, R) in [-1, 1], each through its own :func:`sample_augmentation`
    with the real operations; same shape, device and dtype, 8-bit values, no gradient."""
    images = _check_values(images).detach()
    if not isinstance(generator, torch.Generator):
        raise KernelInputError(f"generator: expected a torch.Generator; got {generator!r:.60}")
    config = config or PipelineAugment()
    out = [sample_augmentation(config, generator).real(image[None]) for image in images]
    return torch.cat(out) if out else images.clone()
