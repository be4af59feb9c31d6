"""Real servers for the sanitizer's tests: an accountant on a SQLite file, a sanitizer (the
in-process inference backend, the committed weights) charging it over gRPC with a delegate
token, and the tokens callers use."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc, sanitizer_pb2_grpc
from services.runtime.settings import TokenGrant
from tests.support.server import ServerThread, bearer, serve

TENANT_TOKEN = "sanitizer-test-acme"
SUBJECT_TOKEN = "sanitizer-test-alice"
OTHER_SUBJECT_TOKEN = "sanitizer-test-bob"
OTHER_TENANT_TOKEN = "sanitizer-test-globex"
SERVICE_TOKEN = "sanitizer-test-service"
SUBJECT_SCOPES = ["sanitizer:create_preview", "sanitizer:release", "sanitizer:cancel_preview"]
TOKENS = {
    TENANT_TOKEN: TokenGrant(tenant="acme", scopes=["*"]),
    SUBJECT_TOKEN: TokenGrant(tenant="acme", scopes=SUBJECT_SCOPES, subject="alice"),
    OTHER_SUBJECT_TOKEN: TokenGrant(tenant="acme", scopes=SUBJECT_SCOPES, subject="bob"),
    OTHER_TENANT_TOKEN: TokenGrant(tenant="globex", scopes=["*"]),
    SERVICE_TOKEN: TokenGrant(tenant="veil", scopes=["accountant:*"], delegate=True),
}
DATASET = "faces"
T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]


@pytest.fixture
def run() -> Iterator[Run[Any]]:
    """Runs a coroutine on this test's one event loop (a gRPC client's channel is bound to
    the loop it was made in)."""
    loop = asyncio.new_event_loop()

    def call(awaitable: Awaitable[Any]) -> Any:
        async def main() -> Any:
            return await awaitable

        return loop.run_until_complete(main())

    yield call
    loop.close()


def accountant_app(database_url: str, **overrides: Any):  # type: ignore[no-untyped-def]
    from services.accountant.app import Settings, build_app

    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "tokens": TOKENS,
        "database_url": database_url,
        "shutdown_grace_s": 2.0,
    }
    return build_app(Settings(**{**values, **overrides}))


def sanitizer_settings(tmp: Path, accountant: str, **overrides: Any):  # type: ignore[no-untyped-def]
    from services.sanitizer.app import Settings

    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "tokens": TOKENS,
        "database_url": f"sqlite:///{tmp / 'sanitizer.sqlite'}",
        "accountant_url": accountant,
        "accountant_token": SERVICE_TOKEN,
        "accountant_timeout_s": 3.0,
        "default_ddim_steps": 2,
        "shutdown_grace_s": 2.0,
        "readiness_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def accountant(tmp_path: Path) -> Iterator[ServerThread]:
    with serve(accountant_app(f"sqlite:///{tmp_path / 'ledger.sqlite'}")) as running:
        budget(running.target, epsilon=10.0)
        yield running


def budget(target: str, epsilon: float, subject_epsilon: float | None = None) -> None:
    """Give the test dataset a budget with a per-subject default."""
    with grpc.insecure_channel(target) as channel:
        stub = accountant_pb2_grpc.AccountantStub(channel)
        for scope in (apb.BudgetScope(tenant_id="acme"),):
            stub.PutBudget(
                apb.PutBudgetRequest(budget=apb.Budget(scope=scope, epsilon=100.0, delta=1e-5)),
                metadata=bearer(TENANT_TOKEN),
            )
        stub.PutBudget(
            apb.PutBudgetRequest(
                budget=apb.Budget(
                    scope=apb.BudgetScope(tenant_id="acme", dataset_id=DATASET),
                    epsilon=100.0,
                    delta=1e-5,
                    subject_default=apb.SubjectDefault(
                        epsilon=subject_epsilon or epsilon, delta=1e-5
                    ),
                )
            ),
            metadata=bearer(TENANT_TOKEN),
        )


@pytest.fixture
def make_sanitizer(
    tmp_path: Path, accountant: ServerThread
) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def factory(**overrides: Any) -> ServerThread:
        from services.sanitizer.app import build_app

        ledger = overrides.pop("ledger", None)
        settings = sanitizer_settings(tmp_path, accountant.target, **overrides)
        running = ServerThread(build_app(settings, ledger=ledger))
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop(grace=1.0)


@pytest.fixture
def sanitizer(make_sanitizer: Callable[..., ServerThread]) -> ServerThread:
    return make_sanitizer()


@pytest.fixture(scope="module")
def face_png() -> bytes:
    """A held-out synthetic face (seed 7) at 48 px: inside the default model's domain."""
    from services.common.imaging import encode_image
    from services.kernels.data.synthfaces import SynthFaces

    return encode_image(SynthFaces(n=4, seed=7, resolution=48).pixels(0))


@pytest.fixture
def stub(sanitizer: ServerThread) -> Iterator[sanitizer_pb2_grpc.SanitizerStub]:
    with grpc.insecure_channel(sanitizer.target) as channel:
        yield sanitizer_pb2_grpc.SanitizerStub(channel)


@pytest.fixture
def ledger(accountant: ServerThread) -> Iterator[accountant_pb2_grpc.AccountantStub]:
    with grpc.insecure_channel(accountant.target) as channel:
        yield accountant_pb2_grpc.AccountantStub(channel)
