"""The inference backend interface: the heavy kernels in-process
(:class:`~services.inference.local.LocalBackend`) or on Triton
(:class:`~services.inference.remote.TritonBackend`), behind one async interface.

This module imports neither implementation; :func:`services.inference.factory.create_backend`
picks one. The tensors exchanged are :mod:`services.serving.contract`'s. Services embed
:class:`InferenceSettings` and call ``create_backend``; they import :class:`ProtectParams`,
:data:`ROBUSTNESS` and :class:`ProtectOutput` from here (a service never imports
``services.serving``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.errors import FailedPrecondition
from services.serving.contract import (
    CLASSIFIER,
    DECODER,
    ENCODER,
    PROTECT,
    PROTECTOR,
    ROBUSTNESS,
    Arrays,
    ProtectParams,
    protect_inputs,
)

__all__ = [
    "ROBUSTNESS",
    "SANITIZER_MODELS",
    "InferenceBackend",
    "InferenceSettings",
    "ProtectOutput",
    "ProtectParams",
]

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
    protector: str = "protector"
    """Local backend: store entry behind ``veil_protector`` (the fast-protection generator;
    its config names the authorized classifier, loaded from the same store)."""
    feature_layer: str = "penultimate"
    """Local backend: the classifier's feature map returned as FEATURES and distorted by FMD
    (on Triton: the models' ``feature_layer`` parameter; no request carries one)."""
    surrogates: list[str] = Field(
        default_factory=lambda: ["surrogate-resnet", "surrogate-vgg", "surrogate-mlpmixer"]
    )
    """Local backend: store entries FMD also attacks (on Triton: ``veil_protect``'s
    ``surrogates`` parameter); empty: FMD against the authorized model alone. The default
    is ``services.kernels.defaults.DEFAULT_SURROGATES`` (a test holds the copies equal)."""
    models: list[str] = Field(
        default_factory=lambda: [ENCODER, DECODER, CLASSIFIER, PROTECT, PROTECTOR]
    )
    """The models this service calls: ``ready()`` is True when all of them are."""
    triton_url: str = "127.0.0.1:8001"
    """Triton backend: ``host:port`` of Triton's gRPC endpoint."""
    triton_load_url: str | None = None
    """Triton backend: ``host:port`` whose host names *every* Triton replica (a headless
    Service), used by ``load_model``: a new version is loaded on each address the name
    resolves to, not on the one replica a load through ``triton_url`` would reach. Unset:
    loads go to ``triton_url`` (one Triton)."""
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
    reconnect_backoff_max_s: float = Field(default=1.0, gt=0, le=120)
    """Triton backend: longest wait between reconnection attempts while Triton is away, so
    calls succeed again within about this long after it is back (gRPC's default: 120 s)."""
    workers: int = 1
    """Local backend: threads that run kernels (torch uses its own intra-op threads)."""


@dataclass(frozen=True)
class ProtectOutput:
    """What :meth:`InferenceBackend.protect` and :meth:`~InferenceBackend.protect_fast`
    return."""

    protected: np.ndarray
    """(B, 3, R, R) float32 in [-1, 1], within the ε-ball of the originals."""
    feature_distortion: np.ndarray
    """(B,) MSE between the authorized model's features of the originals and the output."""
    steps_run: int
    """FMD steps every image got (fewer than asked when the time budget ran out; the
    fewest of any part when the call was split); 0 for the fast mode."""


NO_MODEL_CONTROL = "explicit model load / unload is not allowed"
"""What Triton answers a load or unload request in ``none`` and ``poll`` modes."""
NOT_EXPLICIT = (
    "Triton at {url} runs without explicit model control, so a published version can never"
    " be loaded: start it with --model-control-mode=explicit (`veil triton"
    " --model-control-mode explicit --load-model '*'`)"
)


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
        *,
        time_budget_s: float | None = None,
        version: int = 0,
    ) -> ProtectOutput:
        """FMD against version ``version`` of the authorized classifier (its serving
        version; 0 = the latest); labels −1/None = its prediction. ``time_budget_s``
        (None or ≤ 0: no limit): the loop stops early rather than take longer, and
        ``steps_run`` says how far it got. The call's own deadline stays
        ``settings.protect_timeout_s``. ``params.robustness`` (one of :data:`ROBUSTNESS`)
        is what the loop optimises the result to survive; it is sent on every call."""
        arrays = protect_inputs(images, labels, params, time_budget_s)
        out = await self._call(PROTECT, arrays, version, timeout=self.settings.protect_timeout_s)
        steps = out["STEPS_RUN"]
        return ProtectOutput(
            protected=out["PROTECTED"],
            feature_distortion=out["FEATURE_DISTORTION"][:, 0],
            steps_run=int(steps.min()) if steps.size else 0,
        )

    async def protect_fast(self, images: np.ndarray) -> ProtectOutput:
        """The fast mode: one pass of the trained generator (``veil_protector``)."""
        out = await self._call(PROTECTOR, {"IMAGE": images})
        return ProtectOutput(
            protected=out["PROTECTED"],
            feature_distortion=out["FEATURE_DISTORTION"][:, 0],
            steps_run=0,
        )

    @abc.abstractmethod
    async def load_model(self, model: str, version: int) -> None:
        """Make version ``version`` of ``model`` servable after it was written to the model
        store (and, for Triton, to the model repository); ModelNotReady when it cannot be."""

    async def load_diffae(self, entry: str) -> None:
        """Build the encoder and decoder of the model store entry ``entry`` (its weights
        checked against its manifest) without serving them yet (:meth:`use_diffae`).
        FailedPrecondition where the backend cannot: a Triton server serves the encoder
        its model repository holds (a new one is a rollout: docs/TRAINING.md)."""
        raise FailedPrecondition(
            f"the {self.settings.backend} inference backend serves the encoder its model "
            f"repository holds; it cannot switch to {entry!r} while running (roll out a "
            "Triton repository built from that entry: docs/TRAINING.md)"
        )

    def use_diffae(self, entry: str) -> None:
        """Serve ``encode``/``decode`` from ``entry`` (loaded by :meth:`load_diffae`) from
        the next call on; the previous entry's kernels are dropped."""
        raise FailedPrecondition(f"the {self.settings.backend} backend cannot switch encoders")

    async def can_load(self) -> bool:
        """Whether :meth:`load_model` can work at all now (never raises): for Triton, that
        it runs with explicit model control. In-process, always."""
        return True

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True when every model this backend serves can answer now (never raises)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release clients or threads. Idempotent."""
