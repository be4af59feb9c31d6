"""Fixtures shared by every test: real servers on free loopback ports (helpers in
``tests/support``), blocking channels to them, the session's one Triton server with the four
Veil models, and the ``gpu`` marker's skip.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch
from sqlalchemy import create_engine, text

from services.runtime.server import ServiceApp
from tests.support.server import ServerThread


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)


class _Internal(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("unhandled error"):
            self.seen.append(record.getMessage())


@pytest.fixture(autouse=True, scope="session")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``veil train`` registers what it writes in the unlearning service's database: the
    tests' trainings register into a SQLite file of their own, never the user's (a test
    that names a registry, or sets the variable itself, still wins)."""
    key = "VEIL_UNLEARNING_DATABASE_URL"
    before = os.environ.get(key)
    if before is None:
        path = tmp_path_factory.mktemp("registry") / "unlearning.sqlite"
        os.environ[key] = f"sqlite:///{path}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


@pytest.fixture(autouse=True)
def no_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """No RPC of any test ends INTERNAL (an unhandled error in an in-process server), unless
    the test is marked ``internal_expected``: every bad input has its own clear status."""
    handler = _Internal()
    log = logging.getLogger("services.runtime.interceptors")
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
    if handler.seen and request.node.get_closest_marker("internal_expected") is None:
        pytest.fail(f"an RPC ended INTERNAL: {handler.seen}")


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


@pytest.fixture(scope="session")
def veil_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The four Veil models of ``triton_models/`` on one real tritonserver for the whole
    session, over a store of random-init tiny models: its start-up (four stubs importing
    torch) is most of the Triton tests' time, so every test that needs it shares it."""
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")
    from services.triton.server import TritonServer
    from tests.support.triton import copy_repository, free_port_settings, tiny_store

    store = tiny_store(tmp_path_factory.mktemp("store"))
    repository = copy_repository(tmp_path_factory.mktemp("repo"), store)
    server = TritonServer(free_port_settings(repository))
    server.store_root = store  # type: ignore[attr-defined]
    with server:
        yield server


@pytest.fixture
def veil_store(veil_triton: object) -> Path:
    """The model store behind :func:`veil_triton`."""
    return Path(veil_triton.store_root)  # type: ignore[attr-defined]


# -- PostgreSQL ---------------------------------------------------------------------------
# Tests that need it read ``VEIL_TEST_POSTGRES_DSN`` (e.g.
# ``postgresql+psycopg://veil:veil@127.0.0.1:5432/veil_test``); without it they skip, except
# under ``CI=true`` where a missing DSN fails. Each test gets a fresh schema, dropped after.


def postgres_dsn() -> str:
    dsn = os.environ.get("VEIL_TEST_POSTGRES_DSN", "")
    if not dsn:
        if os.environ.get("CI") == "true":
            pytest.fail("VEIL_TEST_POSTGRES_DSN is unset but CI=true: PostgreSQL tests must run")
        pytest.skip("VEIL_TEST_POSTGRES_DSN is unset: no PostgreSQL to test against")
    return dsn


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema (dropped afterwards)."""
    dsn = postgres_dsn()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(dsn)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in dsn else "?"
    try:
        yield f"{dsn}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
