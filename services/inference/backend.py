"""The inference backend interface: the heavy kernels in-process
(:class:`~services.inference.local.LocalBackend`) or on Triton
(:class:`~services.inference.remote.TritonBackend`), behind one async interface.

This module imports neither implementation; :func:`services.inference.factory.create_backend`
picks one. The tensors exchanged are :mod:`services.serving.contract`'s. Services embed
:class:`InferenceSettings` and call ``create_backend``.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.serving.contract import (
    CLASSIFIER,
    DECODER,
    ENCODER,
    PROTECT,
    Arrays,
    ProtectParams,
    protect_inputs,
)

SANITIZER_MODELS = [ENCODER, DECODER]
"""The models the sanitizer calls (its readiness waits for these only)."""


class InferenceSettings(BaseSettings):
    """Which backend runs the kernels, and how to reach it (env prefix ``VEIL_INFERENCE_``)."""

    model_config = SettingsConfigDict(env_prefix="VEIL_INFERENCE_", extra="ignore")

    backend: Literal["local", "triton"] = "local"
    """``local``: the kernels in this process (CPU, embedded); ``triton``: a Triton server."""
    store: Path | None = None
    """Local backend: model store root; None = ``VEIL_MODEL_STORE`` or the packaged one."""
    diffae: str = "diffae"
    """Local backend: store entry behind ``veil_encoder`` / ``veil_decoder``."""
    classifiers: dict[str, str] = Field(default_factory=lambda: {CLASSIFIER: "task-resnet"})
    """Local backend: Triton model name → store entry (``veil_protect`` uses the
    ``veil_classifier`` one)."""
    feature_layer: str = "penultimate"
    """Local backend: the classifier's feature map returned as FEATURES and distorted by FMD."""
    models: list[str] = Field(default_factory=lambda: [ENCODER, DECODER, CLASSIFIER, PROTECT])
    """The models this service calls: ``ready()`` is True when all of them are."""
    triton_url: str = "127.0.0.1:8001"
    """Triton backend: ``host:port`` of Triton's gRPC endpoint."""
    timeout_s: float = 30.0
    """Per-call deadline (tritonclient ``client_timeout``; whole call incl. retries)."""
    protect_timeout_s: float = 300.0
    """Deadline for ``protect`` (100 PGD iterations are slow on a CPU)."""
    retries: int = 3
    """Extra attempts after UNAVAILABLE (and only then), with exponential backoff."""
    backoff_s: float = 0.1
    """First backoff; doubles each retry."""
    ready_timeout_s: float = 2.0
    """Deadline of each readiness probe call."""
    workers: int = 1
    """Local backend: threads that run kernels (torch uses its own intra-op threads)."""


class InferenceBackend(abc.ABC):
    """The heavy kernels, async. Arrays are numpy, batch first; images in [-1, 1].

    Errors are ``services.common.errors``: bad input → InvalidArgument; backend down →
    Unavailable / ModelNotReady; too slow → DeadlineExceeded.
    """

    settings: InferenceSettings

    @abc.abstractmethod
    async def _call(
        self, model: str, arrays: Arrays, version: int = 0, timeout: float | None = None
    ) -> Arrays:
        """Run ``model`` on named input arrays; the named outputs (the one transport hook)."""

    async def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, R, R) → semantic codes (B, z_dim)."""
        return (await self._call(ENCODER, {"IMAGE": images}))["Z"]

    async def decode(self, z: np.ndarray, x_T: np.ndarray, steps: int) -> np.ndarray:
        """Deterministic DDIM from noise (B, 3, R, R) conditioned on codes (B, z_dim)."""
        rows = np.full((len(z), 1), steps, dtype=np.int32)
        return (await self._call(DECODER, {"Z": z, "X_T": x_T, "STEPS": rows}))["IMAGE"]

    async def classify(
        self, images: np.ndarray, *, model: str = CLASSIFIER, version: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits (B, C), flattened features (B, F)); version 0 = the latest."""
        out = await self._call(model, {"IMAGE": images}, version)
        return out["LOGITS"], out["FEATURES"]

    async def protect(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        params: ProtectParams | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """FMD: (protected images, feature distortion (B,)); labels −1/None = prediction."""
        arrays = protect_inputs(images, labels, params)
        out = await self._call(PROTECT, arrays, timeout=self.settings.protect_timeout_s)
        return out["PROTECTED"], out["FEATURE_DISTORTION"][:, 0]

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True when every model this backend serves can answer now (never raises)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release clients or threads. Idempotent."""
