"""The kernels on a Triton server, through ``tritonclient.grpc.aio``.

Each call has a deadline (``client_timeout``); UNAVAILABLE, and only UNAVAILABLE, is retried
with exponential backoff inside that deadline; batches larger than a model's
``max_batch_size`` are split and sent concurrently (Triton's dynamic batcher may merge
them again), except a ``veil_protect`` call with a time budget: its parts go one after the
other, each with an equal share of the budget left, since one instance would otherwise run
them in turn with the whole budget each. Triton's errors become ``services.common.errors``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelNotReady,
    Unavailable,
    VeilError,
)
from services.inference.backend import (
    NO_MODEL_CONTROL,
    NOT_EXPLICIT,
    InferenceBackend,
    InferenceSettings,
)
from services.serving.contract import CLASSIFIER, MODELS, Arrays, ModelSpec


def map_error(exc: InferenceServerException, model: str) -> VeilError:
    """A Triton client error as the Veil error a service reports."""
    status = (exc.status() or "").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    if status == "INVALID_ARGUMENT":
        return InvalidArgument(f"{model}: {message}")
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"{model}: no answer from Triton within the deadline")
    if status == "UNAVAILABLE" and ("model" in message.lower() and "unavailable" not in message):
        return ModelNotReady(f"{model} is not ready on Triton: {message}")
    if status in ("UNAVAILABLE", "CANCELLED") or "unknown model" in message.lower():
        return Unavailable(f"Triton is unavailable for {model}: {message}")
    if status == "NOT_FOUND":
        return ModelNotReady(f"{model} is not loaded on Triton: {message}")
    return VeilError(f"{model}: Triton error {status or 'UNKNOWN'}: {message}")


BUDGET = "TIME_BUDGET_S"


def _time_budget(arrays: Arrays) -> float | None:
    """A positive ``TIME_BUDGET_S`` of the request, or None (no limit)."""
    column = arrays.get(BUDGET)
    if column is None or not column.size or not float(column.flat[0]) > 0:
        return None
    return float(column.flat[0])


def model_spec(model: str) -> ModelSpec:
    """The contract of ``model``; any other name is a classifier (e.g. an attacker)."""
    return MODELS.get(model, MODELS[CLASSIFIER])


def channel_args(settings: InferenceSettings) -> list[tuple[str, int]]:
    """tritonclient's own channel options (message sizes, keepalive) plus a short reconnect
    backoff. gRPC's grows to 120 s: a service whose Triton was SIGKILLed and away ~17 s
    made its first call again 6.9-8.4 s after Triton was back; capped at
    ``reconnect_backoff_max_s`` (1 s), 0.2-1.1 s (``pytest -s
    tests/inference/test_triton_recovery.py``, 2 cores, 2026-12-07)."""
    keepalive = grpcclient.KeepAliveOptions()
    backoff_ms = int(settings.reconnect_backoff_max_s * 1000)
    return [
        ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(200, backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(200, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
    ]


async def _addresses(url: str) -> list[str]:
    """``host:port`` for every IPv4 address ``url``'s host resolves to (a headless
    Service's name: one per ready pod), sorted; a name that does not resolve gives none."""
    host, _, port = url.rpartition(":")
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host, int(port), family=socket.AF_INET, type=socket.SOCK_STREAM
        )
    except (OSError, ValueError):
        return []
    return sorted({f"{info[4][0]}:{port}" for info in found})


def _trace_headers() -> dict[str, str] | None:
    """The served RPC's ``traceparent`` when tracing is on (only then is OpenTelemetry
    loaded: ``services.runtime.tracing``), so Triton's spans join the caller's trace."""
    propagate = sys.modules.get("opentelemetry.propagate")
    if propagate is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


NO_SUCH_MODEL = "__veil_model_control_check__"
CONTROL_CHECK_S = 30.0


class TritonBackend(InferenceBackend):
    """The kernels on Triton (``triton_models/``): gRPC, deadlines, retries, readiness."""

    def __init__(self, settings: InferenceSettings | None = None) -> None:
        self.settings = settings or InferenceSettings(backend="triton")
        self._client: grpcclient.InferenceServerClient | None = None
        self._control: tuple[float, bool] | None = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(
                self.settings.triton_url, channel_args=channel_args(self.settings)
            )
        return self._client

    async def _infer_once(self, model: str, arrays: Arrays, version: int, timeout: float) -> Arrays:
        spec = model_spec(model)
        inputs = []
        for tensor in spec.inputs:
            if tensor.optional and tensor.name not in arrays:
                continue
            value = np.ascontiguousarray(arrays[tensor.name], dtype=tensor.numpy_dtype)
            infer_input = grpcclient.InferInput(tensor.name, list(value.shape), tensor.datatype)
            infer_input.set_data_from_numpy(value)
            inputs.append(infer_input)
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in spec.outputs]
        result = await self.client.infer(
            model,
            inputs,
            model_version=str(version) if version else "",
            outputs=outputs,
            client_timeout=timeout,
            headers=_trace_headers(),
        )
        return {t.name: result.as_numpy(t.name) for t in spec.outputs}

    async def _infer(self, model: str, arrays: Arrays, version: int, timeout: float) -> Arrays:
        """One request, retried on UNAVAILABLE with backoff until ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        backoff = self.settings.backoff_s
        for attempt in range(self.settings.retries + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"{model}: no answer from Triton within {timeout:.3g}s")
            try:
                return await asyncio.wait_for(
                    self._infer_once(model, arrays, version, left), left + 1.0
                )
            except TimeoutError:
                raise DeadlineExceeded(
                    f"{model}: no answer from Triton within {timeout:.3g}s"
                ) from None
            except InferenceServerException as exc:
                error = map_error(exc, model)
                retriable = exc.status() == "StatusCode.UNAVAILABLE"
                if not retriable or attempt == self.settings.retries:
                    raise error from None
                await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff *= 2
        raise AssertionError("unreachable")

    async def _call(
        self, model: str, arrays: Arrays, version: int = 0, timeout: float | None = None
    ) -> Arrays:
        """Split a batch at the model's ``max_batch_size``; chunks run concurrently (a time
        budget's in turn: module docstring)."""
        limit = model_spec(model).max_batch_size
        rows = len(next(iter(arrays.values())))
        timeout = self.settings.timeout_s if timeout is None else timeout
        chunks = [
            {name: value[start : start + limit] for name, value in arrays.items()}
            for start in range(0, max(rows, 1), limit)
        ]
        budget = _time_budget(arrays)
        if len(chunks) > 1 and budget is not None:
            parts = await self._in_turn(model, chunks, version, timeout, budget)
        else:
            parts = await asyncio.gather(*(self._infer(model, c, version, timeout) for c in chunks))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def _in_turn(
        self, model: str, chunks: list[Arrays], version: int, timeout: float, budget: float
    ) -> list[Arrays]:
        """Chunks one after the other, each with an equal share of the budget left."""
        end = time.monotonic() + budget
        parts = []
        for i, chunk in enumerate(chunks):
            share = max((end - time.monotonic()) / (len(chunks) - i), 1e-6)  # > 0: a limit
            column = np.full_like(chunk[BUDGET], share)
            parts.append(await self._infer(model, {**chunk, BUDGET: column}, version, timeout))
        return parts

    async def load_model(self, model: str, version: int) -> None:
        """Triton's explicit model control: (re)load ``model`` from its repository (its
        version policy picks the versions), then check that ``version`` answers ready — on
        every replica ``triton_load_url`` names, else on the Triton of ``triton_url``.
        Needs ``--model-control-mode=explicit`` (:meth:`can_load` tells)."""
        if self.settings.triton_load_url is None:
            await self._load_on(self.client, self.settings.triton_url, model, version)
            return
        targets = await _addresses(self.settings.triton_load_url)
        if not targets:
            raise ModelNotReady(f"{self.settings.triton_load_url} names no Triton replica")
        for target in targets:  # one after the other: each replica loads from shared storage
            client = grpcclient.InferenceServerClient(target)
            try:
                await self._load_on(client, target, model, version)
            finally:
                await client.close()

    async def _load_on(
        self, client: grpcclient.InferenceServerClient, url: str, model: str, version: int
    ) -> None:
        timeout = self.settings.timeout_s
        try:
            await client.load_model(model, client_timeout=timeout)
            ready = await client.is_model_ready(model, str(version), client_timeout=timeout)
        except InferenceServerException as exc:
            said = exc.message() or str(exc)
            if NO_MODEL_CONTROL in said:
                said = NOT_EXPLICIT.format(url=url)
            raise ModelNotReady(
                f"Triton at {url} could not load {model} version {version}: {said}"
            ) from None
        if not ready:
            raise ModelNotReady(f"{model} version {version} is not ready on Triton at {url}")

    async def can_load(self) -> bool:
        """Whether Triton takes explicit load requests: unloading a model that does not
        exist is a no-op in ``explicit`` mode and refused in ``none`` and ``poll`` modes
        (the only difference the protocol shows; measured on tritonserver 2.x from
        nvidia-pytriton). The answer is kept for :data:`CONTROL_CHECK_S`."""
        now = time.monotonic()
        if self._control is not None and now - self._control[0] < CONTROL_CHECK_S:
            return self._control[1]
        try:
            await self.client.unload_model(
                NO_SUCH_MODEL, client_timeout=self.settings.ready_timeout_s
            )
            explicit = True
        except InferenceServerException as exc:
            explicit = NO_MODEL_CONTROL not in (exc.message() or str(exc))
            if explicit:  # any other refusal: Triton is not answering well; ask again soon
                return False
        except Exception:
            return False
        self._control = (now, explicit)
        return explicit

    async def ready(self) -> bool:
        """Triton is ready and so is every model the services call (never raises)."""
        timeout = self.settings.ready_timeout_s
        try:
            if not await self.client.is_server_ready(client_timeout=timeout):
                return False
            for model in self.settings.models:
                if not await self.client.is_model_ready(model, client_timeout=timeout):
                    return False
        except Exception:
            return False
        return True

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
