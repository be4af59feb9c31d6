"""A small typed client for Veil's gRPC services, used by tests, the README and benches.

    async with VeilClient("127.0.0.1:50052", token="s3cret") as veil:
        me = await veil.diagnostics.WhoAmI(diagnostics_pb2.WhoAmIRequest())

The bearer token is attached to every call by a client interceptor; message size limits
match the servers' defaults; TLS (and a client certificate for mTLS) is optional.

A call made while a Veil server serves an RPC (a service's delegated call: the sanitizer's
to the accountant) carries that RPC's request id as ``x-request-id``, so both access logs
show one id, and — with tracing on (:mod:`services.runtime.tracing`) — goes through the
serving server's OpenTelemetry client interceptor: a CLIENT span and ``traceparent``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services._proto.veil.v1 import diagnostics_pb2_grpc
from services.runtime.logging import current_request
from services.runtime.tracing import current_tracing

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class _BearerToken:
    """Adds ``authorization: Bearer <token>`` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return details._replace(metadata=metadata)


class _UnaryUnaryToken(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)


class _StreamUnaryToken(_BearerToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)


class _StreamStreamToken(_BearerToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self._with_token(details), request_iterator)


def _token_interceptors(token: str) -> list[Any]:
    """One interceptor per call kind: grpc.aio files an interceptor under the *first* kind
    it is an instance of, so one class implementing all four would sign unary calls only
    (streams went out without the token)."""
    return [
        kind(token)
        for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    ]


class _Delegated:
    """Carries the RPC being served into a call made while serving it: its request id
    (unless the call sets one) and, when its server traces, the trace (by handing the call
    to the library's client interceptor of the same kind, ``KIND``)."""

    KIND = 0

    @staticmethod
    def _with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        request = current_request()
        metadata = details.metadata or ()
        if request is None or any(k.lower() == "x-request-id" for k, _ in metadata):
            return details
        header = ("x-request-id", request.request_id)
        return details._replace(metadata=grpc.aio.Metadata(*metadata, header))

    def _traced(self) -> Any:
        tracing = current_tracing()
        return tracing.client_interceptors[self.KIND] if tracing is not None else None


class _UnaryUnaryDelegated(_Delegated, grpc.aio.UnaryUnaryClientInterceptor):
    KIND = 0

    async def intercept_unary_unary(self, continuation, details, request):
        details, traced = self._with_request_id(details), self._traced()
        if traced is not None:
            return await traced.intercept_unary_unary(continuation, details, request)
        return await continuation(details, request)


class _UnaryStreamDelegated(_Delegated, grpc.aio.UnaryStreamClientInterceptor):
    KIND = 1

    async def intercept_unary_stream(self, continuation, details, request):
        details, traced = self._with_request_id(details), self._traced()
        if traced is not None:
            return await traced.intercept_unary_stream(continuation, details, request)
        return await continuation(details, request)


class _StreamUnaryDelegated(_Delegated, grpc.aio.StreamUnaryClientInterceptor):
    KIND = 2

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        details, traced = self._with_request_id(details), self._traced()
        if traced is not None:
            return await traced.intercept_stream_unary(continuation, details, request_iterator)
        return await continuation(details, request_iterator)


class _StreamStreamDelegated(_Delegated, grpc.aio.StreamStreamClientInterceptor):
    KIND = 3

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        details, traced = self._with_request_id(details), self._traced()
        if traced is not None:
            return await traced.intercept_stream_stream(continuation, details, request_iterator)
        return await continuation(details, request_iterator)


def _delegated_interceptors() -> list[Any]:
    """One per call kind, for the reason :func:`_token_interceptors` gives; in the order of
    :func:`services.runtime.tracing.start_tracing`'s client interceptors."""
    return [
        _UnaryUnaryDelegated(),
        _UnaryStreamDelegated(),
        _StreamUnaryDelegated(),
        _StreamStreamDelegated(),
    ]


class VeilClient:
    """An async channel with typed stubs for each Veil service (created on first use)."""

    def __init__(
        self,
        target: str,
        token: str | None = None,
        *,
        root_certificates: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        interceptors = [*(_token_interceptors(token) if token else ()), *_delegated_interceptors()]
        if root_certificates is not None:
            key_chain = (
                (client_cert[1].read_bytes(), client_cert[0].read_bytes())
                if client_cert
                else (None, None)
            )
            creds = grpc.ssl_channel_credentials(
                root_certificates.read_bytes(),
                private_key=key_chain[0],
                certificate_chain=key_chain[1],
            )
            self.channel = grpc.aio.secure_channel(
                target, creds, options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.diagnostics = diagnostics_pb2_grpc.DiagnosticsStub(self.channel)

    def __getattr__(self, name: str) -> Any:
        """Stubs for the ledger and model services, imported only when asked for."""
        stubs = {
            "accountant": ("accountant_pb2_grpc", "AccountantStub"),
            "sanitizer": ("sanitizer_pb2_grpc", "SanitizerStub"),
            "unlearning": ("unlearning_pb2_grpc", "UnlearningStub"),
            "protection": ("protection_pb2_grpc", "ProtectionStub"),
            "registry": ("registry_pb2_grpc", "ModelRegistryStub"),
        }
        if name not in stubs:
            raise AttributeError(name)
        import importlib

        module, cls = stubs[name]
        stub = getattr(importlib.import_module(f"services._proto.veil.v1.{module}"), cls)(
            self.channel
        )
        setattr(self, name, stub)
        return stub

    async def check_health(self, service: str = "") -> int:
        """The ``grpc.health.v1`` status of ``service`` ("" = overall readiness)."""
        response = await self.health.Check(health_pb2.HealthCheckRequest(service=service))
        return int(response.status)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> VeilClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class LazyClient:
    """A :class:`VeilClient` made on first use — inside the server's event loop, since an
    aio channel is bound to the loop it was made in — for a service that calls another
    (the sanitizer the accountant, protection the model registry)."""

    def __init__(self, target: str, token: str = "", tls_ca: str | None = None) -> None:
        self._target, self._token, self._tls_ca = target, token, tls_ca
        self._client: VeilClient | None = None

    def get(self) -> VeilClient:
        if self._client is None:
            ca = Path(self._tls_ca) if self._tls_ca else None
            self._client = VeilClient(self._target, self._token or None, root_certificates=ca)
        return self._client

    async def ready(self) -> bool:
        """The callee's overall readiness is SERVING (never raises)."""
        try:
            return await self.get().check_health() == 1  # SERVING
        except grpc.RpcError:
            return False

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def wait_until_ready(
    target: str, timeout: float = 30.0, *, alive: Callable[[], bool] | None = None
) -> None:
    """Block until the plaintext server at ``target`` reports readiness SERVING (a server
    just started, a stack coming up); TimeoutError after ``timeout`` seconds, RuntimeError
    as soon as ``alive()`` says the server's process is gone."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="readiness")
        while True:
            try:
                if (
                    health.Check(request, timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            if alive is not None and not alive():
                raise RuntimeError(f"the server for {target} exited before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} did not become ready in {timeout} s")
            time.sleep(0.1)
