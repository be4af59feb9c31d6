"""The spend path's driver SQL (:mod:`services.accountant.hotsql`) stores and answers exactly
what the SQLAlchemy statements it replaces do: the same sequence of spends, replays,
refusals, reservations and batches, once through each, leaves the same rows in every table
and gives the same receipts; driver errors surface as SQLAlchemy's exceptions."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.accountant import hotsql
from services.accountant.events import (
    Budget,
    Charge,
    Gaussian,
    PureEpsilon,
    Receipt,
    Scope,
    SubjectDefault,
    SubsampledGaussian,
)
from services.accountant.ledger import Ledger
from services.accountant.rows import composition, find_budgets, find_budgets_core
from services.accountant.schema import budgets, event_budgets, events, reservations
from services.common.errors import VeilError
from tests.support.accountant import FakeClock

D = "faces"
ZOE = 'zoë 日本 "q" \\ \' %s ?'


@pytest.fixture
def driver_sql(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    def use(enabled: bool) -> None:
        monkeypatch.setattr(hotsql, "ENABLED", enabled)

    yield use


def _budgets(led: Ledger, t: str) -> None:
    led.budgets.put(t, Budget(Scope(t), 100.0, 1e-5))
    led.budgets.put(t, Budget(Scope(t, D), 50.0, 1e-5, SubjectDefault(3.0, 1e-5)))
    for s in ("alice", "bob", ZOE):
        led.budgets.put(t, Budget(Scope(t, D, s), 1.5, 1e-5))


def _workload(led: Ledger, t: str, clock: FakeClock) -> list[Any]:
    """Spends alone, replays, a reused key, refusals, subjects created from the default, a
    missing dataset, a live reservation counted against later spends, a batch with a
    refused item and its retry."""
    out: list[Any] = []

    def spend(key: str, mech: Any = None, subjects: tuple[str, ...] = ("alice",), **kw: Any):
        charge = Charge(mech or Gaussian(8.0), t, kw.pop("dataset", D), key, subjects, **kw)
        try:
            out.append(led.spend(t, charge))
        except VeilError as exc:
            out.append(exc)

    spend("k0")
    spend("k1", subjects=("alice", "bob"))
    spend("k1", subjects=("alice", "bob"), request_id="retry")  # replayed
    spend("k1", Gaussian(9.0))  # AlreadyExists
    spend("k2", Gaussian(3.0))  # refused: alice's budget is too small
    spend("k3", subjects=("carol", "dave"))  # created from the subject default
    spend("k4", dataset="nope")  # NotFound
    spend("k5", SubsampledGaussian(1.0, 0.01, 100), subjects=("bob", ZOE), count=2)
    clock.advance(1.0)
    # frank's budget is created (3.0) with the lease, which then refuses a spend of 1.5
    reservation = led.reservations.reserve(
        t, Charge(PureEpsilon(2.0), t, D, "r0", ("frank",)), 60.0
    )
    out.append(reservation.statuses)
    spend("k6", PureEpsilon(1.5), subjects=("frank",))
    out.append(led.reservations.commit(t, reservation.reservation_id))
    clock.advance(1.0)
    items = [
        Charge(Gaussian(20.0), t, D, "i", ("alice",)),
        Charge(Gaussian(0.5), t, D, "i", ("bob",)),  # refused
        Charge(Gaussian(20.0), t, D, "i", ("erin",)),  # created
        Charge(Gaussian(20.0), t, "nope", "i"),  # NotFound
    ]
    out.append(led.charge_batch(t, "b0", items))
    out.append(led.charge_batch(t, "b0", items))  # the retry: replays and refusals again
    return out


def _comparable(outcome: Any) -> Any:
    if isinstance(outcome, list):
        return [_comparable(o) for o in outcome]
    if isinstance(outcome, tuple):  # statuses of a reservation
        return [_status(s) for s in outcome]
    if isinstance(outcome, Exception):
        details = {k: v for k, v in outcome.details.items() if k != "tenant_id"}  # type: ignore[attr-defined]
        return type(outcome).__name__, str(outcome), details
    assert isinstance(outcome, Receipt)
    return (
        outcome.replayed,
        outcome.charge.idempotency_key,
        outcome.committed_at,
        [_status(s) for s in outcome.statuses],
    )


def _status(s: Any) -> Any:
    return (s.scope.kind, s.scope.subject_id, s.epsilon_enforced, s.version, s.event_count)


def _tables(led: Ledger, t: str) -> dict[str, Any]:
    """Every row the tenant owns, its ids replaced by what they stand for."""
    with led._tx(readonly=True) as conn:
        b_rows = conn.execute(select(budgets).where(budgets.c.tenant_id == t)).all()
        scope_of = {r.id: (r.dataset_id, r.subject_id) for r in b_rows}
        e_rows = conn.execute(select(events).where(events.c.tenant_id == t)).all()
        key_of = {r.id: r.idempotency_key for r in e_rows}
        links = conn.execute(select(event_budgets)).all()
        res = conn.execute(select(reservations).where(reservations.c.tenant_id == t)).all()

    def charge(text: str) -> Any:
        return {k: v for k, v in json.loads(text).items() if k != "tenant_id"}

    return {
        "budgets": sorted(
            tuple(getattr(r, c.name) for c in budgets.c if c.name not in ("id", "tenant_id"))
            for r in b_rows
        ),
        "events": sorted(
            (r.idempotency_key, json.dumps(charge(r.charge)), r.cost_epsilon, r.committed_at)
            for r in e_rows
        ),
        "links": sorted(
            (key_of[link.event_id], scope_of[link.budget_id])
            for link in links
            if link.event_id in key_of
        ),
        "reservations": sorted(
            (json.dumps(charge(r.charge)), r.status, r.expires_at, r.spend_id is not None)
            for r in res
        ),
    }


def test_driver_sql_stores_and_answers_exactly_as_sqlalchemy(
    make_ledger: Callable[..., Ledger], clock: FakeClock, driver_sql: Callable[[bool], None]
) -> None:
    led = make_ledger()
    outcomes, tables = {}, {}
    for t, enabled in (("core", False), ("hot", True)):
        driver_sql(enabled)
        _budgets(led, t)
        start = clock.now
        outcomes[t] = [_comparable(o) for o in _workload(led, t, clock)]
        tables[t] = _tables(led, t)
        clock.now = start  # the same times for the second run
    assert outcomes["hot"] == outcomes["core"]
    assert tables["hot"] == tables["core"]
    keys = {e[0] for e in tables["hot"]["events"]}
    assert {"k0", "k1", "k3", "k5", "r0", "b0#0", "b0#2"} <= keys and "b0#1" not in keys
    assert ("r0", ("faces", "frank")) in tables["hot"]["links"]
    assert [r[1] for r in tables["hot"]["reservations"]] == ["committed"]
    for t in ("core", "hot"):
        for scope in (Scope(t), Scope(t, D), Scope(t, D, "alice"), Scope(t, D, "carol")):
            assert led.audit.verify(t, scope).ok


@pytest.mark.parametrize("lock", [False, True])
def test_driver_budget_lookup_is_the_core_lookup(
    make_ledger: Callable[..., Ledger], lock: bool
) -> None:
    led = make_ledger()
    _budgets(led, "t")
    led.spend("t", Charge(Gaussian(8.0), "t", D, "k", ("alice",)))
    scopes = [
        Scope("t", D, "bob"),
        Scope("t"),
        Scope("t", D, "zed"),  # missing
        Scope("t", D, "alice"),
        Scope("t", "other"),  # missing
        Scope("t", D, "alice"),  # twice
        Scope("t", D, ZOE),  # quoting of every kind
    ]
    with led._tx() as conn:
        hot_rows, hot_missing = find_budgets(conn, scopes, lock=lock)
        core_rows, core_missing = find_budgets_core(conn, scopes, lock=lock)
    assert hot_missing == core_missing == [Scope("t", D, "zed"), Scope("t", "other")]
    assert [r.id for r in hot_rows] == sorted(r.id for r in hot_rows)
    assert len(hot_rows) == len(core_rows) == 4
    for h, c in zip(hot_rows, core_rows, strict=True):
        assert (h.id, h.budget, h.version, h.event_count) == (
            c.id,
            c.budget,
            c.version,
            c.event_count,
        )
        assert h.comp.atoms == c.comp.atoms
        assert np.array_equal(h.comp.rdp, c.comp.rdp)


def test_a_driver_error_is_sqlalchemys_exception(make_ledger: Callable[..., Ledger]) -> None:
    led = make_ledger()
    row = ("same-spend-id", "t", "key", "{}", 0.1, 1.0)
    with pytest.raises(IntegrityError), led._tx() as conn:  # spend ids are unique
        hotsql.insert_events(conn, [row, (*row[:2], "other-key", *row[3:])])
    with led._tx(readonly=True) as conn:
        assert conn.execute(select(events)).all() == []  # rolled back


def test_a_parsed_composition_is_shared_read_only_and_never_aliased() -> None:
    rdp = json.dumps([0.5, 1.25, float(2**-40)])
    atoms = json.dumps([[["gaussian", 8.0], 3]])
    a, b = composition(rdp, atoms), composition(rdp, atoms)
    assert a.rdp.tolist() == [0.5, 1.25, float(2**-40)] and not a.rdp.flags.writeable
    a.atoms[("gaussian", 8.0)] += 1  # a caller's copy: the next parse is unchanged
    assert b.atoms == {("gaussian", 8.0): 3} and composition(rdp, atoms).atoms == b.atoms
    with pytest.raises(ValueError):
        a.rdp[0] = 1.0
