"""``RegistryModels`` against a registry on loopback that counts its calls: a burst of
misses is one call, answers are reused for the cache's time, NOT_FOUND is one answer for
every unknown number, and a registry that fails is UNAVAILABLE (never another model)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services._proto.veil.v1 import common_pb2, registry_pb2_grpc, unlearning_pb2
from services._proto.veil.v1 import registry_pb2 as rpb
from services.common.errors import NotFound, Unavailable
from services.protection.registry import RegistryModels
from services.runtime.registry import RegistryClient


class CountingRegistry(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def ResolveModel(self, request: rpb.ResolveModelRequest, context) -> rpb.ResolvedModel:  # type: ignore[no-untyped-def]
        self.calls += 1
        await asyncio.sleep(0.2)
        if self.fail:
            await context.abort(grpc.StatusCode.INTERNAL, "boom")
        if request.ref.version not in (0, 2):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no version {request.ref.version}")
        ref = common_pb2.ModelRef(name=request.ref.name, version=2)
        return rpb.ResolvedModel(
            version=unlearning_pb2.ModelVersion(ref=ref), serving_version=7, resolution=16
        )


async def _scenario() -> None:
    registry = CountingRegistry()
    server = grpc.aio.server()
    registry_pb2_grpc.add_ModelRegistryServicer_to_server(registry, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    models = RegistryModels(RegistryClient(f"127.0.0.1:{port}", "", timeout_s=5.0, ttl_s=0.5))
    try:
        burst = await asyncio.gather(*(models.resolve("acme", "m", 0) for _ in range(10)))
        assert {(r.number, r.serving) for r in burst} == {(2, 7)} and registry.calls == 1
        await models.resolve("acme", "m", 0)
        assert registry.calls == 1  # cached
        await models.resolve("globex", "m", 0)
        assert registry.calls == 2  # per tenant
        with pytest.raises(NotFound) as first:
            await models.resolve("acme", "m", 5)
        with pytest.raises(NotFound) as second:
            await models.resolve("acme", "m", 9)
        assert first.value.message.replace("5", "N") == second.value.message.replace("9", "N")
        await asyncio.sleep(0.6)  # the answers lapse
        registry.fail = True
        with pytest.raises(Unavailable):
            await models.resolve("acme", "m", 0)
    finally:
        await models.close()
        await server.stop(None)


def test_the_client_asks_once_per_burst_and_fails_closed() -> None:
    asyncio.run(_scenario())
