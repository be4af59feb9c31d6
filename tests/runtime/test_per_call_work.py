"""Work hoisted out of each RPC: an interceptor wraps a method's handler once, and the
metrics look their labelled children up once, while what is served and exported stays the
same (tests/runtime/test_server.py checks both end to end over gRPC)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.runtime import interceptors
from services.runtime.interceptors import MetricsInterceptor, RequestInterceptor
from services.runtime.metrics import RpcMetrics
from services.runtime.workers import WorkerPool
from tests.support.server import bearer, make_app


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


async def _echo(request: Any, context: Any) -> Any:
    return request


def _handler() -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(_echo)


def test_a_methods_handler_is_wrapped_once_and_again_when_it_changes() -> None:
    icpt = RequestInterceptor(WorkerPool(1, 1, "t"))
    first, second = _handler(), _handler()
    current = {"/a.A/M": first, "/a.A/N": first}

    async def continuation(details: _Details) -> Any:
        return current.get(details.method)

    async def wrap(method: str) -> Any:
        return await icpt.intercept_service(continuation, _Details(method))

    async def main() -> None:
        a1, a2, n = await wrap("/a.A/M"), await wrap("/a.A/M"), await wrap("/a.A/N")
        assert a1 is a2 and a1 is not first and n is not a1  # one wrapper per method
        assert await wrap("/no.Such/Method") is None  # unknown methods: nothing kept
        current["/a.A/M"] = second  # another handler: wrapped anew, not the old wrapper
        b = await wrap("/a.A/M")
        assert b is not a1 and await wrap("/a.A/M") is b
        assert set(icpt.__dict__["_wrapped"]) == {"/a.A/M", "/a.A/N"}
        assert await b.unary_unary("ping", _Context()) == "ping"  # it still serves

    asyncio.run(main())


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def send_initial_metadata(self, metadata: object) -> None:
        pass


def test_metrics_children_are_the_registrys_own() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry, "svc", "0")
    for code, seconds in (("OK", 0.002), ("OK", 0.2), ("NOT_FOUND", 0.02)):
        labels = metrics.started("/veil.v1.Thing/Do", "unary")
        metrics.handled(labels, code, seconds)
    assert labels == ("unary", "veil.v1.Thing", "Do")
    lbl = {"grpc_type": "unary", "grpc_service": "veil.v1.Thing", "grpc_method": "Do"}
    assert registry.get_sample_value("grpc_server_started_total", lbl) == 3
    assert registry.get_sample_value("grpc_server_handled_total", {**lbl, "grpc_code": "OK"}) == 2
    not_found = {**lbl, "grpc_code": "NOT_FOUND"}
    assert registry.get_sample_value("grpc_server_handled_total", not_found) == 1
    assert registry.get_sample_value("grpc_server_handling_seconds_count", lbl) == 3
    assert registry.get_sample_value("grpc_server_handling_seconds_sum", lbl) == pytest.approx(
        0.222
    )
    assert registry.get_sample_value("grpc_server_in_flight") == 0
    assert metrics._child(metrics.started_total, labels) is metrics.started_total.labels(*labels)
    assert MetricsInterceptor(metrics).applies_to("/veil.v1.Thing/Do")


def test_a_live_server_wraps_each_method_once(serve_app, channel_to, monkeypatch) -> None:
    """On a real server the handlers the interceptors receive are stable: three calls of
    two methods build each interceptor's wrapper of each method once."""
    made: list[str] = []
    real = interceptors._wrap

    def counting(handler: Any, icpt: Any, method: str) -> Any:
        made.append(method)
        return real(handler, icpt, method)

    monkeypatch.setattr(interceptors, "_wrap", counting)
    diag = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(serve_app(make_app())))
    health = health_pb2_grpc.HealthStub(channel_to(serve_app(make_app())))
    for _ in range(3):
        assert diag.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer()).tenant_id == "acme"
        assert health.Check(health_pb2.HealthCheckRequest()).status == 1
    assert Counter(made)["/veil.v1.Diagnostics/WhoAmI"] == 4  # request, error, metrics, auth
    assert Counter(made)["/grpc.health.v1.Health/Check"] == 3  # public: no auth
