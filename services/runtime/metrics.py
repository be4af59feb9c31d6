"""RPC metrics and the ``/metrics`` endpoint.

Every server owns a :class:`prometheus_client.CollectorRegistry` (never the global one),
so several servers in one test process do not collide and a registry is reset by making
a new one. RPC metrics follow the go-grpc-prometheus names that existing dashboards know;
service metrics are named ``veil_<service>_<noun>_<unit>`` in each service's own module.
Label values are bounded: method names come from the registered services only.

Every method the server will serve has its series at 0 before the first call
(:meth:`RpcMetrics.initialise`, as go-grpc-prometheus's ``InitializeMetrics``): a ``rate()``
or a ratio over them is defined from the first scrape, not from a method's first call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Seconds; spans a ledger check (~ms) to a diffusion decode on CPU (~s)."""
CODES = tuple(code.name for code in grpc.StatusCode)
"""Every ``grpc_code`` label value: the names the interceptors record (``OK``, ``INTERNAL``…)."""
GRPC_TYPES = {
    (False, False): "unary",
    (False, True): "server_stream",
    (True, False): "client_stream",
    (True, True): "bidi_stream",
}
"""(client streaming, server streaming) → ``grpc_type``, as the interceptors label it."""


class RpcMetrics:
    """The go-grpc-prometheus trio: ``grpc_server_{started,handled}_total`` and latency."""

    def __init__(self, registry: CollectorRegistry, service: str, version: str) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self._labels: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        """Label sets are bounded (registered methods × RPC shapes × status codes)."""
        self.started_total = Counter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry=registry
        )
        self.handled_total = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the RPC's start to its status, in seconds.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("grpc_server_in_flight", "RPCs being served now.", registry=registry)
        info = Gauge(
            "veil_build_info",
            "Constant 1, labelled with the build.",
            ("service", "version"),
            registry=registry,
        )
        info.labels(service, version).set(1)

    def initialise(self, methods: Iterable[tuple[str, str]]) -> None:
        """Put every series of each ``(full method, grpc_type)`` at 0: started, handled with
        each status code, and the latency histogram (go-grpc-prometheus does the same for
        every registered method). Idempotent."""
        for method, grpc_type in methods:
            labels = self._label_set(method, grpc_type)
            self._child(self.started_total, labels)
            self._child(self.handling_seconds, labels)
            for code in CODES:
                self._child(self.handled_total, (*labels, code))

    def started(self, method: str, grpc_type: str) -> tuple[str, str, str]:
        labels = self._label_set(method, grpc_type)
        self._child(self.started_total, labels).inc()
        self.in_flight.inc()
        return labels

    def _label_set(self, method: str, grpc_type: str) -> tuple[str, str, str]:
        labels = self._labels.get((method, grpc_type))
        if labels is None:
            service, _, name = method.lstrip("/").rpartition("/")
            labels = self._labels.setdefault((method, grpc_type), (grpc_type, service, name))
        return labels

    def handled(self, labels: tuple[str, str, str], code: str, seconds: float) -> None:
        self.in_flight.dec()
        self._child(self.handled_total, (*labels, code)).inc()
        self._child(self.handling_seconds, labels).observe(seconds)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (the client library
        validates and locks on every lookup: a share of each RPC's CPU). The child is the
        one the library keeps, so what is exported does not change."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP endpoint."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Start ``/metrics`` for ``registry`` on ``host:port`` (0 = a free port)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server, thread)
