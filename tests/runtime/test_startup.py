"""Start-up with a dependency down: the server serves (liveness SERVING, readiness
NOT_SERVING) and retries its start hooks in the background with capped exponential backoff,
instead of exiting; any other start error still fails the start."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.common.errors import Unavailable
from services.runtime.server import VeilServer
from tests.support.server import bearer, make_app

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS_NAMES = ("", "readiness", "veil.v1.Diagnostics")


class FlakyDependency:
    """A start hook that finds its dependency down ``failures`` times, then up."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[float] = []

    async def __call__(self) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise Unavailable("database at db:5432 refused the connection")


def _status(health: health_pb2_grpc.HealthStub, name: str) -> int:
    return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_dependency_down_at_start_is_waited_for(serve_app, channel_to, caplog):
    caplog.set_level(logging.INFO, logger="services.runtime.server")
    database, after = FlakyDependency(failures=2), []
    polls: list[float] = []

    async def later_hook() -> None:
        after.append(time.monotonic())

    async def ready() -> bool:
        polls.append(time.monotonic())
        return True

    app = make_app(start_retry_initial_s=0.3, start_retry_max_s=0.4)
    app.on_start += [database, later_hook]
    app.ready, app.readiness_interval_s = ready, 0.05
    running = serve_app(app)  # start() returns: the server is up although the hook failed
    channel = channel_to(running)
    health = health_pb2_grpc.HealthStub(channel)

    assert _status(health, "liveness") == SERVING
    assert [_status(health, name) for name in READINESS_NAMES] == [NOT_SERVING] * 3
    me = diagnostics_pb2_grpc.DiagnosticsStub(channel).WhoAmI(
        diagnostics_pb2.WhoAmIRequest(), metadata=bearer(), timeout=5
    )
    assert me.tenant_id == "acme"  # RPCs reach the servicers meanwhile
    assert not after and not polls and not running.server.start_hooks_done

    _wait_for(lambda: _status(health, "readiness") == SERVING)
    assert [_status(health, name) for name in READINESS_NAMES] == [SERVING] * 3
    assert running.server.start_hooks_done
    assert len(database.attempts) == 3 and len(after) == 1
    waits = [b - a for a, b in zip(database.attempts, database.attempts[1:], strict=False)]
    assert waits[0] >= 0.3 and waits[1] >= 0.4  # 0.3, then doubled but capped at 0.4
    assert min(polls) >= after[0]  # readiness polling only after every start hook
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("db:5432" in r.getMessage() and r.exc_info is None for r in warnings)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_stop_cancels_the_retries(serve_app, caplog):
    database = FlakyDependency(failures=1_000)
    app = make_app(start_retry_initial_s=0.05, start_retry_max_s=0.05)
    app.on_start.append(database)
    running = serve_app(app)
    _wait_for(lambda: len(database.attempts) >= 3)
    started = time.monotonic()
    running.call(running.server.stop(grace=0.5))
    assert time.monotonic() - started < 3
    attempts = len(database.attempts)
    time.sleep(0.2)
    assert len(database.attempts) == attempts
    assert not app.workers.running
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_another_start_error_fails_the_start():
    async def broken() -> None:
        raise RuntimeError("schema migration 42 failed")

    app = make_app()
    app.on_start.append(broken)
    with pytest.raises(RuntimeError, match="migration 42"):
        asyncio.run(VeilServer(app).start())
    assert not app.workers.running


def test_another_error_while_retrying_gives_up_and_fails_liveness(serve_app, channel_to, caplog):
    attempts: list[int] = []

    async def worse_and_worse() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise Unavailable("database is down")
        raise RuntimeError("database has the wrong schema")

    app = make_app(start_retry_initial_s=0.05)
    app.on_start.append(worse_and_worse)
    health = health_pb2_grpc.HealthStub(channel_to(serve_app(app)))
    _wait_for(lambda: _status(health, "liveness") == NOT_SERVING)
    assert _status(health, "readiness") == NOT_SERVING
    assert len(attempts) == 2
    assert any("wrong schema" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)
