"""The in-process inference backend: the served kernels on a worker thread of this process
(the embedded default; the same :mod:`services.serving.batch` code path as Triton's models).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.common.errors import ModelNotReady, VeilError
from services.inference.backend import InferenceBackend, InferenceSettings
from services.serving.batch import BatchKernel, execute_batched
from services.serving.contract import CLASSIFIER, DECODER, ENCODER, PROTECT, PROTECTOR, Arrays
from services.serving.entries import version_entry
from services.serving.loading import build_kernel, resolve_store


class LocalBackend(InferenceBackend):
    """The kernels in this process, on a worker thread: the embedded default."""

    def __init__(self, settings: InferenceSettings | None = None) -> None:
        self.settings = settings or InferenceSettings()
        self.store = resolve_store(self.settings.store)
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix="veil-kernels"
        )
        self._kernels: dict[tuple[str, int, str], BatchKernel] = {}
        self._lock = threading.Lock()
        self._diffae = self.settings.diffae
        """The store entry behind ``veil_encoder`` / ``veil_decoder`` now."""

    def _entry(self, model: str) -> str:
        if model in (ENCODER, DECODER):
            return self._diffae
        if model == PROTECTOR:
            return self.settings.protector
        name = CLASSIFIER if model == PROTECT else model
        if name not in self.settings.classifiers:
            raise ModelNotReady(f"model {model!r} is not configured for the local backend")
        return self.settings.classifiers[name]

    def _kernel(self, model: str, version: int, base: str | None = None) -> BatchKernel:
        with self._lock:
            base = base or self._entry(model)
            key = (model, version, base)
            if key not in self._kernels:
                entry = version_entry(base, version)
                self._kernels[key] = build_kernel(
                    model,
                    self.store,
                    entry,
                    self.settings.feature_layer,
                    surrogates=self.settings.surrogates,
                )
            return self._kernels[key]

    def _run(self, model: str, version: int, arrays: Arrays, submitted: float) -> Arrays:
        kernel = self._kernel(model, version)
        budget = arrays.get("TIME_BUDGET_S")
        if budget is not None and budget.size and float(budget.flat[0]) > 0:
            # The budget counts from the call, not from when this worker got to it.
            left = float(budget.flat[0]) - (time.monotonic() - submitted)
            arrays = {**arrays, "TIME_BUDGET_S": np.full_like(budget, max(left, 1e-6))}
        result = execute_batched(kernel, [arrays])[0]
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
        submitted = time.monotonic()
        return await loop.run_in_executor(
            self._executor, self._run, model, version, arrays, submitted
        )

    async def load_model(self, model: str, version: int) -> None:
        """Build version ``version``'s kernel now (its weights checked), so the first call
        does not pay for it and a broken version fails here."""
        if self._executor is None:
            raise ModelNotReady("the local inference backend is closed")
        with self._lock:
            self._kernels.pop((model, version, self._entry(model)), None)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._kernel, model, version)

    async def load_diffae(self, entry: str) -> None:
        if self._executor is None:
            raise ModelNotReady("the local inference backend is closed")
        loop = asyncio.get_running_loop()
        for model in (ENCODER, DECODER):
            await loop.run_in_executor(self._executor, self._kernel, model, 0, entry)

    def use_diffae(self, entry: str) -> None:
        with self._lock:
            if not all((m, 0, entry) in self._kernels for m in (ENCODER, DECODER)):
                raise ModelNotReady(f"the encoder {entry!r} is not loaded (load_diffae first)")
            self._diffae = entry
            for key in [k for k in self._kernels if k[0] in (ENCODER, DECODER)]:
                if key[2] != entry:
                    del self._kernels[key]

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
