"""Server bootstrap shared by every service: one ``grpc.aio`` server per process with
health (liveness vs readiness), reflection, the request/auth/error/metrics interceptors,
OpenTelemetry tracing when ``tracing_endpoint`` is set, message limits, a ``/metrics``
endpoint and graceful shutdown.

A service describes itself as a :class:`ServiceApp` (its servicers, its readiness check,
its start/stop hooks, its worker pool); :class:`VeilServer` runs it. ``start()`` and
``stop()`` are idempotent. Shutdown: health goes NOT_SERVING, ``drain_delay_s`` passes (load
balancers notice), new RPCs are refused and in-flight ones get ``shutdown_grace_s`` to finish.

Start-up with a dependency down does not crash-loop: when a start hook raises
:class:`~services.common.errors.Unavailable` (say, the database is not up yet), the server
binds and serves anyway — liveness SERVING, readiness NOT_SERVING — and retries that hook and
the ones after it in the background, waiting ``start_retry_initial_s`` and doubling up to
``start_retry_max_s``, one WARNING per failure. Readiness polling begins once every hook has
succeeded. RPCs that arrive meanwhile reach the servicers, which answer UNAVAILABLE if they
need what is missing. Any other exception from a start hook fails the start.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME as HEALTH_SERVICE
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import CollectorRegistry

from services import __version__
from services.common.errors import Unavailable
from services.runtime.auth import ReloadingAuthenticator
from services.runtime.health import LIVENESS, NOT_SERVING, READINESS, SERVING, HealthServicer
from services.runtime.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    MetricsInterceptor,
    RequestInterceptor,
)
from services.runtime.metrics import GRPC_TYPES, MetricsEndpoint, RpcMetrics, serve_metrics
from services.runtime.reflection import SERVICE_NAMES as REFLECTION_SERVICES
from services.runtime.reflection import add_reflection
from services.runtime.settings import ServiceSettings
from services.runtime.tracing import Tracing, start_tracing
from services.runtime.workers import WorkerPool

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


@dataclass
class Mount:
    """One gRPC service on the server: the servicer and its generated ``add_*_to_server``."""

    full_name: str
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


@dataclass
class ServiceApp:
    """What a service gives the runtime; built by each service's ``build_app``."""

    name: str
    settings: ServiceSettings
    mounts: list[Mount]
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    ready: Callable[[], Awaitable[bool]] | None = None
    """Readiness check, polled every ``readiness_interval_s``; None = ready once started."""
    method_scopes: dict[str, str | None] = field(default_factory=dict)
    """Full method name → required scope; methods not listed need ``<service>:<method>``."""
    on_start: list[Hook] = field(default_factory=list)
    """Run in order before readiness; one that raises Unavailable is retried (module doc)."""
    on_stop: list[Hook] = field(default_factory=list)
    readiness_interval_s: float = 1.0
    span_exporter: Any = None
    """Tests: an OpenTelemetry span exporter (``InMemorySpanExporter``) that turns tracing on
    and gets each span as it ends, in place of OTLP to ``settings.tracing_endpoint``."""
    workers: WorkerPool = field(init=False)
    """The pool for CPU-heavy work (``settings.worker_threads``, ``worker_queue``); running
    while the server does. Servicers keep it from ``build_app`` or, inside an RPC, use
    :func:`services.runtime.workers.run_in_worker`."""
    rpc_metrics: RpcMetrics = field(init=False)
    """The RPC metrics and ``veil_build_info`` on ``registry``, from the app's build on; each
    served method's series are put at 0 when a :class:`VeilServer` takes the app."""

    def __post_init__(self) -> None:
        self.workers = WorkerPool(self.settings.worker_threads, self.settings.worker_queue)
        self.rpc_metrics = RpcMetrics(self.registry, self.name, __version__)

    def scope_of(self, method: str) -> str | None:
        if method in self.method_scopes:
            return self.method_scopes[method]
        # Derived once per method (the auth interceptor asks on every RPC, and only for
        # methods that have a handler: a bounded set).
        derived: dict[str, str | None] = self.__dict__.setdefault("_derived_scopes", {})
        if method not in derived:
            derived[method] = ServiceApp._derive_scope(method)
        return derived[method]

    @staticmethod
    def _derive_scope(method: str) -> str | None:
        service, _, name = method.lstrip("/").rpartition("/")
        if service == "veil.v1.Diagnostics":
            return None  # any authenticated caller may ask who it is
        short = service.rpartition(".")[2].lower()
        return f"{short}:{re.sub(r'(?<!^)(?=[A-Z])', '_', name).lower()}"


def served_methods(app: ServiceApp) -> list[tuple[str, str]]:
    """``(/service/Method, grpc_type)`` of every method a server of ``app`` serves: its
    mounts', health's and reflection's (under both names), read from their descriptors. A
    mount whose service no loaded descriptor declares (a test's stand-in) is left out: its
    series appear with its first call."""
    pool = descriptor_pool.Default()
    services = []
    for name in [*(m.full_name for m in app.mounts), HEALTH_SERVICE]:
        try:
            services.append((name, pool.FindServiceByName(name)))
        except KeyError:
            continue
    reflection = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    services += [(name, reflection) for name in REFLECTION_SERVICES]
    return [
        (f"/{name}/{m.name}", GRPC_TYPES[(m.client_streaming, m.server_streaming)])
        for name, service in services
        for m in service.methods
    ]


class VeilServer:
    """Runs one :class:`ServiceApp`: ``await start()``, ``await stop()``, or ``await run()``.

    Made before it binds, it puts the RPC series of every method it will serve at 0, so that
    they are scraped before any call."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        app.rpc_metrics.initialise(served_methods(app))
        self.settings = app.settings
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._tracing: Tracing | None = None
        self._health = HealthServicer()
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._starting_task: asyncio.Task[None] | None = None
        self._readiness_task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._start_failed = asyncio.Event()
        self._hooks_done = False
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    @property
    def start_hooks_done(self) -> bool:
        """True once every start hook has succeeded (readiness is then the app's own)."""
        return self._hooks_done

    async def start(self) -> int:
        """Bind, start serving and return the gRPC port. Idempotent."""
        if self._server is not None:
            return int(self.port or 0)
        self.app.workers.start()
        try:
            pending = await self._run_start_hooks(self.app.on_start, self._backoff(0))
            self._tracing = start_tracing(self.app.name, self.settings, self.app.span_exporter)
            server = self._build_server()
            self.port = self._bind(server)
        except BaseException:
            self.app.workers.shutdown()
            self._stop_tracing()
            raise
        await self._health.set(LIVENESS, SERVING)
        await self._set_ready(False)
        await server.start()
        self._server, self._stopped = server, asyncio.Event()
        if pending:
            self._starting_task = asyncio.create_task(self._finish_start(pending))
        else:
            await self._start_readiness()
        s = self.settings
        if s.metrics_port is not None:
            self._metrics_endpoint = serve_metrics(
                self.app.registry, s.metrics_host, s.metrics_port
            )
            self.metrics_port = self._metrics_endpoint.port
        log.info("%s serving on %s (metrics on %s)", self.app.name, self.address, self.metrics_port)
        return self.port

    def _build_server(self) -> grpc.aio.Server:
        s = self.settings
        rpc_metrics = self.app.rpc_metrics
        tracing = self._tracing
        server = grpc.aio.server(
            interceptors=[
                *([tracing.server_interceptor] if tracing is not None else []),
                RequestInterceptor(self.app.workers, tracing),
                ErrorInterceptor(),
                MetricsInterceptor(rpc_metrics),
                AuthInterceptor(ReloadingAuthenticator(s.tokens, s.tokens_file), self.app.scope_of),
            ],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        for mount in self.app.mounts:
            mount.add_to_server(mount.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        add_reflection(server, [*(m.full_name for m in self.app.mounts), HEALTH_SERVICE])
        return server

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait after failed retry ``attempt`` (0 = the first try, in start())."""
        s = self.settings
        return float(min(s.start_retry_initial_s * 2 ** min(attempt, 60), s.start_retry_max_s))

    async def _run_start_hooks(self, hooks: list[Hook], wait: float) -> list[Hook]:
        """Run ``hooks`` in order; the ones left, from the first that raised Unavailable
        (logged, without a trace: it is an expected state, retried after ``wait``)."""
        for i, hook in enumerate(hooks):
            try:
                await hook()
            except Unavailable as exc:
                log.warning(
                    "%s: start hook %s: %s; retrying in %.1fs (not ready until it succeeds)",
                    self.app.name,
                    getattr(hook, "__qualname__", hook),
                    exc.message,
                    wait,
                )
                return hooks[i:]
        return []

    async def _finish_start(self, pending: list[Hook]) -> None:
        """Retry the start hooks left with capped exponential backoff, then begin readiness.
        Any error but Unavailable gives up: liveness NOT_SERVING, and :meth:`run` exits."""
        attempt = 0
        try:
            while pending:
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                pending = await self._run_start_hooks(pending, self._backoff(attempt))
        except Exception:
            log.exception("%s: start hook failed; giving up", self.app.name)
            await self._health.set(LIVENESS, NOT_SERVING)
            self._start_failed.set()
            return
        log.info("%s: start hooks done after %d retries", self.app.name, attempt)
        await self._start_readiness()

    async def _start_readiness(self) -> None:
        self._hooks_done = True
        await self._set_ready(self.app.ready is None)
        if self.app.ready is not None:
            self._readiness_task = asyncio.create_task(self._poll_readiness())

    def _bind(self, server: grpc.aio.Server) -> int:
        s = self.settings
        address = f"{s.host}:{s.port}"
        if s.tls_cert_file and s.tls_key_file:
            client_ca = s.tls_client_ca_file.read_bytes() if s.tls_client_ca_file else None
            creds = grpc.ssl_server_credentials(
                [(s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind {address}")
        return port

    async def _set_ready(self, ready: bool) -> None:
        status = SERVING if ready else NOT_SERVING
        for name in ("", READINESS, *(m.full_name for m in self.app.mounts)):
            await self._health.set(name, status)

    async def _poll_readiness(self) -> None:
        assert self.app.ready is not None
        while not self._stopping:
            try:
                ready = await self.app.ready()
            except Exception:
                log.exception("readiness check failed")
                ready = False
            if not self._stopping:
                await self._set_ready(ready)
            await asyncio.sleep(self.app.readiness_interval_s)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING → drain delay → refuse new RPCs, let in-flight ones finish. Idempotent."""
        if self._server is None or self._stopping:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("%s shutting down (grace %.1fs)", self.app.name, grace)
        await self._health.enter_graceful_shutdown()
        for task in (self._starting_task, self._readiness_task):
            await _cancel(task)
        if self.settings.drain_delay_s > 0:
            await asyncio.sleep(self.settings.drain_delay_s)
        await self._server.stop(grace)
        if self._metrics_endpoint is not None:
            self._metrics_endpoint.stop()
        for hook in reversed(self.app.on_stop):
            try:
                await hook()
            except Exception:
                log.exception("stop hook failed")
        self.app.workers.shutdown()  # after the hooks, which may still use it
        self._stop_tracing()  # last: every RPC's spans have ended, export what is batched
        assert self._stopped is not None
        self._stopped.set()
        log.info("%s stopped", self.app.name)

    def _stop_tracing(self) -> None:
        tracing, self._tracing = self._tracing, None
        if tracing is not None:
            try:
                tracing.shutdown()
            except Exception:
                log.exception("%s: tracing did not shut down cleanly", self.app.name)

    async def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT, then stop gracefully. Raises
        RuntimeError (after stopping) if a start hook retried in the background fails."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        waits = [asyncio.create_task(e.wait()) for e in (stop_requested, self._start_failed)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            await _cancel(task)
        await self.stop()
        if self._start_failed.is_set():
            raise RuntimeError(f"{self.app.name}: a start hook failed (logged above)")


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has unwound."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves
