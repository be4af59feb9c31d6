"""The kernels as served: one batching code path for the in-process backend and Triton.

A :class:`BatchKernel` turns named numpy inputs (the tensors of
:mod:`services.serving.contract`) into named numpy outputs. ``parse`` checks one request and
says which requests may share a forward pass (its key: e.g. the DDIM step count); ``run``
does one forward pass over the concatenated rows. :func:`execute_batched` is what a Triton
``execute`` and the local backend both call, so a bad request fails alone and a batch of
requests runs as one tensor.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from services.common.errors import ModelNotReady, VeilError
from services.kernels import fmd
from services.kernels.checks import KernelInputError, check_codes, check_images, check_noise
from services.kernels.classifiers import Classifier
from services.kernels.protector import Protector, protect_fast
from services.serving.contract import ROBUSTNESS, Arrays

if TYPE_CHECKING:
    from services.kernels.diffae import DiffAE

Tensors = dict[str, torch.Tensor]


def _tensor(arrays: Arrays, name: str) -> torch.Tensor:
    if name not in arrays:
        raise KernelInputError(f"{name}: missing input")
    # np.require copies only when needed: arrays from tritonclient are read-only.
    return torch.from_numpy(np.require(arrays[name], requirements=["C", "W"]))


def _column(arrays: Arrays, name: str, rows: int) -> torch.Tensor:
    """A per-row scalar input of shape (rows, 1) → (rows,)."""
    value = _tensor(arrays, name)
    if tuple(value.shape) != (rows, 1):
        raise KernelInputError(f"{name}: expected shape ({rows}, 1); got {tuple(value.shape)}")
    return value[:, 0]


def _uniform(arrays: Arrays, name: str, rows: int) -> float | int:
    """A per-request setting sent once per row: every row must carry the same value."""
    column = _column(arrays, name, rows)
    if rows and bool((column != column[0]).any()):
        raise KernelInputError(f"{name}: every row of one request must carry the same value")
    return column[0].item() if rows else 0


def _time_budget(arrays: Arrays, rows: int) -> float | None:
    """The optional TIME_BUDGET_S in seconds; None (no limit) when absent, ≤ 0 or infinite."""
    if "TIME_BUDGET_S" not in arrays:
        return None
    budget = float(_uniform(arrays, "TIME_BUDGET_S", rows))
    if math.isnan(budget):
        raise KernelInputError("TIME_BUDGET_S: expected seconds (<= 0: no limit); got NaN")
    return budget if 0 < budget < math.inf else None


def _robustness(arrays: Arrays, rows: int) -> str:
    """The optional ROBUSTNESS (an index into ``contract.ROBUSTNESS``); absent: ``none``,
    the kernel's default and what the model did before the input existed."""
    if "ROBUSTNESS" not in arrays:
        return ROBUSTNESS[0]
    code = int(_uniform(arrays, "ROBUSTNESS", rows))
    if not 0 <= code < len(ROBUSTNESS):
        raise KernelInputError(
            f"ROBUSTNESS: expected an index into {ROBUSTNESS} (0 to {len(ROBUSTNESS) - 1});"
            f" got {code}"
        )
    return ROBUSTNESS[code]


class BatchKernel(abc.ABC):
    """One served kernel: check a request (``parse``), run a batch of them (``run``).

    Requests are parsed on the CPU; ``run`` moves its batch to :attr:`device` (where the
    model lives: ``cuda:N`` in a GPU instance of a Triton model) and returns numpy.
    """

    device = torch.device("cpu")

    def to_device(self, tensors: Tensors) -> Tensors:
        return {name: t.to(self.device) for name, t in tensors.items()}

    @abc.abstractmethod
    def parse(self, arrays: Arrays) -> tuple[Hashable, Tensors]:
        """Checked tensors of one request, and the key of the requests it can batch with."""

    @abc.abstractmethod
    def run(self, key: Hashable, tensors: Tensors) -> Arrays:
        """Outputs (batch first) for the concatenated rows of requests sharing ``key``."""


class EncoderKernel(BatchKernel):
    def __init__(self, model: DiffAE) -> None:
        self.model = model

    def parse(self, arrays: Arrays) -> tuple[Hashable, Tensors]:
        return None, {"IMAGE": check_images(_tensor(arrays, "IMAGE"), self.model.config.resolution)}

    @torch.no_grad()
    def run(self, key: Hashable, tensors: Tensors) -> Arrays:
        return {"Z": self.model.encode(self.to_device(tensors)["IMAGE"]).cpu().numpy()}


class DecoderKernel(BatchKernel):
    def __init__(self, model: DiffAE) -> None:
        self.model = model

    def parse(self, arrays: Arrays) -> tuple[Hashable, Tensors]:
        config = self.model.config
        z = check_codes(_tensor(arrays, "Z"), config.z_dim)
        x_T = check_noise(_tensor(arrays, "X_T"), config.resolution, z.shape[0])
        steps = int(_uniform(arrays, "STEPS", z.shape[0]))
        if not 1 <= steps <= config.train_timesteps:
            raise KernelInputError(f"STEPS: expected [1, {config.train_timesteps}]; got {steps}")
        return steps, {"Z": z, "X_T": x_T}

    def run(self, key: Hashable, tensors: Tensors) -> Arrays:
        assert isinstance(key, int)
        t = self.to_device(tensors)
        return {"IMAGE": self.model.decode(t["Z"], t["X_T"], key).cpu().numpy()}


class ClassifierKernel(BatchKernel):
    def __init__(self, model: Classifier, feature_layer: str = "penultimate") -> None:
        if feature_layer not in model.feature_layers:
            raise ModelNotReady(
                f"feature_layer {feature_layer!r} is not one of {model.feature_layers}"
            )
        self.model, self.layer = model, feature_layer

    def parse(self, arrays: Arrays) -> tuple[Hashable, Tensors]:
        return None, {"IMAGE": check_images(_tensor(arrays, "IMAGE"), self.model.config.resolution)}

    @torch.no_grad()
    def run(self, key: Hashable, tensors: Tensors) -> Arrays:
        images = self.to_device(tensors)["IMAGE"]
        features = self.model.features(images, self.layer)
        logits = self.model.head(features) if self.layer == "penultimate" else None
        if logits is None:
            logits = self.model(images)
        return {"LOGITS": logits.cpu().numpy(), "FEATURES": features.flatten(1).cpu().numpy()}


class ProtectKernel(BatchKernel):
    """FMD. Requests batch together when their settings, time budget and robustness
    included, are equal (one loop per key); a budget runs from when the request is parsed
    (the model picked it up: Triton's queue time before that is the client's to allow
    for), and a batch stops at its earliest deadline. STEPS_RUN says how many PGD steps
    the batch took."""

    def __init__(
        self,
        model: Classifier,
        feature_layer: str = "penultimate",
        surrogates: Sequence[Classifier] = (),
    ) -> None:
        ClassifierKernel(model, feature_layer)  # same checks
        fmd.check_transfer(model, surrogates, 1.0, 0.0, 0)  # surrogates that fit the model
        self.model, self.layer = model, feature_layer
        self.surrogates = tuple(surrogates)

    def parse(self, arrays: Arrays) -> tuple[Hashable, Tensors]:
        images = check_images(_tensor(arrays, "IMAGE"), self.model.config.resolution)
        rows = images.shape[0]
        labels = fmd.check_labels(
            _column(arrays, "LABEL", rows), rows, self.model.config.num_classes
        )
        budget = _time_budget(arrays, rows)
        key = (
            float(_uniform(arrays, "EPSILON", rows)),
            float(_uniform(arrays, "STEP_SIZE", rows)),
            int(_uniform(arrays, "ITERATIONS", rows)),
            float(_uniform(arrays, "CE_WEIGHT", rows)),
            budget,
            _robustness(arrays, rows),
        )
        tensors = {"IMAGE": images, "LABEL": labels}
        if budget is not None:
            deadline = time.monotonic() + budget
            tensors["DEADLINE"] = torch.full((rows,), deadline, dtype=torch.float64)
        return key, tensors

    def run(self, key: Hashable, tensors: Tensors) -> Arrays:
        assert isinstance(key, tuple)
        epsilon, step_size, iterations, ce_weight, _, robustness = key
        deadline = float(tensors["DEADLINE"].min()) if "DEADLINE" in tensors else None
        t = self.to_device({k: v for k, v in tensors.items() if k != "DEADLINE"})
        protected, stats = fmd.protect(
            self.model,
            t["IMAGE"],
            t["LABEL"],
            epsilon=epsilon,
            step_size=step_size,
            iterations=iterations,
            ce_weight=ce_weight,
            feature_layer=self.layer,
            deadline=deadline,
            surrogates=self.surrogates,
            robustness=robustness,
        )
        rows = protected.shape[0]
        return {
            "PROTECTED": protected.cpu().numpy(),
            "FEATURE_DISTORTION": stats.feature_distortion.reshape(-1, 1).cpu().numpy(),
            "STEPS_RUN": np.full((rows, 1), stats.steps, dtype=np.int32),
        }


class ProtectorKernel(BatchKernel):
    """The fast mode: one pass of the generator, and the feature distortion it achieved on
    the authorized model it was trained against (at the generator's feature layer)."""

    def __init__(self, protector: Protector, model: Classifier) -> None:
        if model.config.resolution != protector.config.resolution:
            raise ModelNotReady("the protector and its authorized model differ in resolution")
        if protector.config.feature_layer not in model.feature_layers:
            raise ModelNotReady(
                f"the protector's feature_layer {protector.config.feature_layer!r} is not one"
                f" of its authorized model's {model.feature_layers}"
            )
        self.protector, self.model = protector, model

    def parse(self, arrays: Arrays) -> tuple[Hashable, Tensors]:
        resolution = self.protector.config.resolution
        return None, {"IMAGE": check_images(_tensor(arrays, "IMAGE"), resolution)}

    def run(self, key: Hashable, tensors: Tensors) -> Arrays:
        images = self.to_device(tensors)["IMAGE"]
        protected, distortion = protect_fast(self.protector, self.model, images)
        return {
            "PROTECTED": protected.cpu().numpy(),
            "FEATURE_DISTORTION": distortion.reshape(-1, 1).cpu().numpy(),
        }


def execute_batched(kernel: BatchKernel, requests: list[Arrays]) -> list[Arrays | Exception]:
    """Outputs (or the error) of each request, in order; compatible requests run together."""
    results: list[Arrays | Exception | None] = [None] * len(requests)
    groups: dict[Hashable, list[tuple[int, Tensors]]] = {}
    for i, arrays in enumerate(requests):
        try:
            key, tensors = kernel.parse(arrays)
        except VeilError as exc:
            results[i] = exc
            continue
        groups.setdefault(key, []).append((i, tensors))
    for key, members in groups.items():
        names = members[0][1].keys()
        batch = {name: torch.cat([t[name] for _, t in members]) for name in names}
        try:
            outputs = kernel.run(key, batch)
        except Exception as exc:
            for i, _ in members:
                results[i] = exc
            continue
        start = 0
        for i, tensors in members:
            rows = next(iter(tensors.values())).shape[0]
            results[i] = {name: out[start : start + rows] for name, out in outputs.items()}
            start += rows
    return [r if r is not None else RuntimeError("no result") for r in results]
