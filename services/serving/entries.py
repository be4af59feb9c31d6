"""The model store as a service reads it, without torch: where the store is, which entry
holds a model version, the sanitizer's attribute model and a model's in-domain score as
numpy.

A service whose kernels run on Triton imports this module, never
:mod:`services.serving.loading` (which builds the kernels and imports torch): reading
manifests and a probe set's arrays needs numpy and safetensors only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import ModelNotReady, NotFound
from services.kernels.domain import DomainModel
from services.kernels.manifests import (
    DEFAULT_ROOT,
    ModelIntegrityError,
    StoreReader,
    manifest_lineage,
)
from services.kernels.mechanism import AttributeSpace, orthonormal


def store_root(root: str | Path | None) -> Path:
    """``root``, else ``$VEIL_MODEL_STORE``, else the packaged ``services/kernels/weights``."""
    chosen = str(root or "") or os.environ.get("VEIL_MODEL_STORE", "")
    return Path(chosen) if chosen else DEFAULT_ROOT


def read_store(root: str | Path | None) -> StoreReader:
    """The store :func:`store_root` picks, read-only and without torch."""
    return StoreReader(store_root(root))


def version_entry(entry: str, version: int) -> str:
    """Store entry of model version ``version``: 1 (or 0, latest) → ``entry``, N → ``entry-vN``.

    The unlearning service writes ``<entry>-v2`` to the store and adds a ``2/`` directory
    to the Triton model (triton_models/README.md).
    """
    return entry if version <= 1 else f"{entry}-v{version}"


ATTRIBUTE_DESCRIPTIONS = {
    "male": "perceived gender (male vs not)",
    "old": "perceived age (old vs young)",
    "dark_skin": "skin tone (dark vs light)",
    "glasses": "wearing glasses",
    "smiling": "smiling",
}
"""Descriptions of the default attributes (a probes entry may carry its own in its config)."""


@dataclass(frozen=True)
class AttributeModel:
    """What the sanitizer needs besides the encoder and decoder: the attribute subspace,
    and which model it belongs to (with what the store's manifests say of both entries)."""

    space: AttributeSpace
    diffae: str
    resolution: int
    training_data: str
    probes: str
    diffae_sha256: str = ""
    """SHA-256 of the encoder's weights (its manifest's: the backend checks the weights it
    loads against it)."""
    probes_sha256: str = ""
    diffae_lineage: dict[str, str] = field(default_factory=dict)
    """:func:`manifest_lineage` of the encoder's entry."""
    probes_lineage: dict[str, str] = field(default_factory=dict)


def load_attribute_space(store: StoreReader, probes: str, diffae: str) -> AttributeModel:
    """The mechanism's attribute subspace from the ``probes`` entry, checked against the
    ``diffae`` entry it was fitted on (probes of another encoder would protect nothing).
    The probe set's arrays are read as numpy (float64 from the stored float32, as the
    mechanism computes)."""
    try:
        manifest, arrays = store.arrays(probes, kind="probes")
        encoder = store.manifest(diffae)
    except (NotFound, ModelIntegrityError) as exc:
        raise ModelNotReady(
            f"probes {probes!r} or diffae {diffae!r} cannot be loaded from the model store "
            f"{store.root}: {exc.message}"
        ) from None
    fitted_on = manifest.config.get("diffae_sha256")
    if fitted_on and fitted_on != encoder.sha256:
        raise ModelNotReady(
            f"probes {probes!r} were fitted on another diffae than {diffae!r} "
            "(retrain them with `veil train probes`)"
        )
    names = tuple(manifest.config["attributes"])
    descriptions = {**ATTRIBUTE_DESCRIPTIONS, **manifest.config.get("descriptions", {})}
    eraser = arrays.get("eraser_matrix"), arrays.get("eraser_bias")
    space = AttributeSpace(
        names=names,
        directions=orthonormal(arrays["directions"].astype("float64")),
        clip_bounds=arrays["clip_bounds"].astype("float64"),
        eraser_matrix=None if eraser[0] is None else eraser[0].astype("float64"),
        eraser_bias=None if eraser[1] is None else eraser[1].astype("float64"),
        descriptions={n: descriptions.get(n, n) for n in names},
    )
    return AttributeModel(
        space=space,
        diffae=diffae,
        resolution=int(encoder.config.get("resolution", 0)),
        training_data=str(encoder.data.get("uri", "")),
        probes=probes,
        diffae_sha256=encoder.sha256,
        probes_sha256=manifest.sha256,
        diffae_lineage=manifest_lineage(encoder),
        probes_lineage=manifest_lineage(manifest),
    )


def load_domain(store: StoreReader, name: str, model: str) -> DomainModel:
    """The in-domain score of the ``model`` entry (:mod:`services.kernels.domain`), read as
    numpy from the ``name`` entry, which must have been fitted on that very model: a domain
    fitted on another model's representation would accept and refuse the wrong inputs."""
    try:
        manifest, arrays = store.arrays(name, kind="domain")
        fitted = store.manifest(model)
    except (NotFound, ModelIntegrityError) as exc:
        raise ModelNotReady(
            f"domain {name!r} or model {model!r} cannot be loaded from the model store "
            f"{store.root}: {exc.message} (fit one with `veil train domain --model {model}`)"
        ) from None
    if manifest.config.get("model_sha256") != fitted.sha256:
        raise ModelNotReady(
            f"domain {name!r} was fitted on another model than {model!r} (fit one with "
            f"`veil train domain --model {model}`)"
        )
    return DomainModel.from_arrays(arrays, manifest.config)
