"""The protection server every module here may share: the default settings (in-process
kernels, the committed weights), up to 10 000 FMD iterations a request."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from services._proto.veil.v1 import protection_pb2_grpc
from tests.support.server import ServerThread, serve, test_settings


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    from services.protection.app import Settings, build_app

    base = test_settings().model_dump()
    base.pop("metrics_port")
    settings = Settings(**base, metrics_port=None, max_iterations=10_000)
    with serve(build_app(settings)) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[protection_pb2_grpc.ProtectionStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield protection_pb2_grpc.ProtectionStub(channel)
