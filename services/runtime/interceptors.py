"""The server interceptors every Veil service runs, outermost first:

1. :class:`RequestInterceptor` — the RPC's request id (the caller's ``x-request-id`` if
   sane, else a new one), sent back first thing as ``x-request-id`` in the response's initial
   metadata (so errors carry it too) and bound for the RPC: every log line written while it
   is served has it, and so do the calls it delegates
   (:class:`~services.runtime.client.VeilClient`); its worker pool
   (:func:`services.runtime.workers.run_in_worker`), its tracing when on
   (:mod:`services.runtime.tracing`, whose server interceptor runs outside all four); and
   one access-log line (logger ``veil.access``, INFO — DEBUG for health and reflection:
   method, status, tenant — and ``via``, the delegate acting for it —, duration, request
   id — never a payload);
2. :class:`ErrorInterceptor` — the one place a :class:`VeilError` becomes a gRPC status
   (with a ``google.rpc.ErrorInfo`` carrying its details); ``NotImplementedError`` (what a
   generated servicer's unimplemented method raises) becomes UNIMPLEMENTED, quietly; anything
   else becomes INTERNAL with a generic message and a reference id that is logged with the
   trace;
3. :class:`MetricsInterceptor` — ``grpc_server_*`` counters and latency histogram, recorded
   before the status is sent (inside the error interceptor);
4. :class:`AuthInterceptor` — bearer token → principal (bound for the RPC), scope check.

They wrap the method handler rather than the call so that they see the behaviour's own
exceptions and context variables, for all four RPC shapes. An RPC refused before any
interceptor runs (an unknown method; ``max_concurrent_rpcs`` exceeded) has no request id.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc
import grpc_status.rpc_status

from services.common.errors import PermissionDenied, VeilError
from services.runtime.auth import Authenticator, reset_principal, set_principal
from services.runtime.errors import rpc_status, status_code, to_status
from services.runtime.logging import RequestContext, bind_request, current_request, reset_request
from services.runtime.metrics import RpcMetrics
from services.runtime.tracing import Tracing, bind_tracing, reset_tracing
from services.runtime.workers import WorkerPool, bind_workers, reset_workers

log = logging.getLogger(__name__)
access_log = logging.getLogger("veil.access")
"""One INFO line per RPC; its fields are also record attributes (``extra``) for JSON logs."""

PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Methods anyone may call: health probes and reflection carry no tenant data."""

Unary = Callable[[], Awaitable[Any]]


class Rpc(NamedTuple):
    """The RPC being served: full method name and its shape (a bounded metrics label)."""

    method: str
    grpc_type: str


Stream = Callable[[], AsyncIterator[Any]]


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Base: wraps each handler's behaviour with :meth:`around` / :meth:`around_stream`."""

    def applies_to(self, method: str) -> bool:
        return True

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self.applies_to(method):
            return handler
        # A method's handler is the same object call after call (the servicer's, or the next
        # interceptor's cached wrapper), so its wrapper is built once, not per RPC; bounded:
        # only methods that have a handler are kept.
        cache: dict[str, tuple[Any, Any]] = self.__dict__.setdefault("_wrapped", {})
        hit = cache.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = _wrap(handler, self, method)
        cache[method] = (handler, wrapped)
        return wrapped

    async def around(self, call: Unary, context: grpc.aio.ServicerContext, rpc: Rpc) -> Any:
        return await call()

    async def around_stream(
        self, call: Stream, context: grpc.aio.ServicerContext, rpc: Rpc
    ) -> AsyncIterator[Any]:
        async for item in call():
            yield item


_GRPC_TYPES = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}


def _wrap(handler: grpc.RpcMethodHandler, icpt: WrappingInterceptor, method: str):
    request = "stream" if handler.request_streaming else "unary"
    response = "stream" if handler.response_streaming else "unary"
    kind = f"{request}_{response}"
    behavior = getattr(handler, kind)
    rpc = Rpc(method, _GRPC_TYPES[kind])
    if handler.response_streaming:

        async def new(request: Any, context: grpc.aio.ServicerContext) -> Any:
            stream = icpt.around_stream(
                lambda: _as_stream(behavior(request, context)), context, rpc
            )
            async for item in stream:
                yield item

    else:

        async def new(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
            return await icpt.around(lambda: behavior(request, context), context, rpc)

    return getattr(grpc, f"{kind}_rpc_method_handler")(
        new,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _as_stream(result: Any) -> AsyncIterator[Any]:
    """A response-streaming behaviour may be an async generator, a coroutine that writes
    with ``context.write``, or (from a non-aio servicer) a plain generator."""
    if inspect.isawaitable(result):
        await result
        return
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in result:
            yield item


class ErrorInterceptor(WrappingInterceptor):
    """Maps exceptions to statuses; the only place that does."""

    async def around(self, call: Unary, context: grpc.aio.ServicerContext, rpc: Rpc) -> Any:
        try:
            return await call()
        except Exception as exc:
            await self._abort(exc, context, rpc.method)

    async def around_stream(self, call: Stream, context, rpc):
        try:
            async for item in call():
                yield item
        except Exception as exc:
            await self._abort(exc, context, rpc.method)

    @staticmethod
    async def _abort(exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
        if isinstance(exc, grpc.aio.AbortError | asyncio.CancelledError):
            raise exc
        if isinstance(exc, VeilError):
            code, status = status_code(exc), to_status(exc)
        elif isinstance(exc, NotImplementedError):  # an expected answer, not a fault: no trace
            log.debug("%s is not implemented", method)
            code = grpc.StatusCode.UNIMPLEMENTED
            status = rpc_status(code, f"{method} is not implemented", "UNIMPLEMENTED", {})
        else:
            ref = uuid.uuid4().hex[:12]
            log.exception("unhandled error in %s (reference %s)", method, ref)
            code = grpc.StatusCode.INTERNAL
            status = rpc_status(
                code, f"internal error (reference {ref})", "INTERNAL", {"reference": ref}
            )
        trailer = grpc_status.rpc_status.to_status(status).trailing_metadata
        await context.abort(code, status.message, trailing_metadata=trailer)


class AuthInterceptor(WrappingInterceptor):
    """Authenticates every non-public RPC and checks its required scope."""

    def __init__(self, authenticator: Authenticator, scope_of: Callable[[str], str | None]):
        self._auth = authenticator
        self._scope_of = scope_of

    def applies_to(self, method: str) -> bool:
        return not method.startswith(PUBLIC_PREFIXES)

    def _bind(self, context: grpc.aio.ServicerContext, method: str):
        principal = self._auth.authenticate(context.invocation_metadata())
        request = current_request()
        if request is not None:
            request.tenant = principal.tenant
        scope = self._scope_of(method)
        if scope is not None and not principal.allows(scope):
            raise PermissionDenied(f"the token lacks scope {scope!r}")
        return set_principal(principal)

    async def around(self, call: Unary, context: grpc.aio.ServicerContext, rpc: Rpc) -> Any:
        token = self._bind(context, rpc.method)
        try:
            return await call()
        finally:
            reset_principal(token)

    async def around_stream(self, call: Stream, context, rpc):
        self._bind(context, rpc.method)  # the RPC's task owns its context: nothing to reset
        async for item in call():
            yield item


class MetricsInterceptor(WrappingInterceptor):
    """Counts and times every RPC with bounded labels (service, method, type, code)."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._m = metrics

    async def around(self, call: Unary, context: grpc.aio.ServicerContext, rpc: Rpc) -> Any:
        labels, start = self._m.started(rpc.method, rpc.grpc_type), time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await call()
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            self._m.handled(labels, code.name, time.perf_counter() - start)

    async def around_stream(self, call: Stream, context, rpc):
        labels, start = self._m.started(rpc.method, rpc.grpc_type), time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            async for item in call():
                yield item
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            self._m.handled(labels, code.name, time.perf_counter() - start)


def _code_of(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status ``exc`` ends its RPC with: as the error interceptor maps it (the metrics
    interceptor runs inside that one, so that an RPC is counted before its status reaches
    the client: a scrape right after an error sees it), or as already sent (AbortError)."""
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(exc, VeilError):
        return status_code(exc)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL if isinstance(exc, Exception) else grpc.StatusCode.UNKNOWN


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
"""An ``x-request-id`` is kept when it matches; anything else (too long, odd characters) is
replaced by a fresh id, so a caller cannot write arbitrary text into the logs."""


def request_id_of(metadata: Any) -> str:
    """The caller's ``x-request-id`` if it is a sane one, else a new random id."""
    given = next((v for k, v in metadata or () if k.lower() == "x-request-id"), None)
    if isinstance(given, str) and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestInterceptor(WrappingInterceptor):
    """Binds the RPC's request id, worker pool and tracing, sends the request id back and
    writes the access-log line."""

    def __init__(self, workers: WorkerPool, tracing: Tracing | None = None) -> None:
        self._workers = workers
        self._tracing = tracing

    def _start(self, context: grpc.aio.ServicerContext) -> RequestContext:
        request = RequestContext(request_id_of(context.invocation_metadata()))
        if self._tracing is not None:
            request.trace_id = self._tracing.trace_id()
        return request

    async def around(self, call: Unary, context: grpc.aio.ServicerContext, rpc: Rpc) -> Any:
        request = self._start(context)
        tokens = bind_request(request), bind_workers(self._workers), bind_tracing(self._tracing)
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            await _send_request_id(context, request)
            return await call()
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            reset_request(tokens[0])
            reset_workers(tokens[1])
            reset_tracing(tokens[2])
            _log_access(rpc, request, code, start)

    async def around_stream(self, call: Stream, context, rpc):
        request = self._start(context)
        # The RPC's task owns its context: nothing to reset.
        bind_request(request), bind_workers(self._workers), bind_tracing(self._tracing)
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            await _send_request_id(context, request)
            async for item in call():
                yield item
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            _log_access(rpc, request, code, start)


async def _send_request_id(context: grpc.aio.ServicerContext, request: RequestContext) -> None:
    """The response's initial metadata, sent before the behaviour runs: the caller gets
    ``x-request-id`` whatever the RPC ends with (the behaviours send no initial metadata
    of their own)."""
    await context.send_initial_metadata((("x-request-id", request.request_id),))


def _log_access(rpc: Rpc, call: RequestContext, code: grpc.StatusCode, start: float) -> None:
    # Health probes and reflection (every few seconds from Kubernetes) log at DEBUG only.
    level = logging.DEBUG if rpc.method.startswith(PUBLIC_PREFIXES) else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    ms = (time.perf_counter() - start) * 1000
    access_log.log(
        level,
        "%s %s %.1fms tenant=%s%s request_id=%s",
        rpc.method,
        code.name,
        ms,
        call.tenant or "-",
        f" via={call.via}" if call.via else "",
        call.request_id,
        extra={
            "method": rpc.method,
            "status": code.name,
            "tenant": call.tenant,
            "via": call.via,
            "duration_ms": round(ms, 3),
            "request_id": call.request_id,
            "trace_id": call.trace_id,
        },
    )
