"""The unlearning service beside a Triton it cannot publish to: a real tritonserver (the
tiny ``add_sub`` repository) without explicit model control makes the service NOT_SERVING,
with a log line that says how to start Triton; the same server in explicit mode makes it
SERVING. Before, it reported SERVING and every job failed at publish, 80–100 s later. And a
load reaches every Triton replica that ``triton_load_url`` names (a headless Service)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")

from services.common.errors import ModelNotReady
from services.inference.backend import InferenceSettings
from services.inference.remote import TritonBackend
from services.triton.server import TritonServer
from services.unlearning.app import build_app
from tests.support.server import serve
from tests.support.triton import add_sub_repository, free_port_settings
from tests.unlearning.conftest import settings

pytestmark = [pytest.mark.triton, pytest.mark.slow]


async def _can_load(inference: InferenceSettings) -> bool:
    """The backend's own answer; without control, a load names the fix."""
    backend = TritonBackend(inference)
    try:
        can = await backend.can_load()
        if not can:
            with pytest.raises(ModelNotReady, match="--model-control-mode=explicit"):
                await backend.load_model("add_sub", 1)
        return can
    finally:
        await backend.close()


def _status(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="readiness")
        return int(health.Check(request, timeout=10).status)


def _settled(target: str, want: int) -> int:
    """The readiness status once it equals ``want`` (or the last one after 20 s)."""
    deadline = time.monotonic() + 20
    status = _status(target)
    while status != want and time.monotonic() < deadline:
        time.sleep(0.2)
        status = _status(target)
    return status


@pytest.mark.parametrize(
    ("mode", "ready"),
    [("none", False), ("poll", False), ("explicit", True)],
)
def test_readiness_follows_tritons_model_control(
    tmp_path: Path,
    store: Path,
    mode: str,
    ready: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repository = add_sub_repository(tmp_path / "models")
    extra = {"load_models": ["add_sub"]} if mode == "explicit" else {}
    with TritonServer(free_port_settings(repository, model_control_mode=mode, **extra)) as triton:
        inference = InferenceSettings(
            backend="triton", triton_url=triton.grpc_url, store=store, models=[]
        )
        assert asyncio.run(_can_load(inference)) is ready
        app = build_app(
            settings(tmp_path, store, inference=inference, model_repository=tmp_path / "repo")
        )
        with caplog.at_level(logging.WARNING, "services.unlearning.app"), serve(app) as running:
            if ready:
                serving = health_pb2.HealthCheckResponse.SERVING
                assert _settled(running.target, serving) == serving
                return

            def said() -> list[str]:
                return [r.getMessage() for r in caplog.records if "NOT ready" in r.getMessage()]

            deadline = time.monotonic() + 20
            while not said() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # several more readiness probes
            assert _status(running.target) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert len(said()) == 1, said()  # once, not at every probe
            assert "--model-control-mode=explicit" in said()[0] and triton.grpc_url in said()[0]


def test_a_load_reaches_every_replica_the_load_url_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tritonservers (127.0.0.1 and 127.0.0.2, one port: two pods behind a headless
    Service) in explicit mode with nothing loaded: one ``load_model`` makes the model ready
    on both. Through ``triton_url`` alone it would reach one of them."""
    from services.inference import remote
    from services.triton.server import free_port

    grpc_port = free_port()
    servers = []
    for host in ("127.0.0.1", "127.0.0.2"):
        repository = add_sub_repository(tmp_path / host / "models")
        config = free_port_settings(
            repository, host=host, grpc_port=grpc_port, model_control_mode="explicit"
        )
        servers.append(TritonServer(config))
    targets = [f"{host}:{grpc_port}" for host in ("127.0.0.1", "127.0.0.2")]

    async def resolved(url: str) -> list[str]:
        assert url == f"triton-headless:{grpc_port}"
        return targets

    monkeypatch.setattr(remote, "_addresses", resolved)

    async def load_and_look() -> list[bool]:
        settings = InferenceSettings(
            backend="triton",
            triton_url=targets[0],
            triton_load_url=f"triton-headless:{grpc_port}",
            models=[],
        )
        backend = TritonBackend(settings)
        try:
            await backend.load_model("add_sub", 1)
        finally:
            await backend.close()
        ready = []
        for target in targets:
            client = remote.grpcclient.InferenceServerClient(target)
            try:
                ready.append(await client.is_model_ready("add_sub", "1"))
            finally:
                await client.close()
        return ready

    with servers[0], servers[1]:
        assert asyncio.run(load_and_look()) == [True, True]


def test_load_addresses_are_the_names_ipv4_addresses() -> None:
    from services.inference.remote import _addresses

    assert asyncio.run(_addresses("localhost:8001")) == ["127.0.0.1:8001"]
    assert asyncio.run(_addresses("no-such-host.invalid:8001")) == []
