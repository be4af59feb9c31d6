"""Build the kernels from store entries: config → fresh module → verified weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.defaults import DEFAULT_DIFFAE, DEFAULT_PROBES
from services.kernels.probes import ProbeSet
from services.kernels.protector import Protector, ProtectorConfig, build_protector
from services.kernels.store import ModelIntegrityError, ModelStore

if TYPE_CHECKING:
    from services.kernels.diffae import DiffAE


def _fill(model: nn.Module, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Load weights into a freshly built model; weights that do not fit its config (an
    entry written by an older version of the code) are refused, typed."""
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ModelIntegrityError(
            f"weights of {name!r} do not fit its config (retrain it): {first[0].strip()}"
        ) from None


def load_diffae(name: str = DEFAULT_DIFFAE, store: ModelStore | None = None) -> DiffAE:
    """The diffusion autoencoder behind ``name`` (imports diffusers: only when asked for)."""
    from services.kernels.diffae import DiffAE, DiffAEConfig

    manifest, tensors = (store or ModelStore()).load(name, kind="diffae")
    model = DiffAE(DiffAEConfig.from_dict(manifest.config))
    _fill(model, name, tensors)
    return model.eval().requires_grad_(False)


def load_classifier(name: str, store: ModelStore | None = None) -> Classifier:
    manifest, tensors = (store or ModelStore()).load(name, kind="classifier")
    model = build_classifier(ClassifierConfig.from_dict(manifest.config))
    _fill(model, name, tensors)
    return model.eval()


def load_probes(name: str = DEFAULT_PROBES, store: ModelStore | None = None) -> ProbeSet:
    manifest, tensors = (store or ModelStore()).load(name, kind="probes")
    return ProbeSet.from_tensors(manifest.config["attributes"], tensors, manifest.metrics)


def load_protector(name: str, store: ModelStore | None = None) -> Protector:
    """The fast-protection generator behind ``name``; its config names the authorized
    classifier (and that classifier's SHA-256) it was trained against."""
    manifest, tensors = (store or ModelStore()).load(name, kind="protector")
    model = build_protector(ProtectorConfig.from_dict(manifest.config))
    _fill(model, name, tensors)
    return model.eval().requires_grad_(False)
