"""The in-domain score of a served model, from the model store (numpy, no torch).

Whichever backend serves the model (in-process or Triton), the service reads the model's
``domain`` entry (``veil train domain``) from the same store the settings name and checks
that it was fitted on that very model (``services.serving.entries.load_domain``).
"""

from __future__ import annotations

from services.inference.backend import InferenceSettings
from services.kernels.domain import DomainModel
from services.serving.entries import load_domain, read_store

__all__ = ["DomainModel", "domain_model"]


def domain_model(settings: InferenceSettings, name: str | None, model: str) -> DomainModel | None:
    """The score of the store entry ``model``: from the entry ``name`` (None:
    ``domain-<model>``; empty: no check, None returned)."""
    if name == "":
        return None
    return load_domain(read_store(settings.store), name or f"domain-{model}", model)
