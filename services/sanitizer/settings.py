"""Typed settings of the sanitizer (environment prefix ``VEIL_SANITIZER_``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.db import check_url, default_sqlite_url


class SanitizerSettings(BaseSettings):
    """Everything the sanitizer's core needs; the server adds its transport settings."""

    model_config = SettingsConfigDict(env_prefix="VEIL_SANITIZER_", extra="ignore")

    database_url: str = Field(default_factory=lambda: default_sqlite_url("sanitizer"))
    """Preview sessions and idempotent releases: ``sqlite:////abs/path`` (one replica) or
    ``postgresql+psycopg://…`` (several replicas: a Release may land on any of them).
    Default: ``sanitizer.sqlite`` in ``services.common.db.data_dir()``."""

    accountant_url: str = "127.0.0.1:50052"
    """``host:port`` of the accountant's gRPC endpoint; every release is charged there."""
    accountant_token: str = ""
    """Bearer token the sanitizer presents to the accountant: a delegate token
    (``TokenGrant.delegate``), since it charges the tenant of each of its own callers."""
    accountant_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of each accountant call; past it the release fails UNAVAILABLE, uncharged."""
    accountant_tls_ca: str | None = None
    """PEM file of the CA that signed the accountant's certificate; unset = plaintext."""
    registry_url: str | None = None
    """``host:port`` of the model registry (the unlearning server's
    ``veil.v1.ModelRegistry``): ListAttributes then gives the encoder's and the probes'
    version and lineage as registered, and whether they are still the current ones. Unset:
    version 0, the lineage from the model store's manifests."""
    registry_token: str = ""
    """Bearer token presented to the registry: a delegate token with scope
    ``modelregistry:resolve_model`` (it resolves for each caller's tenant)."""
    registry_timeout_s: float = Field(default=5.0, gt=0)
    """Deadline of each registry call; past it ListAttributes fails UNAVAILABLE."""
    registry_cache_s: float = Field(default=2.0, ge=0, le=300)
    """How long a registry answer is reused: a newly registered encoder shows at most this
    long after its registration."""
    registry_tls_ca: str | None = None
    """PEM file of the CA that signed the registry's certificate; unset = plaintext."""
    encoder_alias: str = ""
    """With ``registry_url``: the registry alias of the encoder (the shared trained model
    ``VEIL_INFERENCE_DIFFAE`` names) this server serves, e.g. ``production``: it is looked
    up every ``follow_every_s`` and, when it moves, the encoder with the probes and the
    in-domain score fitted on it are loaded from the model store and swapped in at once
    (``services.sanitizer.following``; in-process backend only). Empty: the store's entries
    as configured, never swapped."""
    follow_every_s: float = Field(default=10.0, gt=0, le=3600)
    """How often the encoder's alias is looked up (``encoder_alias``)."""
    reservation_lease_s: float = Field(default=120.0, gt=0, le=600)
    """Lease of the reservation held while an image is generated (then committed)."""
    commit_attempts: int = Field(default=4, ge=1, le=20)
    """Tries of a Commit that fails UNAVAILABLE (it is idempotent; 0.1 s, 0.3 s, 0.9 s … apart)
    before the release fails UNAVAILABLE and its caller's retry finishes it."""
    claim_lease_s: float = Field(default=30.0, gt=0, le=3600)
    """How long a release's claim (of its idempotency key, of its session) holds; past it
    the holder is presumed dead and a retry takes the release over (at most one charge
    whatever the timing: the accountant's reservation is keyed alike)."""
    idempotency_wait_s: float = Field(default=10.0, ge=0, le=600)
    """How long a call waits for a concurrent call with the same idempotency key to answer
    before it is ABORTED (retry with the same key to get that answer)."""

    probes: str = "probes"
    """Model store entry of the attribute probes (directions, clip bounds, eraser)."""
    domain: str | None = None
    """Model store entry of the encoder's in-domain score (``veil train domain``): a face
    whose score is above its threshold is refused with OUT_OF_DOMAIN unless the caller sets
    ``allow_out_of_domain``. Unset: ``domain-<the diffae entry>``; empty: no check (every
    input is taken as in the domain)."""
    default_ddim_steps: int = Field(default=10, ge=1, le=1000)
    """DDIM steps when a request gives 0."""
    max_ddim_steps: int = Field(default=100, ge=1, le=1000)
    """Most DDIM steps a request may ask for (the decoder's cost grows with them)."""
    default_complement: Literal["keep", "erase"] = "erase"
    """What to do with (I − P)z when a request does not say. ``erase`` by measurement
    (``python -m bench.sanitizer``, ε = 1): the committed attackers' mean accuracy 0.508
    (keep 0.543), a fresh linear probe on the released codes 0.512 (keep 0.644; chance
    0.600), pose kept alike (0.910 / 0.906), at PSNR 15.0 dB (keep 15.7 dB)."""
    max_strengths: int = Field(default=8, ge=1, le=64)
    """Most candidates one CreatePreview may ask for."""
    preview_ttl_s: float = Field(default=900.0, gt=0)
    """Lifetime of a preview session and its candidates."""
    idempotency_ttl_s: float = Field(default=86400.0, gt=0)
    """How long a release's image is kept to answer a retry with the same key."""
    purge_every_s: float = Field(default=60.0, gt=0)
    """Period of the sweep that deletes expired sessions and releases."""
    face_margin: float = Field(default=0.25, ge=0, le=1)
    """Context kept around a detected face, as a fraction of its side on each side."""
    batch_in_flight: int = Field(default=16, ge=1, le=1024)
    """SanitizeBatch: items read ahead of their answers (flow control beyond that)."""
    batch_chunk: int = Field(default=8, ge=1, le=64)
    """SanitizeBatch: items encoded, decoded and charged together."""
    output_format: Literal["PNG", "WEBP"] = "PNG"
    """Format of returned images (lossless: the noise is the privacy, not compression)."""

    @field_validator("encoder_alias")
    @classmethod
    def _alias(cls, value: str, info: ValidationInfo) -> str:
        if value and not re.fullmatch(r"[a-z][a-z0-9-]{0,63}", value):
            raise ValueError("an alias is 1-64 characters of [a-z0-9-], starting with a letter")
        if value and not info.data.get("registry_url"):
            raise ValueError("following the registry's alias needs VEIL_SANITIZER_REGISTRY_URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _absolute_sqlite(cls, value: str) -> str:
        return check_url(value)
