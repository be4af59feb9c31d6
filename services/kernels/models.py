"""Build the kernels from store entries: config → fresh module → verified weights."""

from __future__ import annotations

from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.defaults import DEFAULT_DIFFAE, DEFAULT_PROBES
from services.kernels.diffae import DiffAE, DiffAEConfig
from services.kernels.probes import ProbeSet
from services.kernels.store import ModelStore


def load_diffae(name: str = DEFAULT_DIFFAE, store: ModelStore | None = None) -> DiffAE:
    manifest, tensors = (store or ModelStore()).load(name, kind="diffae")
    model = DiffAE(DiffAEConfig.from_dict(manifest.config))
    model.load_state_dict(tensors)
    return model.eval().requires_grad_(False)


def load_classifier(name: str, store: ModelStore | None = None) -> Classifier:
    manifest, tensors = (store or ModelStore()).load(name, kind="classifier")
    model = build_classifier(ClassifierConfig.from_dict(manifest.config))
    model.load_state_dict(tensors)
    return model.eval()


def load_probes(name: str = DEFAULT_PROBES, store: ModelStore | None = None) -> ProbeSet:
    manifest, tensors = (store or ModelStore()).load(name, kind="probes")
    return ProbeSet.from_tensors(manifest.config["attributes"], tensors, manifest.metrics)
