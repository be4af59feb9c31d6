"""Typed settings shared by every service (pydantic-settings).

Each service subclasses :class:`ServiceSettings` with its own environment prefix
(``VEIL_<SERVICE>_``), so ``VEIL_ACCOUNTANT_PORT=50052`` sets the accountant's port and
nothing else. Nested values (tokens, image limits) are JSON in one variable, e.g.
``VEIL_ACCOUNTANT_TOKENS='{"s3cret": {"tenant": "acme", "scopes": ["accountant:*"]}}'``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.imaging import ImageLimits
from services.runtime.logging import LogFormat


class TokenGrant(BaseModel):
    """What one bearer token grants: a tenant and the scopes it may use."""

    tenant: str
    """The tenant every request made with this token acts for."""
    scopes: list[str] = Field(default_factory=lambda: ["*"])
    """Scopes such as ``accountant:spend``; ``service:*`` or ``*`` grant all of a service / all."""
    subject: str | None = None
    """A data subject's own token: it acts only for this subject of ``tenant`` (the only
    caller that may see that subject's sanitizer previews without the preview scope)."""
    delegate: bool = False
    """A service's token (the sanitizer's at the accountant): it may name any tenant in a
    request and act for it. Never implied by a scope wildcard; give it to services only."""


class ServiceSettings(BaseSettings):
    """Settings every Veil gRPC service has; subclasses add their own fields."""

    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="ignore")

    host: str = "127.0.0.1"
    """Address the gRPC server binds to (``0.0.0.0`` in a container)."""
    port: int = 50051
    """gRPC port; 0 picks a free one (tests)."""
    metrics_port: int | None = 9464
    """Prometheus ``/metrics`` port; 0 picks a free one, unset disables the endpoint."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds to."""
    tokens: dict[str, TokenGrant] = Field(default_factory=dict)
    """Bearer token → grant. Empty means every RPC but health/reflection is refused."""
    tokens_file: Path | None = None
    """Optional JSON file with more tokens (same shape as ``tokens``; the file wins), e.g. a
    mounted Secret. Re-read when it changes (looked at once a second at most): a rotated
    token works, and a removed one is refused, without a restart. A file that does not parse
    keeps the tokens in force (logged)."""
    tls_cert_file: Path | None = None
    """Server certificate (PEM). With ``tls_key_file`` turns TLS on."""
    tls_key_file: Path | None = None
    """Server private key (PEM)."""
    tls_client_ca_file: Path | None = None
    """CA that signs client certificates; when set, clients must present one (mTLS)."""
    max_message_bytes: int = 16 * 1024 * 1024
    """gRPC send/receive message limit, in bytes (set on both sides)."""
    max_concurrent_rpcs: int | None = None
    """Cap on RPCs in flight; beyond it new RPCs get RESOURCE_EXHAUSTED. None = no cap."""
    shutdown_grace_s: float = 10.0
    """On SIGTERM, in-flight RPCs get this long to finish; keep it below the pod's
    terminationGracePeriodSeconds minus ``drain_delay_s``."""
    drain_delay_s: float = 0.0
    """Seconds between reporting NOT_SERVING and refusing new RPCs, so load balancers
    notice first (a few seconds in Kubernetes, 0 locally)."""
    image_limits: ImageLimits = Field(default_factory=ImageLimits)
    """Limits on images received by this service."""
    log_level: str = "INFO"
    """Python logging level (``DEBUG``, ``INFO``, ``WARNING`` …)."""
    log_format: LogFormat = "text"
    """``text`` for people, ``json`` (one object per line) for a log collector."""
    worker_threads: int = Field(default=4, ge=1)
    """Threads of the worker pool that runs CPU-heavy work (image decoding) off the event
    loop; about the CPUs the pod may use."""
    worker_queue: int = Field(default=64, ge=0)
    """Calls that may wait for a worker thread; beyond it new ones fail fast with
    RESOURCE_EXHAUSTED instead of queueing past their deadline."""
    start_retry_initial_s: float = Field(default=0.5, gt=0)
    """When a start hook finds a dependency down (``Unavailable``), the first retry waits this
    long; each further wait doubles, up to ``start_retry_max_s``."""
    start_retry_max_s: float = Field(default=10.0, gt=0)
    """Longest wait between retries of a start hook."""
    tracing_endpoint: str | None = None
    """OTLP/gRPC collector for OpenTelemetry traces (``http://otel-collector:4317`` in
    plaintext, ``https://…`` over TLS); unset, tracing is off and nothing of OpenTelemetry is
    imported. Needs the ``tracing`` extra (:mod:`services.runtime.tracing`)."""
    tracing_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of new traces sampled; a call that arrives with a trace follows its caller's
    decision."""

    @field_validator("port", "metrics_port")
    @classmethod
    def _port_range(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 65535:
            raise ValueError("port must be in 0..65535")
        return value
