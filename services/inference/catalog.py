"""What the served classifiers are: their resolution, classes and versions, from the model
store's manifests (no weights are loaded, no torch is imported).

A service that sends images to a classifier must resize them to its resolution and check
the versions a request names; whichever backend runs the model, the store that the
settings name holds its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import ModelNotReady, NotFound
from services.inference.backend import InferenceSettings
from services.serving.contract import CLASSIFIER, PROTECT, PROTECTOR
from services.serving.entries import read_store, version_entry


@dataclass(frozen=True)
class ClassifierInfo:
    name: str
    """The served name, e.g. ``veil_classifier``."""
    entry: str
    """Its model store entry (version 1)."""
    resolution: int
    num_classes: int
    versions: tuple[int, ...]
    """Versions present in the store (1 = the entry itself, N = ``<entry>-vN``)."""
    target: str


def classifier_info(
    settings: InferenceSettings, name: str, entry: str | None = None
) -> ClassifierInfo:
    """The classifier served as ``name`` (``entry`` overrides the settings' mapping)."""
    store = read_store(settings.store)
    chosen = entry or settings.classifiers.get(name)
    if not chosen:
        raise NotFound(
            f"no classifier {name!r} is configured; known: {sorted(settings.classifiers)}"
        )
    try:
        manifest = store.manifest(chosen)
    except NotFound:
        raise ModelNotReady(f"classifier {name!r}: store entry {chosen!r} is missing") from None
    versions = [1]
    version = 2
    while True:
        try:
            store.manifest(version_entry(chosen, version))
        except NotFound:
            break
        versions.append(version)
        version += 1
    config = manifest.config
    return ClassifierInfo(
        name=name,
        entry=chosen,
        resolution=int(config.get("resolution", 32)),
        num_classes=int(config.get("num_classes", 2)),
        versions=tuple(versions),
        target=str(config.get("target", "")),
    )


def protector_robustness(settings: InferenceSettings) -> str:
    """What the fast-protection generator (store entry ``settings.protector``) was trained to
    survive: its manifest's ``robustness`` (``none`` for a generator trained before the
    field existed, or when the entry is missing: the fast mode then fails on its own)."""
    try:
        manifest = read_store(settings.store).manifest(settings.protector)
    except NotFound:
        return "none"
    return str(manifest.config.get("robustness", "none"))


def protector_authorized(settings: InferenceSettings) -> str | None:
    """The classifier store entry the fast-protection generator was trained against (its
    manifest's ``authorized``); None when the entry is missing."""
    try:
        manifest = read_store(settings.store).manifest(settings.protector)
    except NotFound:
        return None
    return str(manifest.config.get("authorized", ""))


PROTECTION_MODELS = [CLASSIFIER, PROTECT, PROTECTOR]
"""The models the protection service calls (its readiness waits for these)."""
