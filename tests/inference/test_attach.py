"""A service's backend on a real server: created on start, closed on stop, and its readiness
in the service's health; with Triton gone, health turns NOT_SERVING and calls fail fast
with UNAVAILABLE (a real tritonserver is stopped under a running service)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.common.errors import Unavailable
from services.common.imaging import ImageLimits
from services.inference.attach import BackendHandle, attach_backend
from services.inference.backend import InferenceSettings
from services.runtime.diagnostics import DiagnosticsServicer
from services.runtime.server import Mount, ServiceApp
from services.serving.contract import CLASSIFIER
from tests.support.server import bearer, make_app
from tests.support.triton import light_triton, tiny_store

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("store"))


class Classifies(DiagnosticsServicer):
    """WhoAmI runs the classifier first: a stand-in for a servicer that calls the backend."""

    def __init__(self, handle: BackendHandle) -> None:
        super().__init__("test", ImageLimits())
        self.handle = handle

    async def WhoAmI(self, request, context):  # type: ignore[no-untyped-def]
        images = np.zeros((1, 3, 16, 16), dtype=np.float32)
        await self.handle.backend.classify(images)
        return await super().WhoAmI(request, context)


def backed_app(settings: InferenceSettings) -> tuple[ServiceApp, BackendHandle]:
    app = make_app()
    app.readiness_interval_s = 0.05
    handle = attach_backend(app, settings)
    add = app.mounts[0].add_to_server
    app.mounts = [Mount("veil.v1.Diagnostics", Classifies(handle), add)]
    return app, handle


def wait_for(health, status: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    current = None
    while time.monotonic() < deadline:
        current = health.Check(health_pb2.HealthCheckRequest(service="readiness")).status
        if current == status:
            break
        time.sleep(0.05)
    return int(current) if current is not None else -1


def test_handle_refuses_before_start() -> None:
    handle = BackendHandle(InferenceSettings())
    with pytest.raises(Unavailable, match="not running"):
        _ = handle.backend


def test_local_backend_makes_the_service_ready_and_serves(store, serve_app, channel_to):
    app, handle = backed_app(InferenceSettings(store=store, models=[CLASSIFIER]))
    running = serve_app(app)
    channel = channel_to(running)
    health = health_pb2_grpc.HealthStub(channel)
    assert wait_for(health, SERVING) == SERVING
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
    assert stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer()).tenant_id == "acme"
    running.call(running.server.stop(grace=1.0))  # the fixture's stop is then a no-op
    with pytest.raises(Unavailable):
        _ = handle.backend


def test_missing_models_keep_the_service_not_ready(tmp_path, serve_app, channel_to):
    app, _ = backed_app(InferenceSettings(store=tmp_path, models=[CLASSIFIER]))
    health = health_pb2_grpc.HealthStub(channel_to(serve_app(app)))
    time.sleep(0.3)
    assert wait_for(health, NOT_SERVING, timeout=1.0) == NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="liveness")).status == SERVING


def test_the_apps_own_check_still_counts(store, serve_app, channel_to):
    app = make_app()
    app.readiness_interval_s = 0.05
    state = {"db": False}

    async def own() -> bool:
        return state["db"]

    app.ready = own
    attach_backend(app, InferenceSettings(store=store, models=[CLASSIFIER]))
    health = health_pb2_grpc.HealthStub(channel_to(serve_app(app)))
    time.sleep(0.3)
    assert wait_for(health, NOT_SERVING, timeout=1.0) == NOT_SERVING
    state["db"] = True
    assert wait_for(health, SERVING) == SERVING


@pytest.mark.triton
@pytest.mark.slow
def test_triton_gone_means_not_serving_and_unavailable(tmp_path, store, serve_app, channel_to):
    triton = light_triton(tmp_path, store).start()
    try:
        settings = InferenceSettings(
            backend="triton", triton_url=triton.grpc_url, models=[CLASSIFIER], timeout_s=3.0
        )
        app, _ = backed_app(settings)
        channel = channel_to(serve_app(app))
        health = health_pb2_grpc.HealthStub(channel)
        stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
        assert wait_for(health, SERVING) == SERVING
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=10)

        triton.stop(grace=5.0)
        assert wait_for(health, NOT_SERVING) == NOT_SERVING
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < settings.timeout_s + 1.0
    finally:
        triton.stop()
