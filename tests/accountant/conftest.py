"""Fixture chain for the accountant: backend URL → Ledger factory (with a fake clock).

PostgreSQL tests read ``VEIL_TEST_POSTGRES_DSN`` (e.g.
``postgresql+psycopg://veil:veil@127.0.0.1:5432/veil_test``); without it they skip, except
under ``CI=true`` where a missing DSN fails. Each PG test gets a fresh schema, dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from services.accountant.ledger import Ledger
from services.accountant.policy import Policy
from tests.support.accountant import FakeClock


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_ledger(db_url: str, clock: FakeClock) -> Iterator[Callable[..., Ledger]]:
    """Factory: ``make_ledger(enforce_with=..., tight=..., url=...)`` with schema created."""
    made: list[Ledger] = []

    def factory(
        enforce_with: str = "min", tight: str = "pld", url: str | None = None, **kwargs: Any
    ) -> Ledger:
        ledger = Ledger(
            url or db_url,
            policy=Policy(tight=tight, enforce_with=enforce_with),
            clock=clock,
            **kwargs,
        )
        ledger.create_schema()
        made.append(ledger)
        return ledger

    yield factory
    for ledger in made:
        ledger.close()
