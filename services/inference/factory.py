"""Pick the inference backend a service's settings name."""

from __future__ import annotations

from services.inference.backend import InferenceBackend, InferenceSettings


def create_backend(settings: InferenceSettings | None = None) -> InferenceBackend:
    """The backend ``settings.backend`` names."""
    settings = settings or InferenceSettings()
    if settings.backend == "triton":
        from services.inference.remote import TritonBackend

        return TritonBackend(settings)
    from services.inference.local import LocalBackend

    return LocalBackend(settings)
