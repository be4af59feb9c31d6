"""Fixture chain for the accountant: backend URL → Ledger factory (with a fake clock).
The PostgreSQL fixture (``pg_url``) is the root conftest's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.accountant.ledger import Ledger
from services.accountant.policy import Policy
from tests.support.accountant import FakeClock


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
