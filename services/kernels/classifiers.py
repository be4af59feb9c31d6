"""Image classifiers: the authorized task model, the unauthorized ones and the attackers.

The task classifier (head pose on synthfaces) is the "authorized" model that FMD
protection keeps working; unauthorized classifiers of the same task, trained
independently with other architectures and seeds, stand in for the outside black-box
models the protection must defeat without ever seeing them (Chai et al. 2024,
arXiv 2402.09316); attacker classifiers, one per sensitive attribute, measure what
leaks past the sanitizer and the protection (DESIGN.md). Four architectures that share
no weights or design: a small pre-activation ResNet (He et al. 2016), a plain VGG-style
stack (Simonyan & Zisserman 2015), an MLP-Mixer (Tolstikhin et al. 2021) and a tiny
Vision Transformer (Dosovitskiy et al. 2021), the last in no surrogate of FMD's.

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
from services.kernels.defaults import ARCHITECTURES, ROLES


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = "resnet"
    num_classes: int = 2
    resolution: int = 32
    width: int = 32
    """Channels of the first block; each later block doubles them (the MLP-Mixer's
    patches carry ``4 * width`` channels throughout)."""
    role: str = "task"
    """``task`` (the authorized model), ``attacker`` (predicts a sensitive attribute) or
    ``unauthorized`` (a model of the authorized task, trained independently: the outside
    black-box model that authorized-inference protection must defeat)."""
    target: str = "pose"
    """What it predicts: the task name or a sensitive attribute."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise KernelInputError(f"arch must be one of {ARCHITECTURES}; got {self.arch!r}")
        if self.role not in ROLES:
            raise KernelInputError(f"role must be one of {ROLES}; got {self.role!r}")
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


class MixerBlock(nn.Module):
    """One MLP-Mixer layer (Tolstikhin et al. 2021, §2, eq. 1): a token-mixing MLP across
    patches, then a channel-mixing MLP within each patch, each pre-LayerNorm with a skip.

    Takes and returns ``(B, C, h, w)`` maps, so that each stage of the classifier is a
    feature map like the conv nets' (FMD distorts one of them).
    """

    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = _mlp(tokens, dim // 2)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = _mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, tokens, C)
        t = t + self.token_mlp(self.norm1(t).transpose(1, 2)).transpose(1, 2)
        t = t + self.channel_mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class TokenPool(nn.Module):
    """LayerNorm over channels, then the mean over patches: the Mixer's head input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.flatten(2).transpose(1, 2)).mean(1)


class MLPMixer(Classifier):
    """An MLP-Mixer (Tolstikhin et al. 2021): no attention, and no convolution beyond the
    patch embedding, so its features share no inductive bias with the conv nets'.

    The image is cut into an 8×8 grid of patches (patch side ``resolution // 8``) embedded
    in ``4 * width`` channels; token mixing is position-specific, so where the features sit
    (the pose) survives the global mean of the head.
    """

    feature_layers = ("stem", "block1", "block2", "block3", "block4", "penultimate")
    GRID = 8

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__(config)
        if config.resolution % self.GRID:
            raise KernelInputError(
                f"mlpmixer needs a resolution divisible by {self.GRID}; got {config.resolution}"
            )
        dim, patch, tokens = 4 * config.width, config.resolution // self.GRID, self.GRID**2
        self.stages = nn.ModuleDict(
            {
                "stem": nn.Conv2d(3, dim, patch, stride=patch),
                **{f"block{i}": MixerBlock(dim, tokens) for i in range(1, 5)},
                "penultimate": TokenPool(dim),
            }
        )
        self.head = nn.Linear(dim, config.num_classes)


class PatchEmbedding(nn.Module):
    """Non-overlapping patches linearly embedded, plus a learned position embedding per
    patch (Dosovitskiy et al. 2021, §3.1, eq. 1); a ``(B, dim, h, w)`` map."""

    def __init__(self, dim: int, patch: int, grid: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(3, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x) + self.position


class TransformerBlock(nn.Module):
    """One pre-LayerNorm Transformer encoder layer (Dosovitskiy et al. 2021, eq. 2-3):
    multi-head self-attention over the patches, then an MLP, each with a skip. Takes and
    returns ``(B, C, h, w)`` maps, as :class:`MixerBlock` does."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, tokens, C)
        q = self.norm1(t)
        t = t + self.attention(q, q, q, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class ViTTiny(Classifier):
    """A tiny Vision Transformer (Dosovitskiy et al. 2021): 4×4 patches embedded in
    ``4 * width`` channels with learned position embeddings, four pre-norm attention layers
    of four heads, then the mean over patches (no class token). Attention is global from the
    first layer, unlike the conv nets, and input-dependent, unlike the Mixer's token MLP; the
    position embeddings keep where a feature sits (the pose) through the mean.

    Pose is where the eyes sit against the face outline, both moving with the head: a
    relation attention must first discover. On pose the loss stays at chance for some 500
    steps at lr 1e-3 (longer at 5e-4) before it falls; train it for thousands of steps.
    """

    feature_layers = ("stem", "block1", "block2", "block3", "block4", "penultimate")
    PATCH, DEPTH, HEADS = 4, 4, 4

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__(config)
        dim = 4 * config.width
        if config.resolution % self.PATCH:  # dim = 4 * width: always divisible by 4 heads
            raise KernelInputError(
                f"vit needs a resolution divisible by {self.PATCH}; got {config.resolution}"
            )
        grid = config.resolution // self.PATCH
        self.stages = nn.ModuleDict(
            {
                "stem": PatchEmbedding(dim, self.PATCH, grid),
                **{
                    f"block{i}": TransformerBlock(dim, self.HEADS) for i in range(1, self.DEPTH + 1)
                },
                "penultimate": TokenPool(dim),
            }
        )
        self.head = nn.Linear(dim, config.num_classes)


_BUILDERS: dict[str, type[Classifier]] = {
    "resnet": SmallResNet,
    "vgg": VGGNet,
    "mlpmixer": MLPMixer,
    "vit": ViTTiny,
}


def build_classifier(config: ClassifierConfig) -> Classifier:
    return _BUILDERS[config.arch](config)
