"""The attribute subspace a sanitizer applies its mechanism in, from the model store.

The probes are parameters of the mechanism, not a served kernel: whichever backend runs
the encoder and decoder (in-process or Triton), the sanitizer reads the probes from the
same model store (``InferenceSettings.store``, ``VEIL_MODEL_STORE`` or the packaged one)
and checks that they were fitted on the diffusion autoencoder the settings name. They are
read as numpy arrays: a sanitizer on the Triton backend loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from services.common.errors import ModelNotReady, VeilError
from services.inference.backend import InferenceSettings
from services.kernels.domain import DomainModel
from services.serving.entries import (
    AttributeModel,
    StoreReader,
    load_attribute_space,
    load_domain,
    read_store,
)

__all__ = ["AttributeModel", "Generation", "attribute_model", "fitted_generation"]


def attribute_model(settings: InferenceSettings, probes: str) -> AttributeModel:
    """The ``probes`` entry of the settings' store, checked against ``settings.diffae``."""
    return load_attribute_space(read_store(settings.store), probes, settings.diffae)


@dataclass(frozen=True)
class Generation:
    """What a sanitizer serves together: an encoder's weights (a store entry), the attribute
    model fitted on it and its in-domain score (None: no check)."""

    entry: str
    """The store entry the backend loads the encoder and decoder from."""
    model: AttributeModel
    domain: DomainModel | None


def fitted_generation(
    settings: InferenceSettings, entry: str, name: str, probes: str, domain: str | None
) -> Generation:
    """The encoder in the store entry ``entry`` (a kept registration of the registry's
    ``name``) with the probes and in-domain score fitted on it: the newest of the entry
    ``probes`` and its kept registrations whose ``diffae_sha256`` is that encoder's, and
    likewise of ``domain`` (None: ``domain-<name>``; empty: no score) by ``model_sha256``.
    ModelNotReady when the store holds none (train them on that encoder first)."""
    store = read_store(settings.store)
    try:
        encoder = store.manifest(entry)
    except VeilError as exc:
        raise ModelNotReady(
            f"the encoder {entry!r} is not in the model store: {exc.message}"
        ) from None
    fitted = _fitted(store, probes, "diffae_sha256", encoder.sha256)
    if fitted is None:
        raise ModelNotReady(
            f"no probes in the model store were fitted on {name!r} (sha256 "
            f"{encoder.sha256[:12]}…): `veil train probes --diffae {name}` first"
        )
    model = replace(load_attribute_space(store, fitted, entry), diffae=name, probes=probes)
    if domain == "":
        return Generation(entry, model, None)
    family = domain or f"domain-{name}"
    scored = _fitted(store, family, "model_sha256", encoder.sha256)
    if scored is None:
        raise ModelNotReady(
            f"no in-domain score in the model store was fitted on {name!r} (sha256 "
            f"{encoder.sha256[:12]}…): `veil train domain --model {name}` first"
        )
    return Generation(entry, model, load_domain(store, scored, entry))


def _fitted(store: StoreReader, name: str, key: str, sha256: str) -> str | None:
    """The newest of the entry ``name`` and its kept registrations whose config ``key`` is
    ``sha256``; None when there is none."""
    for candidate in [name, *store.kept(name)]:
        try:
            if store.manifest(candidate).config.get(key) == sha256:
                return candidate
        except VeilError:
            continue
    return None
