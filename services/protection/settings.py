"""Typed settings of the protection service (environment prefix ``VEIL_PROTECTION_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _unauthorized() -> dict[str, str]:
    return {
        "unauth-vgg": "unauth-vgg",
        "unauth-wide-resnet": "unauth-wide-resnet",
        "unauth-mixer": "unauth-mixer",
    }


class ProtectionSettings(BaseSettings):
    """Everything the protection core needs; the server adds its transport settings."""

    model_config = SettingsConfigDict(env_prefix="VEIL_PROTECTION_", extra="ignore")

    authorized_model: str = "veil_classifier"
    """The served model images are protected for (the inference backend's classifier)."""
    default_mode: Literal["fmd", "fast"] = "fmd"
    """Mode when a request leaves it unspecified."""
    domain: str | None = None
    """Model store entry of the authorized model's in-domain score (``veil train domain
    --model <entry>``): an image whose score is above its threshold is refused with
    OUT_OF_DOMAIN unless the caller sets ``allow_out_of_domain``. Unset: ``domain-<the
    authorized model's entry>``; empty: no check."""
    max_iterations: int = Field(default=300, ge=1, le=10_000)
    """Most FMD steps a request may ask for."""
    max_epsilon: float = Field(default=32 / 255, gt=0, le=1)
    """Largest L-infinity bound a request may ask for, in [0, 1] pixel units."""
    deadline_margin_s: float = Field(default=0.5, ge=0)
    """FMD stops this long (or a quarter of the time left, if more) before the call's
    deadline, to verify, encode and answer in time."""
    batch_in_flight: int = Field(default=4, ge=1, le=256)
    """ProtectBatch: items processed at once (the stream waits beyond that)."""
    unauthorized: dict[str, str] = Field(default_factory=_unauthorized)
    """Evaluate: models standing in for unauthorized black-box classifiers, name → model
    store entry. They run in this process (evaluation instruments, not served models)."""
    registry_url: str | None = None
    """``host:port`` of the model registry (the unlearning server's
    ``veil.v1.ModelRegistry``): each tenant's authorized model is then its own
    ``production`` version. Unset: every tenant gets the shared base (version 1) only."""
    registry_token: str = ""
    """Bearer token presented to the registry: a delegate token with scope
    ``modelregistry:resolve_model`` (it resolves for each caller's tenant)."""
    registry_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of each registry call; past it the request fails UNAVAILABLE."""
    registry_cache_s: float = Field(default=2.0, ge=0, le=300)
    """How long a resolution is reused: a tenant's new production version is served at
    most this long after it is published."""
    registry_tls_ca: str | None = None
    """PEM file of the CA that signed the registry's certificate; unset = plaintext."""
    output_format: Literal["PNG", "WEBP"] = "PNG"
    """Format of returned images: lossless, so the perturbation survives."""
