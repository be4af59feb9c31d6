"""The kernels as served: one code path for the in-process backend and the Triton models.

A :class:`BatchKernel` turns named numpy inputs (the tensors of ``services.common.inference``
MODELS) into named numpy outputs. ``parse`` checks one request and says which requests may
share a forward pass (its key: e.g. the DDIM step count); ``run`` does one forward pass over
the concatenated rows. :func:`execute_batched` is what a Triton ``execute`` and
:class:`LocalBackend` both call, so a bad request fails alone and a batch of requests runs
as one tensor.
"""

from __future__ import annotations

import abc
import asyncio
import os
import threading
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from services.common.errors import ModelNotReady, NotFound, VeilError
from services.common.inference import (
    CLASSIFIER,
    DECODER,
    ENCODER,
    PROTECT,
    Arrays,
    InferenceBackend,
    InferenceSettings,
)
from services.kernels import fmd
from services.kernels.checks import KernelInputError, check_codes, check_images, check_noise
from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.store import ModelIntegrityError, ModelStore

if TYPE_CHECKING:
    from services.kernels.diffae import DiffAE

Tensors = dict[str, torch.Tensor]


def resolve_store(root: str | Path | None) -> ModelStore:
    """``root``, else ``$VEIL_MODEL_STORE``, else the packaged ``services/kernels/weights``."""
    chosen = str(root or "") or os.environ.get("VEIL_MODEL_STORE", "")
    return ModelStore(chosen or None)


def version_entry(entry: str, version: int) -> str:
    """Store entry of model version ``version``: 1 (or 0, latest) → ``entry``, N → ``entry-vN``.

    The unlearning service writes ``<entry>-v2`` to the store and adds a ``2/`` directory
    to the Triton model (triton_models/README.md).
    """
    return entry if version <= 1 else f"{entry}-v{version}"


def _load_classifier(entry: str, store: ModelStore) -> Classifier:
    """``services.kernels.models.load_classifier`` without importing diffusers (which costs a
    Triton stub seconds of start-up that a classifier does not need)."""
    manifest, tensors = store.load(entry, kind="classifier")
    model = build_classifier(ClassifierConfig.from_dict(manifest.config))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ModelIntegrityError(f"weights of {entry!r} do not fit its config") from exc
    return model.eval()


def load_kernel_model(kind: str, entry: str, store: ModelStore) -> DiffAE | Classifier:
    """The model behind ``entry``; missing or broken weights are ModelNotReady, explained."""
    try:
        if kind == "diffae":
            from services.kernels.models import load_diffae

            return load_diffae(entry, store)
        return _load_classifier(entry, store)
    except (NotFound, ModelIntegrityError) as exc:
        raise ModelNotReady(
            f"{kind} {entry!r} cannot be loaded from the model store {store.root}: "
            f"{exc.message} (train it with `veil train`, or point the store parameter or "
            "VEIL_MODEL_STORE at a store that has it)"
        ) from None


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
    def __init__(self, model: Classifier, feature_layer: str = "penultimate") -> None:
        ClassifierKernel(model, feature_layer)  # same checks
        self.model, self.layer = model, feature_layer

    def parse(self, arrays: Arrays) -> tuple[Hashable, Tensors]:
        images = check_images(_tensor(arrays, "IMAGE"), self.model.config.resolution)
        rows = images.shape[0]
        labels = fmd.check_labels(
            _column(arrays, "LABEL", rows), rows, self.model.config.num_classes
        )
        key = (
            float(_uniform(arrays, "EPSILON", rows)),
            float(_uniform(arrays, "STEP_SIZE", rows)),
            int(_uniform(arrays, "ITERATIONS", rows)),
            float(_uniform(arrays, "CE_WEIGHT", rows)),
        )
        return key, {"IMAGE": images, "LABEL": labels}

    def run(self, key: Hashable, tensors: Tensors) -> Arrays:
        assert isinstance(key, tuple)
        epsilon, step_size, iterations, ce_weight = key
        t = self.to_device(tensors)
        protected, stats = fmd.protect(
            self.model,
            t["IMAGE"],
            t["LABEL"],
            epsilon=epsilon,
            step_size=step_size,
            iterations=iterations,
            ce_weight=ce_weight,
            feature_layer=self.layer,
        )
        distortion = stats.feature_distortion.reshape(-1, 1).cpu()
        return {"PROTECTED": protected.cpu().numpy(), "FEATURE_DISTORTION": distortion.numpy()}


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


def instance_device(args: dict[str, str]) -> str:
    """The device of a Triton model instance from its ``initialize`` args: ``cuda:<id>``
    for ``KIND_GPU`` instances, ``cpu`` otherwise."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id') or 0)}"
    return "cpu"


def build_kernel(
    model_name: str,
    store: ModelStore,
    entry: str,
    feature_layer: str = "penultimate",
    device: str | torch.device = "cpu",
) -> BatchKernel:
    """The kernel a Triton model (or the local backend) serves under ``model_name``, with
    its model on ``device``."""
    kernel: BatchKernel
    if model_name in (ENCODER, DECODER):
        from services.kernels.diffae import DiffAE

        diffae = load_kernel_model("diffae", entry, store)
        assert isinstance(diffae, DiffAE)
        diffae.to(device)
        kernel = EncoderKernel(diffae) if model_name == ENCODER else DecoderKernel(diffae)
    else:
        classifier = load_kernel_model("classifier", entry, store)
        assert isinstance(classifier, Classifier)
        classifier.to(device)
        kernel = (
            ProtectKernel(classifier, feature_layer)
            if model_name == PROTECT
            else ClassifierKernel(classifier, feature_layer)
        )
    kernel.device = torch.device(device)
    return kernel


class LocalBackend(InferenceBackend):
    """The kernels in this process, on a worker thread: the embedded default."""

    def __init__(self, settings: InferenceSettings | None = None) -> None:
        self.settings = settings or InferenceSettings()
        self.store = resolve_store(self.settings.store)
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix="veil-kernels"
        )
        self._kernels: dict[tuple[str, int], BatchKernel] = {}
        self._lock = threading.Lock()

    def _entry(self, model: str) -> str:
        if model in (ENCODER, DECODER):
            return self.settings.diffae
        name = CLASSIFIER if model == PROTECT else model
        if name not in self.settings.classifiers:
            raise ModelNotReady(f"model {model!r} is not configured for the local backend")
        return self.settings.classifiers[name]

    def _kernel(self, model: str, version: int) -> BatchKernel:
        with self._lock:
            key = (model, version)
            if key not in self._kernels:
                entry = version_entry(self._entry(model), version)
                self._kernels[key] = build_kernel(
                    model, self.store, entry, self.settings.feature_layer
                )
            return self._kernels[key]

    def _run(self, model: str, version: int, arrays: Arrays) -> Arrays:
        result = execute_batched(self._kernel(model, version), [arrays])[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def _call(
        self, model: str, arrays: Arrays, version: int = 0, timeout: float | None = None
    ) -> Arrays:
        """In-process: ``timeout`` is not applied (no network can stall the call)."""
        if self._executor is None:
            raise ModelNotReady("the local inference backend is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, model, version, arrays)

    async def ready(self) -> bool:
        if self._executor is None:
            return False
        loop = asyncio.get_running_loop()
        try:
            for model in self.settings.models:
                await loop.run_in_executor(self._executor, self._kernel, model, 0)
        except VeilError:
            return False
        return True

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
