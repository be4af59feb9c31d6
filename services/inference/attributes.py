"""The attribute subspace a sanitizer applies its mechanism in, from the model store.

The probes are parameters of the mechanism, not a served kernel: whichever backend runs
the encoder and decoder (in-process or Triton), the sanitizer reads the probes from the
same model store (``InferenceSettings.store``, ``VEIL_MODEL_STORE`` or the packaged one)
and checks that they were fitted on the diffusion autoencoder the settings name. They are
read as numpy arrays: a sanitizer on the Triton backend loads no torch.
"""

from __future__ import annotations

from services.inference.backend import InferenceSettings
from services.serving.entries import AttributeModel, load_attribute_space, read_store

__all__ = ["AttributeModel", "attribute_model"]


def attribute_model(settings: InferenceSettings, probes: str) -> AttributeModel:
    """The ``probes`` entry of the settings' store, checked against ``settings.diffae``."""
    return load_attribute_space(read_store(settings.store), probes, settings.diffae)
