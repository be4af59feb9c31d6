"""OpenTelemetry tracing by interceptor (``opentelemetry-instrumentation-grpc``), off by
default.

With ``tracing_endpoint`` set (an OTLP/gRPC collector: ``http://host:4317`` in plaintext,
``https://…`` over TLS) a server gets its own :class:`Tracing`: a TracerProvider whose
resource names the service (``veil-<name>``), sampling ``tracing_sample_ratio`` of new traces
and following the caller's decision otherwise, batching spans to the OTLP exporter. Its aio
server interceptor (outermost) opens a SERVER span per RPC — continuing the caller's trace
from its ``traceparent`` — and the request interceptor binds the Tracing for the RPC, so
that a delegated call made through :class:`~services.runtime.client.VeilClient` while
serving it (the sanitizer's to the accountant) goes out through the library's aio client
interceptors: a CLIENT span, and ``traceparent`` in its metadata. Health and reflection
are not traced (Kubernetes probes them every few seconds).

Unset, nothing here imports OpenTelemetry (the packages are the ``tracing`` extra) and no
interceptor is added. A provider per server rather than the process-global one: tests run
two services in one process, each with its own service name.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import TYPE_CHECKING, Any

from services import __version__

if TYPE_CHECKING:
    from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

UNTRACED = ("grpc.health.", "grpc.reflection.")
"""Services whose RPCs get no span, on either side."""
FLUSH_TIMEOUT_S = 2.0
"""Longest a stopping server waits for its last spans to be exported."""


class Tracing:
    """One server's tracing: its provider, its server interceptor and the client
    interceptors (one per call kind) its delegated calls go through."""

    def __init__(self, provider: Any, server_interceptor: Any, client_interceptors: list[Any]):
        self.provider = provider
        self.server_interceptor = server_interceptor
        self.client_interceptors = client_interceptors

    @staticmethod
    def trace_id() -> str | None:
        """The current span's trace id (32 hex digits), None when no span is recording."""
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def shutdown(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        """Export what is batched, then stop (after the server has stopped), waiting at
        most ``timeout_s``: a collector that is down (the exporter retries for seconds)
        must not hold up the pod's exit; its spans are lost then."""
        worker = threading.Thread(
            target=self.provider.shutdown, name="tracing-shutdown", daemon=True
        )
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("spans not exported within %.1fs of stopping: dropped", timeout_s)


def start_tracing(
    service: str, settings: ServiceSettings, exporter: Any | None = None
) -> Tracing | None:
    """The server's tracing, or None when it is off (no ``tracing_endpoint`` and no
    ``exporter``). ``exporter`` (tests: an ``InMemorySpanExporter``) replaces the OTLP
    one and gets each span as it ends."""
    if exporter is None and not settings.tracing_endpoint:
        return None
    try:
        from opentelemetry.instrumentation.grpc import (
            aio_client_interceptors,
            aio_server_interceptor,
        )
    except ImportError as exc:
        raise RuntimeError(
            "tracing_endpoint is set but OpenTelemetry is not installed: "
            "pip install 'veil[tracing]'"
        ) from exc
    from opentelemetry.instrumentation.grpc.filters import any_of, negate, service_prefix
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": f"veil-{service}", "service.version": __version__})
    sampler = ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_endpoint))
        )
        log.info("%s: tracing to %s", service, settings.tracing_endpoint)
    traced = negate(any_of(*(service_prefix(p) for p in UNTRACED)))
    return Tracing(
        provider,
        aio_server_interceptor(tracer_provider=provider, filter_=traced),
        aio_client_interceptors(tracer_provider=provider, filter_=traced),
    )


_current: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar(
    "veil_tracing", default=None
)


def bind_tracing(tracing: Tracing | None) -> contextvars.Token[Tracing | None]:
    """Bind the serving server's tracing for the current RPC (the request interceptor does)."""
    return _current.set(tracing)


def reset_tracing(token: contextvars.Token[Tracing | None]) -> None:
    """Undo :func:`bind_tracing`."""
    _current.reset(token)


def current_tracing() -> Tracing | None:
    """The tracing of the server whose RPC is being served; None outside an RPC or off."""
    return _current.get()
