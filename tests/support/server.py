"""Real gRPC servers for tests: settings on free loopback ports with test tokens, a server
on its own event loop in a thread, call metadata with a bearer token.

Nothing here mocks gRPC: servers bind real sockets and clients speak HTTP/2 to them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from services.runtime.diagnostics import diagnostics_mount
from services.runtime.server import Mount, ServiceApp, VeilServer
from services.runtime.settings import ServiceSettings, TokenGrant

TOKEN = "test-token-acme"
OTHER_TOKEN = "test-token-globex"
TOKENS = {
    TOKEN: TokenGrant(tenant="acme", scopes=["*"]),
    OTHER_TOKEN: TokenGrant(tenant="globex", scopes=["accountant:get_budget"]),
}


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


def bearer(token: str = TOKEN) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token``."""
    return (("authorization", f"Bearer {token}"),)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_app(servicer=None, **settings) -> ServiceApp:
    """A ServiceApp with diagnostics (or ``servicer`` in its place) on test settings."""
    s = test_settings(**settings)
    mount = diagnostics_mount("test", s.image_limits)
    if servicer is not None:
        mount = Mount("veil.v1.Diagnostics", servicer, mount.add_to_server)
    return ServiceApp(name="test", settings=s, mounts=[mount])
