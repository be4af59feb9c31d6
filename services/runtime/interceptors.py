"""The three server interceptors every Veil service runs, outermost first:

1. :class:`MetricsInterceptor` — ``grpc_server_*`` counters and latency histogram;
2. :class:`ErrorInterceptor` — the one place a :class:`VeilError` becomes a gRPC status
   (with a ``google.rpc.ErrorInfo`` carrying its details); anything else becomes INTERNAL
   with a generic message and a reference id that is logged with the trace;
3. :class:`AuthInterceptor` — bearer token → principal (bound for the RPC), scope check.

They wrap the method handler rather than the call so that they see the behaviour's own
exceptions and context variables, for all four RPC shapes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc
import grpc_status.rpc_status

from services.common.errors import PermissionDenied, VeilError
from services.runtime.auth import TokenAuthenticator, reset_principal, set_principal
from services.runtime.errors import rpc_status, status_code, to_status
from services.runtime.metrics import RpcMetrics

log = logging.getLogger(__name__)

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
        return _wrap(handler, self, method)

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

    def __init__(self, authenticator: TokenAuthenticator, scope_of: Callable[[str], str | None]):
        self._auth = authenticator
        self._scope_of = scope_of

    def applies_to(self, method: str) -> bool:
        return not method.startswith(PUBLIC_PREFIXES)

    def _bind(self, context: grpc.aio.ServicerContext, method: str):
        principal = self._auth.authenticate(context.invocation_metadata())
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
    if isinstance(exc, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
