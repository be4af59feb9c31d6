"""Inference backends: the heavy kernels in-process (:class:`LocalBackend`) or on Triton
(:class:`TritonBackend`), behind one async interface.

This module is the single source of truth for the wire contract of ``triton_models/``:
model names, tensor names, datatypes, dims (without the batch dimension) and batch limits.
``tests/triton/test_model_configs.py`` checks every ``config.pbtxt`` against it. Image
sides are ``-1`` in the contract: the resolution (and ``z_dim``, the number of classes, the
feature width) belong to the weights in the model store, and the model checks them.

Services embed :class:`InferenceSettings` and call :func:`create_backend`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENCODER = "veil_encoder"
DECODER = "veil_decoder"
CLASSIFIER = "veil_classifier"
PROTECT = "veil_protect"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a Triton model."""

    name: str
    datatype: str
    """KServe v2 datatype (``FP32``, ``INT32``, ``INT64``); ``TYPE_<datatype>`` in config.pbtxt."""
    dims: tuple[int, ...]
    """Per-item dims (the batch dimension is implicit: every model has max_batch_size > 0)."""

    @property
    def numpy_dtype(self) -> type[np.generic]:
        dtypes: dict[str, type[np.generic]] = {
            "FP32": np.float32,
            "INT32": np.int32,
            "INT64": np.int64,
        }
        return dtypes[self.datatype]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    """Largest batch Triton accepts (config ``max_batch_size``); clients split larger ones."""


IMAGE = TensorSpec("IMAGE", "FP32", (3, -1, -1))
"""Images in [-1, 1], channels first."""

MODELS: dict[str, ModelSpec] = {
    ENCODER: ModelSpec(ENCODER, (IMAGE,), (TensorSpec("Z", "FP32", (-1,)),), 32),
    DECODER: ModelSpec(
        DECODER,
        (
            TensorSpec("Z", "FP32", (-1,)),
            TensorSpec("X_T", "FP32", (3, -1, -1)),
            TensorSpec("STEPS", "INT32", (1,)),
        ),
        (IMAGE,),
        16,
    ),
    CLASSIFIER: ModelSpec(
        CLASSIFIER,
        (IMAGE,),
        (TensorSpec("LOGITS", "FP32", (-1,)), TensorSpec("FEATURES", "FP32", (-1,))),
        32,
    ),
    PROTECT: ModelSpec(
        PROTECT,
        (
            IMAGE,
            TensorSpec("LABEL", "INT64", (1,)),
            TensorSpec("EPSILON", "FP32", (1,)),
            TensorSpec("STEP_SIZE", "FP32", (1,)),
            TensorSpec("ITERATIONS", "INT32", (1,)),
            TensorSpec("CE_WEIGHT", "FP32", (1,)),
        ),
        (
            TensorSpec("PROTECTED", "FP32", (3, -1, -1)),
            TensorSpec("FEATURE_DISTORTION", "FP32", (1,)),
        ),
        8,
    ),
}


@dataclass(frozen=True)
class ProtectParams:
    """FMD settings in [0, 1] pixel units (services.kernels.fmd); the paper's defaults."""

    epsilon: float = 16 / 255
    step_size: float = 4 / 255
    iterations: int = 100
    ce_weight: float = 1.0


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


Arrays = dict[str, np.ndarray]
"""Named tensors of one request or response, batch first."""


def protect_inputs(
    images: np.ndarray, labels: np.ndarray | None, params: ProtectParams | None
) -> Arrays:
    """The named ``veil_protect`` inputs for one request (settings repeated on every row)."""
    p = params or ProtectParams()
    rows = len(images)
    label = np.full(rows, -1) if labels is None else np.asarray(labels)

    def column(value: Any, dtype: type[np.generic]) -> np.ndarray:
        return np.full((rows, 1), value, dtype=dtype)

    return {
        "IMAGE": images,
        "LABEL": label.astype(np.int64).reshape(rows, 1),
        "EPSILON": column(p.epsilon, np.float32),
        "STEP_SIZE": column(p.step_size, np.float32),
        "ITERATIONS": column(p.iterations, np.int32),
        "CE_WEIGHT": column(p.ce_weight, np.float32),
    }


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


def create_backend(settings: InferenceSettings | None = None) -> InferenceBackend:
    """The backend ``settings.backend`` names."""
    settings = settings or InferenceSettings()
    if settings.backend == "triton":
        from services.common.inference_triton import TritonBackend

        return TritonBackend(settings)
    from services.common.inference_local import LocalBackend

    return LocalBackend(settings)
