"""Reserve is idempotent by the charge's key (on SQLite and PostgreSQL): one reservation per
(tenant, key), replayed while live or committed, re-armed once expired or released."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from services.accountant import reserving
from services.accountant.events import Budget, Charge, Gaussian, Reservation, Scope
from services.accountant.ledger import Ledger
from services.accountant.schema import reservations
from services.common.db import make_engine
from services.common.errors import AlreadyExists, BudgetExhausted, FailedPrecondition
from tests.support.accountant import FakeClock
from tests.support.overlap import together

T, D, S = "acme", "faces", "alice"
TENANT, DATASET, SUBJECT = Scope(T), Scope(T, D), Scope(T, D, S)
BIG = 1.2
"""σ of a charge that takes most of the subject's ε=5 (RDP): a second one does not fit."""


@pytest.fixture
def ledger(make_ledger: Callable[..., Ledger]) -> Ledger:
    led = make_ledger(enforce_with="rdp")
    led.budgets.put(T, Budget(TENANT, 50.0, 1e-5))
    led.budgets.put(T, Budget(DATASET, 20.0, 1e-5))
    led.budgets.put(T, Budget(SUBJECT, 5.0, 1e-5))
    return led


@pytest.fixture
def stored_rows(db_url: str) -> Iterator[Callable[[], list[Any]]]:
    """Every reservation row, read on an engine of its own."""
    engine = make_engine(db_url)

    def read() -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(select(reservations)))

    yield read
    engine.dispose()


def charge(key: str, sigma: float = BIG, **kw: Any) -> Charge:
    return Charge(Gaussian(sigma), T, D, key, subject_ids=(S,), **kw)


def reserved(led: Ledger) -> float:
    return led.budgets.remaining(T, SUBJECT).epsilon_reserved


def events(led: Ledger) -> int:
    return len(led.history(T, TENANT).events)


def test_the_id_is_derived_from_the_tenant_and_the_key() -> None:
    rid = reserving.reservation_id(T, "k")
    assert rid == reserving.reservation_id(T, "k") and len(rid) == 32
    assert rid not in {reserving.reservation_id("other", "k"), reserving.reservation_id(T, "k2")}
    assert reserving.reservation_id("ab", "c") != reserving.reservation_id("a", "bc")


def test_same_key_twice_is_one_reservation_held_once(
    ledger: Ledger, clock: FakeClock, stored_rows: Callable[[], list[Any]]
) -> None:
    first = ledger.reservations.reserve(T, charge("k", request_id="a"), lease_s=10)
    held = reserved(ledger)
    clock.advance(3)
    again = ledger.reservations.reserve(T, charge("k", request_id="b"), lease_s=60)  # a retry
    assert not first.replayed and again.replayed and again.spend_id == ""
    assert again.reservation_id == first.reservation_id
    assert again.expires_at == pytest.approx(first.expires_at - 10 + 3 + 60)  # extended
    shorter = ledger.reservations.reserve(T, charge("k", request_id="c"), lease_s=1)
    assert shorter.expires_at == again.expires_at  # never shortened
    assert again.charge.request_id == "a"
    assert again.statuses == first.statuses  # as it will be after the commit, held once
    assert reserved(ledger) == pytest.approx(held) and held > 0
    assert ledger.reservations.outstanding() == 1 and len(stored_rows()) == 1
    ledger.reservations.commit(T, first.reservation_id)
    assert events(ledger) == 1


def test_concurrent_reserves_with_one_key_make_one_reservation(
    ledger: Ledger, stored_rows: Callable[[], list[Any]]
) -> None:
    n = 8
    results = together(
        n, lambda i: ledger.reservations.reserve(T, charge("race", request_id=str(i)), lease_s=60)
    )
    got = [r for r in results if isinstance(r, Reservation)]
    assert len(got) == n, results
    assert len({r.reservation_id for r in got}) == 1
    assert sum(not r.replayed for r in got) == 1
    assert len(stored_rows()) == 1 and ledger.reservations.outstanding() == 1


@pytest.mark.parametrize("stale_reads", [1, 2])
def test_a_reservation_stored_meanwhile_is_replayed(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, stale_reads: int
) -> None:
    """The two ways a concurrent Reserve of the key shows up (PostgreSQL), made to happen on
    every backend: found after the budgets are locked (1 stale read), or only by the primary
    key refusing the insert (2 stale reads: IntegrityError). The transaction runs again."""
    first = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    real, reads = reserving.stored, []

    def stale(conn: Any, rid: str, *, lock: bool) -> Any:
        reads.append(rid)
        return None if len(reads) <= stale_reads else real(conn, rid, lock=lock)

    monkeypatch.setattr(reserving, "stored", stale)
    again = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    assert again.replayed and again.reservation_id == first.reservation_id
    assert ledger.reservations.outstanding() == 1


def test_a_committed_key_is_replayed_with_its_spend(
    ledger: Ledger, stored_rows: Callable[[], list[Any]]
) -> None:
    held = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    receipt = ledger.reservations.commit(T, held.reservation_id)
    again = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    assert again.replayed and again.reservation_id == held.reservation_id
    assert again.spend_id == receipt.spend_id and again.expires_at == held.expires_at
    # The budgets as they stand after its spend (at their version now).
    assert [replace(s, version=0) for s in again.statuses] == list(receipt.statuses)
    replayed = ledger.reservations.commit(T, again.reservation_id)
    assert replayed.replayed and replayed.spend_id == receipt.spend_id
    assert events(ledger) == 1 and ledger.reservations.outstanding() == 0
    assert reserved(ledger) == 0 and len(stored_rows()) == 1


def test_an_expired_reservation_is_re_armed(
    ledger: Ledger, clock: FakeClock, stored_rows: Callable[[], list[Any]]
) -> None:
    held = ledger.reservations.reserve(T, charge("k"), lease_s=5)
    clock.advance(6)  # the lease lapses
    assert ledger.reservations.outstanding() == 0
    again = ledger.reservations.reserve(T, charge("k"), lease_s=5)
    assert not again.replayed and again.reservation_id == held.reservation_id
    assert again.expires_at == pytest.approx(clock.now + 5) and len(again.statuses) == 3
    assert ledger.reservations.outstanding() == 1 and reserved(ledger) > 0
    receipt = ledger.reservations.commit(T, again.reservation_id)
    assert not receipt.replayed and events(ledger) == 1 and len(stored_rows()) == 1


def test_an_expired_reservation_whose_commit_failed_is_re_armed(
    ledger: Ledger, clock: FakeClock
) -> None:
    held = ledger.reservations.reserve(T, charge("k"), lease_s=5)
    clock.advance(6)
    with pytest.raises(FailedPrecondition):
        ledger.reservations.commit(T, held.reservation_id)  # stores it as expired
    again = ledger.reservations.reserve(T, charge("k"), lease_s=5)
    assert not again.replayed and again.reservation_id == held.reservation_id
    ledger.reservations.commit(T, again.reservation_id)
    assert events(ledger) == 1


def test_a_released_reservation_is_re_armed(ledger: Ledger) -> None:
    held = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    assert ledger.reservations.release(T, held.reservation_id)
    assert reserved(ledger) == 0
    again = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    assert not again.replayed and again.reservation_id == held.reservation_id
    assert reserved(ledger) > 0 and ledger.reservations.outstanding() == 1
    ledger.reservations.commit(T, again.reservation_id)
    assert events(ledger) == 1


def test_the_key_with_another_charge_is_already_exists(ledger: Ledger) -> None:
    held = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    with pytest.raises(AlreadyExists, match="different charge"):
        ledger.reservations.reserve(T, charge("k", sigma=2.0), lease_s=10)  # while live
    ledger.reservations.commit(T, held.reservation_id)
    with pytest.raises(AlreadyExists, match="different charge"):
        ledger.reservations.reserve(T, charge("k", sigma=2.0), lease_s=10)  # once committed
    assert events(ledger) == 1


def test_a_key_a_direct_spend_used_is_already_exists(ledger: Ledger, clock: FakeClock) -> None:
    ledger.spend(T, charge("spent"))
    with pytest.raises(AlreadyExists, match="already committed"):
        ledger.reservations.reserve(T, charge("spent"), lease_s=10)
    held = ledger.reservations.reserve(T, charge("k", sigma=20.0), lease_s=5)
    clock.advance(6)
    ledger.spend(T, charge("k", sigma=20.0))  # the key, spent directly once the lease lapsed
    with pytest.raises(AlreadyExists, match="already committed"):
        ledger.reservations.reserve(T, charge("k", sigma=20.0), lease_s=5)  # not re-armed
    assert ledger.reservations.outstanding() == 0
    with pytest.raises(FailedPrecondition):
        ledger.reservations.commit(T, held.reservation_id)
    assert events(ledger) == 2


def test_a_re_arm_over_the_budget_is_refused_and_holds_nothing(ledger: Ledger) -> None:
    held = ledger.reservations.reserve(T, charge("k"), lease_s=10)
    ledger.reservations.release(T, held.reservation_id)
    ledger.spend(T, charge("other"))  # the room the released reservation had held
    with pytest.raises(BudgetExhausted):
        ledger.reservations.reserve(T, charge("k"), lease_s=10)
    assert ledger.reservations.outstanding() == 0 and reserved(ledger) == 0
    with pytest.raises(FailedPrecondition, match="released"):
        ledger.reservations.commit(T, held.reservation_id)  # still released
