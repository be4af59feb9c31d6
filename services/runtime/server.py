"""Server bootstrap shared by every service: one ``grpc.aio`` server per process with
health (liveness vs readiness), reflection, the auth/error/metrics interceptors, message
limits, a ``/metrics`` endpoint and graceful shutdown.

A service describes itself as a :class:`ServiceApp` (its servicers, its readiness check,
its start/stop hooks); :class:`VeilServer` runs it. ``start()`` and ``stop()`` are
idempotent. Shutdown: health goes NOT_SERVING, ``drain_delay_s`` passes (load balancers
notice), new RPCs are refused and in-flight ones get ``shutdown_grace_s`` to finish.
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
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services import __version__
from services.runtime.auth import TokenAuthenticator
from services.runtime.interceptors import AuthInterceptor, ErrorInterceptor, MetricsInterceptor
from services.runtime.metrics import MetricsEndpoint, RpcMetrics, serve_metrics
from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

LIVENESS = "liveness"
"""Health service name that is SERVING while the process runs (Kubernetes liveness probe)."""
READINESS = "readiness"
"""Health service name that is SERVING once models and dependencies are ready."""
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
    on_stop: list[Hook] = field(default_factory=list)
    readiness_interval_s: float = 1.0

    def scope_of(self, method: str) -> str | None:
        if method in self.method_scopes:
            return self.method_scopes[method]
        service, _, name = method.lstrip("/").rpartition("/")
        if service == "veil.v1.Diagnostics":
            return None  # any authenticated caller may ask who it is
        short = service.rpartition(".")[2].lower()
        return f"{short}:{re.sub(r'(?<!^)(?=[A-Z])', '_', name).lower()}"


class VeilServer:
    """Runs one :class:`ServiceApp`: ``await start()``, ``await stop()``, or ``await run()``."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        self.settings = app.settings
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._readiness_task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> int:
        """Bind, start serving and return the gRPC port. Idempotent."""
        if self._server is not None:
            return int(self.port or 0)
        s = self.settings
        self._stopped = asyncio.Event()
        for hook in self.app.on_start:
            await hook()
        rpc_metrics = RpcMetrics(self.app.registry, self.app.name, __version__)
        server = grpc.aio.server(
            interceptors=[
                MetricsInterceptor(rpc_metrics),
                ErrorInterceptor(),
                AuthInterceptor(TokenAuthenticator(s.all_tokens()), self.app.scope_of),
            ],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        names = [m.full_name for m in self.app.mounts]
        for mount in self.app.mounts:
            mount.add_to_server(mount.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [
                *names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        self.port = self._bind(server)
        await server.start()
        self._server = server
        await self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self._set_ready(self.app.ready is None)
        if self.app.ready is not None:
            self._readiness_task = asyncio.create_task(self._poll_readiness())
        if s.metrics_port is not None:
            self._metrics_endpoint = serve_metrics(
                self.app.registry, s.metrics_host, s.metrics_port
            )
            self.metrics_port = self._metrics_endpoint.port
        log.info("%s serving on %s (metrics on %s)", self.app.name, self.address, self.metrics_port)
        return self.port

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
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
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
        if self._readiness_task is not None:
            self._readiness_task.cancel()
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
        assert self._stopped is not None
        self._stopped.set()
        log.info("%s stopped", self.app.name)

    async def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT, then stop gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await stop_requested.wait()
        await self.stop()
