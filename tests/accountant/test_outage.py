"""A database outage, caused for real: the accountant reaches PostgreSQL through a TCP proxy
that the test cuts and restores. Calls answer UNAVAILABLE (retryable), never INTERNAL;
readiness follows the database; a server started while the database is down serves
NOT_SERVING and comes up by itself when the database returns."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import accountant_pb2_grpc
from services.cli.registry import SERVICES
from tests.support.proxy import TcpProxy
from tests.support.server import ServerThread, bearer, test_settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def proxied(pg_url: str):
    """(proxy, the pg_url rewritten to go through it)."""
    url = make_url(pg_url)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)


def build(db_url: str):
    settings = SERVICES["accountant"].settings(
        **test_settings(start_retry_initial_s=0.2, start_retry_max_s=0.5).model_dump(),
        database_url=db_url,
        enforce_with="rdp",
    )
    app = SERVICES["accountant"].build(settings)
    app.readiness_interval_s = 0.2
    return app


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - start


def readiness(channel: grpc.Channel) -> int:
    health = health_pb2_grpc.HealthStub(channel)
    return health.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=5).status


def spend(stub, key: str):
    charge = pb.Charge(
        dataset_id="faces",
        event=pb.PrivacyEvent(gaussian=pb.GaussianMechanism(noise_multiplier=50.0)),
        idempotency_key=key,
    )
    return stub.Spend(pb.SpendRequest(charge=charge), metadata=bearer(), timeout=20)


def put_budgets(stub) -> None:
    for dataset in ("", "faces"):
        budget = pb.Budget(scope=pb.BudgetScope(dataset_id=dataset), epsilon=10, delta=1e-5)
        stub.PutBudget(pb.PutBudgetRequest(budget=budget), metadata=bearer(), timeout=20)


def test_an_outage_is_unavailable_and_the_server_recovers(serve_app, channel_to, proxied):
    proxy, url = proxied
    running = serve_app(build(url))
    channel = channel_to(running)
    stub = accountant_pb2_grpc.AccountantStub(channel)
    put_budgets(stub)
    spend(stub, "before")
    proxy.cut()
    with pytest.raises(grpc.RpcError) as err:
        spend(stub, "during")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    wait_for(lambda: readiness(channel) == NOT_SERVING)
    proxy.restore()
    wait_for(lambda: readiness(channel) == SERVING)
    spend(stub, "during")  # the retry of the call that failed goes through, once
    assert spend(stub, "during").replayed


def test_starting_with_the_database_down_serves_not_serving_then_comes_up(
    channel_to, proxied
) -> None:
    proxy, url = proxied
    proxy.cut()
    running = ServerThread(build(url))  # must not raise: no crash loop
    try:
        channel = channel_to(running)
        health = health_pb2_grpc.HealthStub(channel)
        live = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert live.status == SERVING and readiness(channel) == NOT_SERVING
        stub = accountant_pb2_grpc.AccountantStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            put_budgets(stub)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        proxy.restore()
        wait_for(lambda: readiness(channel) == SERVING)
        put_budgets(stub)
        spend(stub, "after-start")
    finally:
        running.stop(grace=1.0)
