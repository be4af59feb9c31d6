"""The shared runtime on a real server: health, reflection, metrics, auth, errors,
limits and graceful shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from services._proto.veil.v1 import common_pb2, diagnostics_pb2, diagnostics_pb2_grpc
from services.common.imaging import ImageLimits, encode_image
from services.runtime.diagnostics import DiagnosticsServicer
from tests.support.server import OTHER_TOKEN, TOKEN, bearer, make_app

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def png(side: int = 32) -> bytes:
    return encode_image(np.zeros((side, side, 3), np.uint8), "PNG")


@pytest.fixture
def server(serve_app):
    return serve_app(make_app(image_limits=ImageLimits(max_bytes=50_000)))


@pytest.fixture
def diag(server, channel_to):
    return diagnostics_pb2_grpc.DiagnosticsStub(channel_to(server))


def test_health_liveness_and_readiness(server, channel_to):
    health = health_pb2_grpc.HealthStub(channel_to(server))
    for name in ("", "liveness", "readiness", "veil.v1.Diagnostics"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_services(server, channel_to):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(server))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(stub.ServerReflectionInfo(iter([request]))))
    names = {s.name for s in response.list_services_response.service}
    assert {"veil.v1.Diagnostics", "grpc.health.v1.Health"} <= names


def test_whoami_with_token(diag):
    me = diag.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer())
    assert (me.tenant_id, list(me.scopes), me.service) == ("acme", ["*"], "test")
    assert diag.WhoAmI(diagnostics_pb2.WhoAmIRequest(tenant_id="acme"), metadata=bearer()).tenant_id


@pytest.mark.parametrize("metadata", [(), bearer("wrong"), (("authorization", "Basic x"),)])
def test_missing_or_wrong_token_is_unauthenticated(diag, metadata):
    with pytest.raises(grpc.RpcError) as err:
        diag.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(err.value).reason == "UNAUTHENTICATED"


def test_other_tenant_is_permission_denied(diag):
    with pytest.raises(grpc.RpcError) as err:
        diag.WhoAmI(diagnostics_pb2.WhoAmIRequest(tenant_id="acme"), metadata=bearer(OTHER_TOKEN))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_missing_scope_is_permission_denied(serve_app, channel_to):
    app = make_app()
    app.method_scopes["/veil.v1.Diagnostics/WhoAmI"] = "diagnostics:admin"
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(serve_app(app)))
    with pytest.raises(grpc.RpcError) as err:
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(OTHER_TOKEN))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "diagnostics:admin" in err.value.details()
    assert stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(TOKEN)).tenant_id == "acme"


def test_inspect_image(diag):
    info = diag.InspectImage(
        diagnostics_pb2.InspectImageRequest(image=common_pb2.Image(data=png())), metadata=bearer()
    )
    assert (info.format, info.width, info.height, info.channels) == ("PNG", 32, 32, 3)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"garbage", "INVALID_IMAGE"), (np.random.default_rng(0).bytes(60_000), "INVALID_IMAGE")],
    ids=["undecodable", "oversized"],
)
def test_bad_images_are_invalid_argument(diag, data, reason):
    with pytest.raises(grpc.RpcError) as err:
        diag.InspectImage(
            diagnostics_pb2.InspectImageRequest(image=common_pb2.Image(data=data)),
            metadata=bearer(),
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == reason


def test_message_over_the_limit_is_refused_by_grpc(serve_app, channel_to):
    stub = diagnostics_pb2_grpc.DiagnosticsStub(
        channel_to(serve_app(make_app(max_message_bytes=10_000)))
    )
    request = diagnostics_pb2.InspectImageRequest(image=common_pb2.Image(data=b"x" * 20_000))
    with pytest.raises(grpc.RpcError) as err:
        stub.InspectImage(request, metadata=bearer())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class Exploding(DiagnosticsServicer):
    async def WhoAmI(self, request, context):
        raise RuntimeError("db password is hunter2")


@pytest.mark.internal_expected
def test_unknown_error_is_internal_with_generic_message(serve_app, channel_to, caplog):
    app = make_app(Exploding("test", ImageLimits()))
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(serve_app(app)))
    with pytest.raises(grpc.RpcError) as err:
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer())
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.value.details()
    reference = error_info(err.value).metadata["reference"]
    assert reference in err.value.details()
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)


def test_metrics_endpoint_counts_rpcs_by_code(server, diag):
    diag.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer())
    with pytest.raises(grpc.RpcError):
        diag.WhoAmI(diagnostics_pb2.WhoAmIRequest())
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    ok = (
        'grpc_server_handled_total{grpc_code="OK",grpc_method="WhoAmI",'
        'grpc_service="veil.v1.Diagnostics",grpc_type="unary"} 1.0'
    )
    denied = 'grpc_code="UNAUTHENTICATED",grpc_method="WhoAmI"'
    assert ok in text
    assert denied in text
    assert "grpc_server_handling_seconds_bucket" in text
    assert 'veil_build_info{service="test"' in text


class Slow(DiagnosticsServicer):
    delay = 1.0

    async def WhoAmI(self, request, context):
        await asyncio.sleep(self.delay)
        return await super().WhoAmI(request, context)


def _call_in_thread(stub, results):
    def run():
        try:
            results.append(
                stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer()).tenant_id
            )
        except grpc.RpcError as err:
            results.append(err.code())

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_graceful_stop_completes_in_flight_rpcs(serve_app, channel_to):
    running = serve_app(make_app(Slow("test", ImageLimits())))
    channel = channel_to(running)
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    results: list = []
    thread = _call_in_thread(stub, results)
    time.sleep(0.3)  # the RPC is in flight
    started = time.monotonic()
    running.call(running.server.stop(grace=5.0))
    thread.join(timeout=10)
    assert results == ["acme"]
    assert time.monotonic() - started < 5.0
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_stop_gives_up_after_grace(serve_app, channel_to):
    slow = Slow("test", ImageLimits())
    slow.delay = 30
    running = serve_app(make_app(slow))
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(running))
    results: list = []
    thread = _call_in_thread(stub, results)
    time.sleep(0.3)
    started = time.monotonic()
    running.call(running.server.stop(grace=0.5))
    thread.join(timeout=10)
    assert time.monotonic() - started < 3.0
    assert results and results[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_readiness_follows_the_apps_check(serve_app, channel_to):
    state = {"ready": False}

    async def ready() -> bool:
        return state["ready"]

    app = make_app()
    app.ready, app.readiness_interval_s = ready, 0.05
    running = serve_app(app)
    health = health_pb2_grpc.HealthStub(channel_to(running))

    def status(name: str):
        return health.Check(health_pb2.HealthCheckRequest(service=name)).status

    assert status("readiness") == NOT_SERVING and status("liveness") == SERVING
    state["ready"] = True
    deadline = time.monotonic() + 5
    while status("readiness") != SERVING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status("") == SERVING


def test_deadline_is_honoured_and_the_handler_cancelled(serve_app, channel_to):
    slow = Slow("test", ImageLimits())
    slow.delay = 5
    running = serve_app(make_app(slow))
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(running))
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server side records the cancelled handler
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        if 'grpc_code="DEADLINE_EXCEEDED",grpc_method="WhoAmI"' in text:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the server did not record DEADLINE_EXCEEDED")
