"""Image classifiers: the authorized task model and the attackers.

The task classifier (head pose on synthfaces) is the "authorized" model that FMD
protection keeps working; attacker classifiers, one per sensitive attribute, trained
independently on the original images with other architectures and seeds, measure what
leaks past the sanitizer and the protection (DESIGN.md). Two architectures that share
no weights or design beyond "conv net": a small pre-activation ResNet (He et al. 2016)
and a plain VGG-style stack (Simonyan & Zisserman 2015).

Every classifier has ``forward(x) -> logits`` and ``features(x, layer)`` for the layers
named in ``feature_layers`` (FMD distorts one of them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from services.kernels.checks import KernelInputError, check_images
from services.kernels.defaults import ARCHITECTURES


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = "resnet"
    num_classes: int = 2
    resolution: int = 32
    width: int = 32
    """Channels of the first block; each later block doubles them."""
    role: str = "task"
    """``task`` (the authorized model) or ``attacker``."""
    target: str = "pose"
    """What it predicts: the task name or a sensitive attribute."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise KernelInputError(f"arch must be one of {ARCHITECTURES}; got {self.arch!r}")
        if self.role not in ("task", "attacker"):
            raise KernelInputError(f"role must be task or attacker; got {self.role!r}")
        if self.num_classes < 2 or self.resolution < 8:
            raise KernelInputError("a classifier needs >= 2 classes and resolution >= 8")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class PreActBlock(nn.Module):
    """BN → ReLU → conv, twice, with an identity or strided 1×1 skip."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.bn1(x)))
        return self.skip(x) + self.conv2(F.relu(self.bn2(h)))


class Classifier(nn.Module):
    """A named sequence of stages; ``features`` stops at the stage asked for."""

    feature_layers: tuple[str, ...] = ()

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.stages = nn.ModuleDict()
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, "penultimate"))

    def features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """The activation after stage ``layer`` (one of :attr:`feature_layers`)."""
        if layer not in self.feature_layers:
            raise KernelInputError(f"layer: expected one of {self.feature_layers}; got {layer!r}")
        h = check_images(x, self.config.resolution)
        for name, stage in self.stages.items():
            h = stage(h)
            if name == layer:
                break
        return h

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices, in eval mode and without gradients."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self(x).argmax(1)
        self.train(was_training)
        return out


def _spatial_head(width: int) -> list[nn.Module]:
    """Pool to 2×2 (not 1×1) before the linear layer: pose is where the features sit
    inside the head, which a global average throws away."""
    return [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, width), nn.ReLU()]


class SmallResNet(Classifier):
    feature_layers = ("stem", "block1", "block2", "block3", "penultimate")

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__(config)
        w = config.width
        self.stages = nn.ModuleDict(
            {
                "stem": nn.Conv2d(3, w, 3, padding=1, bias=False),
                "block1": PreActBlock(w, w, 1),
                "block2": PreActBlock(w, 2 * w, 2),
                "block3": PreActBlock(2 * w, 4 * w, 2),
                "penultimate": nn.Sequential(
                    nn.BatchNorm2d(4 * w), nn.ReLU(), *_spatial_head(4 * w)
                ),
            }
        )
        self.head = nn.Linear(4 * w, config.num_classes)


def _vgg_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class VGGNet(Classifier):
    feature_layers = ("block1", "block2", "block3", "penultimate")

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__(config)
        w = config.width
        self.stages = nn.ModuleDict(
            {
                "block1": _vgg_block(3, w),
                "block2": _vgg_block(w, 2 * w),
                "block3": _vgg_block(2 * w, 4 * w),
                "penultimate": nn.Sequential(*_spatial_head(4 * w)),
            }
        )
        self.head = nn.Linear(4 * w, config.num_classes)


def build_classifier(config: ClassifierConfig) -> Classifier:
    return SmallResNet(config) if config.arch == "resnet" else VGGNet(config)
