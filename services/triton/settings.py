"""Settings of the Triton server that Veil runs (pydantic-settings, prefix ``VEIL_TRITON_``).

``VEIL_TRITON_GRPC_PORT=0`` picks a free port, ``VEIL_TRITON_LOAD_MODELS='["veil_encoder"]'``
(with ``VEIL_TRITON_MODEL_CONTROL_MODE=explicit``) loads one model only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The directory that holds ``services/``, ``triton_models/`` and ``proto/``: the checkout,
or the installed ``veil/`` package."""
IMPORT_ROOT = Path(__file__).resolve().parents[__name__.count(".")]
"""The ``sys.path`` entry this package imports from under its own name: the checkout (for
``services``) or the site-packages that holds ``veil`` (the wheel's ``veil.services``).
Rendered repositories name it to their models (parameter ``package_root``)."""


class TritonSettings(BaseSettings):
    """How to run ``tritonserver``: repository, ports, model control, logs, timeouts."""

    model_config = SettingsConfigDict(env_prefix="VEIL_TRITON_", extra="ignore")

    model_repository: Path = REPO_ROOT / "triton_models"
    """Triton model repository: ``<model>/config.pbtxt`` and ``<model>/<version>/model.py``."""
    host: str = "127.0.0.1"
    """Address the gRPC, HTTP and metrics endpoints bind to (``0.0.0.0`` in a container)."""
    grpc_port: int = 8001
    """KServe v2 gRPC port; 0 picks a free one (tests)."""
    http_port: int = 8000
    """KServe v2 HTTP port (health probes use it); 0 picks a free one."""
    metrics_port: int = 8002
    """Prometheus ``/metrics`` port of Triton itself; 0 picks a free one."""
    model_control_mode: Literal["none", "explicit", "poll"] = "none"
    """``none``: load every model at start and fail the start if one fails; ``explicit``: load
    only ``load_models``; ``poll``: follow the repository on disk."""
    load_models: list[str] = Field(default_factory=list)
    """Models to load at start in ``explicit`` mode (``["*"]`` = all); ignored otherwise."""
    gpu_metrics: bool = False
    """Export Triton's GPU metrics (``nv_gpu_utilization``, memory, power): on for GPU nodes
    (``VEIL_TRITON_GPU_METRICS=true`` in the GPU overlay); off where there is no GPU."""
    log_verbose: int = 0
    """``--log-verbose`` level of tritonserver (0 = info, warnings and errors only)."""
    startup_timeout_s: float = 120.0
    """How long ``start()`` waits for the server (and every model) to be ready."""
    shutdown_grace_s: float = 10.0
    """``stop()`` sends SIGTERM, waits this long, then SIGKILLs the process group."""
    workspace: Path | None = None
    """Directory for the backend directory and the server log; None = a fresh temporary one,
    removed on stop. A given directory is kept (the log stays for a post-mortem)."""
    tritonserver: Path | None = None
    """The ``tritonserver`` binary; None = the one bundled in ``nvidia-pytriton``."""
    extra_args: list[str] = Field(default_factory=list)
    """More tritonserver flags, passed as given (e.g. ``["--pinned-memory-pool-byte-size=0"]``)."""

    @field_validator("grpc_port", "http_port", "metrics_port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ValueError("port must be in 0..65535")
        return value
