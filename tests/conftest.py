"""Fixture chain shared by every test: settings → app → real server on a free loopback
port (in a background event loop) → a blocking gRPC channel with a bearer token.

Nothing here mocks gRPC: servers bind real sockets and clients speak HTTP/2 to them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
import torch

from services.common.server import ServiceApp, VeilServer
from services.common.settings import ServiceSettings, TokenGrant

TOKEN = "test-token-acme"
OTHER_TOKEN = "test-token-globex"
TOKENS = {
    TOKEN: TokenGrant(tenant="acme", scopes=["*"]),
    OTHER_TOKEN: TokenGrant(tenant="globex", scopes=["accountant:get_budget"]),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)


def test_settings(**overrides: object) -> ServiceSettings:
    """Settings for a server on free loopback ports with the test tokens."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "tokens": TOKENS,
        "shutdown_grace_s": 5.0,
    }
    values.update(overrides)
    return ServiceSettings(**values)  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]


class ServerThread:
    """Runs a :class:`VeilServer` on its own event loop in a daemon thread."""

    def __init__(self, app: ServiceApp) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = VeilServer(app)
        self.port = self.call(self.server.start())

    def call(self, coro, timeout: float = 30):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        self.call(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextmanager
def serve(app: ServiceApp) -> Iterator[ServerThread]:
    """Start ``app`` on a real server; stop it (gracefully) afterwards."""
    running = ServerThread(app)
    try:
        yield running
    finally:
        running.stop(grace=1.0)


@pytest.fixture
def serve_app() -> Iterator[Callable[[ServiceApp], ServerThread]]:
    """Factory: ``serve_app(app)`` starts a real server that is stopped after the test."""
    started: list[ServerThread] = []

    def start(app: ServiceApp) -> ServerThread:
        started.append(ServerThread(app))
        return started[-1]

    yield start
    for running in started:
        running.stop(grace=1.0)


def bearer(token: str = TOKEN) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def channel_to() -> Iterator[Callable[[ServerThread], grpc.Channel]]:
    """Factory: a blocking channel to a running server, closed after the test."""
    channels: list[grpc.Channel] = []

    def open_channel(running: ServerThread) -> grpc.Channel:
        channels.append(grpc.insecure_channel(running.target))
        return channels[-1]

    yield open_channel
    for ch in channels:
        ch.close()
