"""The worker pool: bounded threads and queue, context variables carried over, and on a
real server image decoding that no longer stalls the event loop (health stays fast)."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services._proto.veil.v1 import common_pb2, diagnostics_pb2, diagnostics_pb2_grpc
from services.common.errors import ResourceExhausted, Unavailable
from services.common.imaging import ImageLimits, encode_image
from services.runtime.auth import Principal, current_principal, reset_principal, set_principal
from services.runtime.diagnostics import DiagnosticsServicer
from services.runtime.workers import WorkerPool, run_in_worker
from tests.support.server import bearer, make_app


async def _wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_pool_refuses_beyond_its_queue_and_recovers():
    async def scenario() -> None:
        pool = WorkerPool(max_workers=1, max_queued=1)
        pool.start()
        release = threading.Event()
        started = threading.Event()

        def block() -> str:
            started.set()
            release.wait(10)
            return "done"

        running = asyncio.create_task(pool.run(block))
        await _wait_until(started.is_set)
        waiting = asyncio.create_task(pool.run(block))
        await asyncio.sleep(0.05)
        with pytest.raises(ResourceExhausted, match="worker_queue") as refused:
            await pool.run(block)
        assert refused.value.details == {"limit": "worker_queue", "worker_queue": "1"}
        release.set()
        assert await asyncio.gather(running, waiting) == ["done", "done"]
        assert await pool.run(sum, [1, 2]) == 3  # the slots came back
        pool.shutdown()
        with pytest.raises(Unavailable):
            await pool.run(sum, [1])

    asyncio.run(scenario())


def test_a_cancelled_waiting_call_gives_its_slot_back():
    async def scenario() -> None:
        pool = WorkerPool(max_workers=1, max_queued=1)
        pool.start()
        release = threading.Event()
        running = asyncio.create_task(pool.run(release.wait, 10))
        waiting = asyncio.create_task(pool.run(sum, [1]))
        await asyncio.sleep(0.05)
        waiting.cancel()  # say, its RPC's deadline passed
        await asyncio.sleep(0.05)
        again = asyncio.create_task(pool.run(sum, [2]))  # would be refused if the slot leaked
        release.set()
        assert await running is True
        assert await again == 2
        pool.shutdown()

    asyncio.run(scenario())


def test_work_sees_the_callers_context_variables():
    async def scenario() -> str:
        pool = WorkerPool(max_workers=2, max_queued=0)
        pool.start()
        token = set_principal(Principal("acme", frozenset({"*"})))
        try:
            return await pool.run(lambda: current_principal().tenant)
        finally:
            reset_principal(token)
            pool.shutdown()

    assert asyncio.run(scenario()) == "acme"


def test_run_in_worker_outside_an_rpc_is_unavailable():
    with pytest.raises(Unavailable, match="outside a Veil RPC"):
        asyncio.run(run_in_worker(sum, [1]))


class Blocking(DiagnosticsServicer):
    """WhoAmI holds a worker thread until released."""

    def __init__(self) -> None:
        super().__init__("test", ImageLimits())
        self.entered = threading.Event()
        self.release = threading.Event()

    def _hold(self) -> None:
        self.entered.set()
        self.release.wait(10)

    async def WhoAmI(self, request, context):
        await run_in_worker(self._hold)
        return await super().WhoAmI(request, context)


def test_full_pool_is_resource_exhausted_on_the_wire(serve_app, channel_to):
    servicer = Blocking()
    running = serve_app(make_app(servicer, worker_threads=1, worker_queue=0))
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(running))
    first = stub.WhoAmI.future(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=10)
    assert servicer.entered.wait(5)
    with pytest.raises(grpc.RpcError) as err:
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=5)
    servicer.release.set()
    assert first.result().tenant_id == "acme"
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(err.value)
    assert status is not None and status.details[0].Unpack(info)
    assert (info.reason, info.metadata["limit"]) == ("RESOURCE_EXHAUSTED", "worker_queue")


SIDE = 3000


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A 3000×3000 PNG that compresses to ~30 kB but takes ~0.2 s of CPU to decode."""
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    pixels = np.stack([(x + y) % 256, (2 * x) % 256, (3 * y) % 256], axis=-1)
    return encode_image(pixels.astype(np.uint8), "PNG")


def test_health_stays_fast_while_images_decode(serve_app, channel_to, big_png):
    """Eight clients decode large PNGs back to back while a probe checks health: decoding
    on the event loop made each check wait for a decode (p50 ≈ 0.3–0.6 s)."""
    channel = channel_to(serve_app(make_app()))
    diag = diagnostics_pb2_grpc.DiagnosticsStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    request = diagnostics_pb2.InspectImageRequest(image=common_pb2.Image(data=big_png))
    stop, widths = threading.Event(), []

    def decode_until_stopped() -> None:
        while not stop.is_set():
            widths.append(diag.InspectImage(request, metadata=bearer(), timeout=30).width)

    clients = [threading.Thread(target=decode_until_stopped) for _ in range(8)]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)  # the decodes are under way
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=10)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)
    assert widths and set(widths) == {SIDE}
    assert statistics.median(latencies) < 0.1, f"health p50 {statistics.median(latencies):.3f}s"
