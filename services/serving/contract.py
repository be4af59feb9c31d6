"""The wire contract of ``triton_models/``: model names, tensor names, datatypes, dims
(without the batch dimension) and batch limits — the single source of truth.

``tests/triton/test_model_configs.py`` checks every ``config.pbtxt`` against it, the
python-backend adapter (:mod:`services.serving.triton_model`) and the in-process backend
both serve it, and the Triton client sends it. Image sides are ``-1`` in the contract: the
resolution (and ``z_dim``, the number of classes, the feature width) belong to the weights
in the model store, and the model checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument

ENCODER = "veil_encoder"
DECODER = "veil_decoder"
CLASSIFIER = "veil_classifier"
PROTECT = "veil_protect"
PROTECTOR = "veil_protector"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a Triton model."""

    name: str
    datatype: str
    """KServe v2 datatype (``FP32``, ``INT32``, ``INT64``); ``TYPE_<datatype>`` in config.pbtxt."""
    dims: tuple[int, ...]
    """Per-item dims (the batch dimension is implicit: every model has max_batch_size > 0)."""
    optional: bool = False
    """An input a request may leave out (``optional: true`` in config.pbtxt); the model
    then uses its default. Clients of this package always send it."""

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
PROTECTED = TensorSpec("PROTECTED", "FP32", (3, -1, -1))
"""Protected images in [-1, 1], within the ε-ball of IMAGE."""
FEATURE_DISTORTION = TensorSpec("FEATURE_DISTORTION", "FP32", (1,))
"""MSE between the authorized model's feature maps of IMAGE and PROTECTED."""

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
            TensorSpec("TIME_BUDGET_S", "FP32", (1,), optional=True),
            TensorSpec("ROBUSTNESS", "INT32", (1,), optional=True),
        ),
        (PROTECTED, FEATURE_DISTORTION, TensorSpec("STEPS_RUN", "INT32", (1,))),
        8,
    ),
    PROTECTOR: ModelSpec(PROTECTOR, (IMAGE,), (PROTECTED, FEATURE_DISTORTION), 32),
}


ROBUSTNESS = ("none", "jpeg", "full")
"""What FMD optimises a protection to survive (``services.kernels.pipeline.ROBUSTNESS``,
repeated here because the contract loads no torch; a test holds the copies equal). On the
wire, ``veil_protect``'s optional ROBUSTNESS input carries a value's index here: 0
(``none``), the kernel's default, is also what a request without it gets, so an older
client is answered as before the input existed."""


@dataclass(frozen=True)
class ProtectParams:
    """FMD settings in [0, 1] pixel units (services.kernels.fmd); the paper's defaults,
    and the kernel's ``robustness`` default (``none``; the protection service picks its own,
    ``jpeg``)."""

    epsilon: float = 16 / 255
    step_size: float = 4 / 255
    iterations: int = 100
    ce_weight: float = 10.0
    robustness: str = "none"
    """One of :data:`ROBUSTNESS`."""


Arrays = dict[str, np.ndarray]
"""Named tensors of one request or response, batch first."""


def protect_inputs(
    images: np.ndarray,
    labels: np.ndarray | None,
    params: ProtectParams | None,
    time_budget_s: float | None = None,
) -> Arrays:
    """The named ``veil_protect`` inputs for one request (settings repeated on every row).

    ``time_budget_s``: seconds the PGD loop may take, counted from when the model picks the
    request up (None or ≤ 0: no limit; the loop stops early rather than overrun it).
    ``params.robustness`` goes as its index in :data:`ROBUSTNESS` (InvalidArgument if it is
    not one)."""
    p = params or ProtectParams()
    if p.robustness not in ROBUSTNESS:
        raise InvalidArgument(f"robustness: expected one of {ROBUSTNESS}; got {p.robustness!r}")
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
        "TIME_BUDGET_S": column(time_budget_s or 0.0, np.float32),
        "ROBUSTNESS": column(ROBUSTNESS.index(p.robustness), np.int32),
    }
