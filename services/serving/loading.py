"""Weights for the served kernels: the model store with torch, devices, kernels.

Loading a classifier never imports diffusers (:mod:`services.kernels.models` imports the
diffusion autoencoder lazily), which saves a classifier's Triton stub seconds of start-up.
What a service reads of the store without building a kernel (where it is, version
entries, the attribute model) is :mod:`services.serving.entries`, which loads no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from services.common.errors import ModelNotReady, NotFound
from services.kernels.classifiers import Classifier
from services.kernels.models import load_classifier, load_diffae, load_protector
from services.kernels.protector import Protector
from services.kernels.store import ModelIntegrityError, ModelStore
from services.serving.batch import (
    BatchKernel,
    ClassifierKernel,
    DecoderKernel,
    EncoderKernel,
    ProtectKernel,
    ProtectorKernel,
)
from services.serving.contract import DECODER, ENCODER, PROTECT, PROTECTOR
from services.serving.entries import store_root

if TYPE_CHECKING:
    from services.kernels.diffae import DiffAE


def resolve_store(root: str | Path | None) -> ModelStore:
    """The store :func:`services.serving.entries.store_root` picks, with torch tensors."""
    return ModelStore(store_root(root))


def load_kernel_model(kind: str, entry: str, store: ModelStore) -> DiffAE | Classifier | Protector:
    """The model behind ``entry``; missing or broken weights are ModelNotReady, explained."""
    try:
        if kind == "diffae":
            return load_diffae(entry, store)
        if kind == "protector":
            return load_protector(entry, store)
        return load_classifier(entry, store)
    except (NotFound, ModelIntegrityError) as exc:
        raise ModelNotReady(
            f"{kind} {entry!r} cannot be loaded from the model store {store.root}: "
            f"{exc.message} (train it with `veil train`, or point the store parameter or "
            "VEIL_MODEL_STORE at a store that has it)"
        ) from None


def _protector_kernel(entry: str, store: ModelStore, device: str | torch.device) -> BatchKernel:
    """The generator behind ``entry`` with the authorized classifier its config names; a
    classifier whose weights are not the ones it was trained against is refused."""
    protector = load_kernel_model("protector", entry, store)
    assert isinstance(protector, Protector)
    config = protector.config
    classifier = load_kernel_model("classifier", config.authorized, store)
    assert isinstance(classifier, Classifier)
    actual = store.manifest(config.authorized).sha256
    if config.authorized_sha256 and actual != config.authorized_sha256:
        raise ModelNotReady(
            f"protector {entry!r} was trained against other weights of {config.authorized!r}"
            " than the store holds (retrain it with `veil train protector`)"
        )
    return ProtectorKernel(protector.to(device), classifier.to(device))


def instance_device(args: dict[str, str]) -> str:
    """The device of a Triton model instance from its ``initialize`` args: ``cuda:<id>``
    for ``KIND_GPU`` instances, ``cpu`` otherwise."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id') or 0)}"
    return "cpu"


def build_kernel(
    model_name: str,
    store: ModelStore,
    entry: str,
    feature_layer: str = "penultimate",
    device: str | torch.device = "cpu",
    surrogates: Sequence[str] = (),
) -> BatchKernel:
    """The kernel a Triton model (or the local backend) serves under ``model_name``, with
    its model on ``device``. ``entry`` is the store entry (for ``veil_protector`` the
    generator's, whose config names its authorized classifier); ``feature_layer`` applies to
    the classifier and FMD (the generator's layer is fixed by its training); ``surrogates``:
    the store entries ``veil_protect``'s FMD also attacks (``fmd.Transfer``; others ignore
    them)."""
    kernel: BatchKernel
    if model_name == PROTECTOR:
        kernel = _protector_kernel(entry, store, device)
    elif model_name in (ENCODER, DECODER):
        from services.kernels.diffae import DiffAE

        diffae = load_kernel_model("diffae", entry, store)
        assert isinstance(diffae, DiffAE)
        diffae.to(device)
        kernel = EncoderKernel(diffae) if model_name == ENCODER else DecoderKernel(diffae)
    else:
        classifier = load_kernel_model("classifier", entry, store)
        assert isinstance(classifier, Classifier)
        classifier.to(device)
        if model_name == PROTECT:
            others = []
            for name in surrogates:
                surrogate = load_kernel_model("classifier", name, store)
                assert isinstance(surrogate, Classifier)
                others.append(surrogate.to(device))
            kernel = ProtectKernel(classifier, feature_layer, others)
        else:
            kernel = ClassifierKernel(classifier, feature_layer)
    kernel.device = torch.device(device)
    return kernel
