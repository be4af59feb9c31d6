"""Fast protection: a feed-forward perturbation generator trained with the FMD objective.

FMD (:mod:`services.kernels.fmd`) ascends J(x*) = MSE(f_feat(x), f_feat(x*)) − λ·CE(f(x*), y)
by N signed-gradient steps per image. The generator G amortises that search: trained once
against the authorized model f to maximise the same J over a dataset (with robust FMD's
surrogates and pipeline draws when its config names them, as
:mod:`services.kernels.training.protector` says), it protects an image with one forward
pass (the generative-perturbation idea of Poursaeed et al., CVPR 2018, and AdvGAN, Xiao et
al., IJCAI 2018; DiffVax (2024) does the same for diffusion editing).

    δ = 2ε·tanh(g·norm(G(x))),   x* = clamp(x + δ, −1, 1)

so ‖x* − x‖∞ ≤ 2ε holds by construction (ε in [0, 1] pixel units, doubled for the [-1, 1]
image range as in FMD), whatever the weights; norm standardises G's output per image, so the
tanh cannot saturate for good (g: :attr:`ProtectorConfig.gain`). G is a U-Net-lite: a
stride-2 encoder, residual blocks at the bottom, a nearest-upsampling decoder with skips. It
has no normalisation over the batch, so an image's protection does not depend on the rest of
its batch, and no randomness: the same image gives the same output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from services.kernels.checks import KernelInputError, check_images
from services.kernels.classifiers import Classifier
from services.kernels.pipeline import ROBUSTNESS

ARCHS = ("unet-lite",)


@dataclass(frozen=True)
class ProtectorConfig:
    """What a ``protector`` store entry needs to be rebuilt and checked."""

    arch: str = "unet-lite"
    resolution: int = 32
    widths: tuple[int, ...] = (32, 64)
    """Channels per level; each level after the first halves the side."""
    blocks: int = 2
    """Residual blocks at the coarsest level."""
    gain: float = 2.0
    """tanh(gain · v) of the per-image standardised output v: most pixels near ±2ε, none
    saturated beyond learning (a raw tanh drives its input to thousands within tens of
    steps of maximising MSE, and its gradient, hence training, vanishes)."""
    epsilon: float = 16 / 255
    """ℓ∞ bound in [0, 1] pixel units (the paper's 16/255)."""
    feature_layer: str = "penultimate"
    """The authorized model's feature map it was trained to distort."""
    ce_weight: float = 1.0
    """λ of the training objective."""
    authorized: str = "task-resnet"
    """Store entry of the authorized classifier it was trained against."""
    authorized_sha256: str = ""
    """SHA-256 of that classifier's weights: serving refuses any other."""
    surrogates: tuple[str, ...] = ()
    """Store entries of the defender's own classifiers of the task it was also trained to
    fool (FMD's transfer terms, :class:`services.kernels.fmd.Transfer`); none: the
    authorized model alone (the entries written before these fields)."""
    surrogate_weight: float = 1.0
    """μ: weight of the surrogates' term (their feature distortion plus their cross-entropy
    on the authorized label)."""
    surrogate_cap: float | None = None
    """Each surrogate's cross-entropy counts up to this value (None: uncapped, as FMD's):
    an image a surrogate already misreads stops pulling (the margin κ of Carlini & Wagner
    2017). Uncapped trained faster here (training module docstring)."""
    diversity: int = 0
    """Input diversity in pixels on the surrogates' input (FMD's ``diversity``)."""
    robustness: str = "none"
    """Pipelines it was trained to survive (:data:`services.kernels.pipeline.ROBUSTNESS`):
    every training step's objective is taken at one draw of ``pipeline.sample_transform``."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise KernelInputError(f"arch must be one of {ARCHS}; got {self.arch!r}")
        if not self.widths or min(self.widths) < 1 or self.blocks < 0:
            raise KernelInputError("a protector needs widths >= 1 and blocks >= 0")
        if self.resolution % 2 ** (len(self.widths) - 1):
            raise KernelInputError(
                f"resolution {self.resolution} must be divisible by 2^{len(self.widths) - 1}"
            )
        if not self.gain > 0:
            raise KernelInputError(f"gain must be > 0; got {self.gain}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise KernelInputError(f"epsilon must be in [0, 1]; got {self.epsilon}")
        if self.robustness not in ROBUSTNESS:
            raise KernelInputError(
                f"robustness must be one of {ROBUSTNESS}; got {self.robustness!r}"
            )
        if self.surrogate_cap is not None and not self.surrogate_cap > 0:
            raise KernelInputError(f"surrogate_cap must be > 0; got {self.surrogate_cap}")
        if not self.surrogate_weight >= 0 or self.diversity < 0:
            raise KernelInputError("a protector needs surrogate_weight >= 0 and diversity >= 0")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["surrogates"] = list(self.surrogates)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProtectorConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "widths" in values:
            values["widths"] = tuple(int(w) for w in values["widths"])
        if "surrogates" in values:
            values["surrogates"] = tuple(str(name) for name in values["surrogates"])
        return cls(**values)


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Protector(nn.Module):
    """x → x* with ‖x* − x‖∞ ≤ 2ε (module docstring)."""

    def __init__(self, config: ProtectorConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Conv2d(3, w[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in pairwise(w))
        self.middle = nn.Sequential(*(_Residual(w[-1]) for _ in range(config.blocks)))
        self.up = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in pairwise(w))
        self.merge = nn.ModuleList(nn.Conv2d(2 * a, a, 3, padding=1) for a in w[:-1])
        self.out = nn.Conv2d(w[0], 3, 3, padding=1)

    @property
    def bound(self) -> float:
        """‖δ‖∞ in the [-1, 1] image range: 2ε, rounded down to a float32, so that
        ``bound · tanh(·)`` computed in float32 never exceeds 2ε."""
        exact = 2 * self.config.epsilon
        rounded = torch.tensor(exact, dtype=torch.float32)
        if float(rounded) > exact:
            rounded = torch.nextafter(rounded, torch.tensor(0.0))
        return float(rounded)

    def perturbation(self, x: torch.Tensor) -> torch.Tensor:
        """δ (B, 3, R, R) with |δ| ≤ 2ε elementwise."""
        h = F.relu(self.stem(check_images(x, self.config.resolution)))
        skips = []
        for down in self.down:
            skips.append(h)
            h = F.relu(down(h))
        h = self.middle(h)
        for up, merge, skip in zip(
            reversed(self.up), reversed(self.merge), reversed(skips), strict=True
        ):
            h = F.relu(up(F.interpolate(h, scale_factor=2.0, mode="nearest")))
            h = F.relu(merge(torch.cat([h, skip], 1)))
        v = F.group_norm(self.out(h), 1)  # per image: zero mean, unit variance
        return self.bound * torch.tanh(self.config.gain * v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Protected images in [-1, 1]; the projection onto the ε-ball only absorbs float
        rounding of x + δ (|δ| ≤ 2ε already)."""
        x_adv = x + self.perturbation(x)
        return torch.min(torch.max(x_adv, x - self.bound), x + self.bound).clamp(-1.0, 1.0)


def build_protector(config: ProtectorConfig) -> Protector:
    return Protector(config)


def feature_distortion(
    model: Classifier, images: torch.Tensor, protected: torch.Tensor, layer: str
) -> torch.Tensor:
    """Per-image MSE between the feature maps of the originals and the protected images
    (FMD's :attr:`~services.kernels.fmd.FMDStats.feature_distortion`)."""
    with torch.no_grad():
        before, after = model.features(images, layer), model.features(protected, layer)
    return (after - before).flatten(1).pow(2).mean(1)


def protect_fast(
    protector: Protector, model: Classifier, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(protected images, feature distortion (B,)) in one forward pass of the generator."""
    if model.config.resolution != protector.config.resolution:
        raise KernelInputError("the protector and the authorized model differ in resolution")
    was = protector.training, model.training
    protector.eval()
    model.eval()
    try:
        with torch.no_grad():
            protected = protector(images)
        distortion = feature_distortion(model, images, protected, protector.config.feature_layer)
    finally:
        protector.train(was[0])
        model.train(was[1])
    return protected, distortion
