"""Group commit: spends that wait together are decided in order and committed in one
transaction, exactly as one after the other; a refusal or a replay is its own caller's
answer; a group whose transaction fails stores nothing of it and answers each caller."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from services.accountant.events import Budget, Charge, Gaussian, Receipt, Scope, SubjectDefault
from services.accountant.group import GroupWriter, Ticket, settle
from services.accountant.ledger import Ledger
from services.accountant.metrics import AccountantMetrics
from services.common.db import make_engine, sqlite_file
from services.common.errors import ResourceExhausted, Unavailable

D, S, OTHER = "faces", "alice", "bob"
BLOCKER = "blocker"


def _budgets(led: Ledger, tenant: str) -> None:
    led.budgets.put(tenant, Budget(Scope(tenant), 100.0, 1e-5))
    led.budgets.put(tenant, Budget(Scope(tenant, D), 100.0, 1e-5, SubjectDefault(3.0, 1e-5)))
    led.budgets.put(tenant, Budget(Scope(tenant, D, S), 1.014, 1e-5))


def _sequence(tenant: str) -> list[Charge]:
    """Spends that exhaust ``S`` part-way (σ = 8 at δ = 1e-5 under RDP: 4 spends are ε 1.0126,
    5 are 1.1432; 2 and one σ = 3 are 1.5879), with a retry, a reused key, a subject created
    from the default and a missing budget."""

    def c(key: str, sigma: float = 8.0, subjects: tuple[str, ...] = (S,), **kw: Any) -> Charge:
        return Charge(Gaussian(sigma), tenant, D, key, subject_ids=subjects, **kw)

    return [
        c("k0"),
        c("k1"),
        c("k1", request_id="retry"),  # the same charge again: replayed
        c("k2", sigma=3.0),  # too much for S: refused, the others go on
        c("k3"),
        c("k1", sigma=9.0),  # the key of another charge: AlreadyExists
        c("k4", subjects=(OTHER,)),  # OTHER's budget is created from the default
        c("k5"),
        c("k6"),  # S is full by now
        Charge(Gaussian(8.0), tenant, "no-such-dataset", "k7"),
        c("k8", sigma=50.0, subjects=(S, OTHER)),
    ]


def _outcome(future: Future[Receipt]) -> Any:
    try:
        return future.result(timeout=60)
    except Exception as exc:  # the caller's answer: compared below
        return exc


def _comparable(outcome: Any) -> Any:
    """What must be equal between a grouped spend and the same spend made alone."""
    if isinstance(outcome, Exception):
        return type(outcome), outcome.details.get("scope")  # type: ignore[attr-defined]
    statuses = tuple(
        replace(s, scope=Scope("t", s.scope.dataset_id, s.scope.subject_id))
        for s in outcome.statuses
    )
    return outcome.replayed, outcome.charge.idempotency_key, statuses


@contextmanager
def writer_blocked(led: Ledger, url: str) -> Iterator[None]:
    """Another connection holds what the writer needs next (SQLite: the write lock;
    PostgreSQL: the row of the ``blocker`` tenant), while a spend of that tenant is in the
    writer: every spend queued meanwhile waits for one group."""
    if url.startswith("sqlite"):
        other = sqlite3.connect(str(sqlite_file(url)), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        release: Callable[[], None] = lambda: other.execute("COMMIT")  # noqa: E731
    else:
        engine = create_engine(url)
        conn = engine.connect()
        conn.execute(
            text("SELECT id FROM accountant_budgets WHERE tenant_id = :t FOR UPDATE"),
            {"t": BLOCKER},
        )

        def release() -> None:
            conn.commit()
            conn.close()
            engine.dispose()

    first = led.start_spend(BLOCKER, Charge(Gaussian(50.0), BLOCKER, "", "first"))
    deadline = time.monotonic() + 10
    while led._spends.queued and time.monotonic() < deadline:  # the writer took it
        time.sleep(0.01)
    try:
        yield
    finally:
        release()
        first.result(timeout=60)


def test_a_group_decides_exactly_as_spends_one_after_another(
    make_ledger: Callable[..., Ledger], db_url: str
) -> None:
    registry = CollectorRegistry()
    led = make_ledger(enforce_with="rdp", metrics=AccountantMetrics(registry))
    led.budgets.put(BLOCKER, Budget(Scope(BLOCKER), 100.0, 1e-5))
    for tenant in ("alone", "grouped"):
        _budgets(led, tenant)
    alone = [_outcome(led.start_spend("alone", c)) for c in _sequence("alone")]
    get = registry.get_sample_value
    name = "veil_accountant_spend_group_size_spends"
    count, total = get(f"{name}_count"), get(f"{name}_sum")
    assert (count, total) == (11, 11)  # one after another: groups of one
    with writer_blocked(led, db_url):
        futures = [led.start_spend("grouped", c) for c in _sequence("grouped")]
    grouped = [_outcome(f) for f in futures]
    # The blocker's group of one, then one group of all 11.
    assert (get(f"{name}_count") - count, get(f"{name}_sum") - total) == (2, 12)
    assert [_comparable(o) for o in grouped] == [_comparable(o) for o in alone]
    kinds = [type(o).__name__ for o in grouped]
    assert kinds == [
        "Receipt",
        "Receipt",
        "Receipt",
        "BudgetExhausted",
        "Receipt",
        "AlreadyExists",
        "Receipt",
        "Receipt",
        "BudgetExhausted",
        "NotFound",
        "BudgetExhausted",
    ]
    assert grouped[2].replayed and grouped[2].spend_id == grouped[1].spend_id
    # The k-th spend of a group on a budget saw its (k−1) predecessors: versions step by one.
    versions = [o.statuses[-1].version for o in grouped if isinstance(o, Receipt) and o.statuses]
    assert versions == [0, 1, 2, 0, 3]  # k0, k1, k3, k4 (on OTHER, new), k5
    for t in ("alone", "grouped"):
        for scope in (Scope(t), Scope(t, D), Scope(t, D, S), Scope(t, D, OTHER)):
            assert led.audit.verify(t, scope).ok
    for subject in (S, OTHER):
        a, g = (led.budgets.remaining(t, Scope(t, D, subject)) for t in ("alone", "grouped"))
        assert (a.epsilon_enforced, a.version, a.event_count) == (
            g.epsilon_enforced,
            g.version,
            g.event_count,
        )
    assert led.budgets.remaining("grouped", Scope("grouped", D, S)).event_count == 4


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_failed_group_stores_nothing_and_answers_each_spend(
    make_ledger: Callable[..., Ledger], db_url: str
) -> None:
    """The database refuses one spend's write (a trigger: a real failure inside the group's
    transaction): the group rolls back, then each spend is decided on its own."""
    led = make_ledger(enforce_with="rdp")
    led.budgets.put(BLOCKER, Budget(Scope(BLOCKER), 100.0, 1e-5))
    _budgets(led, "acme")
    led.budgets.put("acme", Budget(Scope("acme", D, "poison"), 2.0, 1e-5))
    with sqlite3.connect(str(sqlite_file(db_url))) as conn:
        (poison,) = conn.execute(
            "SELECT id FROM accountant_budgets WHERE subject_id = 'poison'"
        ).fetchone()
        conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON accountant_event_budgets "
            f"WHEN NEW.budget_id = {poison} BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    charges = [
        Charge(Gaussian(8.0), "acme", D, f"k{i}", subject_ids=(subject,))
        for i, subject in enumerate([S, "poison", S])
    ]
    with writer_blocked(led, db_url):
        futures = [led.start_spend("acme", c) for c in charges]
    outcomes = [_outcome(f) for f in futures]
    assert isinstance(outcomes[0], Receipt) and isinstance(outcomes[2], Receipt)
    assert isinstance(outcomes[1], Exception) and not isinstance(outcomes[1], Receipt)
    assert led.budgets.remaining("acme", Scope("acme", D, "poison")).event_count == 0
    assert led.budgets.remaining("acme", Scope("acme", D, S)).event_count == 2
    assert led.budgets.remaining("acme", Scope("acme")).event_count == 2
    for scope in (Scope("acme"), Scope("acme", D), Scope("acme", D, S)):
        assert led.audit.verify("acme", scope).ok


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_outage_fails_every_spend_of_the_group_unavailable(
    make_ledger: Callable[..., Ledger], db_url: str
) -> None:
    """SQLite's lock wait runs out (another process holds the write lock): every caller
    of the group gets UNAVAILABLE, nothing is stored, and the next spend goes through."""
    led = make_ledger(enforce_with="rdp", engine=make_engine(db_url, busy_timeout_s=0.2))
    _budgets(led, "acme")
    other = sqlite3.connect(str(sqlite_file(db_url)), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    futures = [
        led.start_spend("acme", Charge(Gaussian(8.0), "acme", D, f"k{i}", subject_ids=(S,)))
        for i in range(4)
    ]
    outcomes = [_outcome(f) for f in futures]
    other.execute("COMMIT")
    other.close()
    assert all(isinstance(o, Unavailable) for o in outcomes), outcomes
    assert len({id(o) for o in outcomes}) == 4  # each caller its own error
    assert led.budgets.remaining("acme", Scope("acme")).event_count == 0
    receipt = led.spend("acme", Charge(Gaussian(8.0), "acme", D, "k0", subject_ids=(S,)))
    assert not receipt.replayed and led.budgets.remaining("acme", Scope("acme")).event_count == 1


def test_the_writer_groups_by_count_and_weight_and_bounds_its_queue() -> None:
    """The writer alone: groups take the oldest items while they fit; a full queue refuses
    at once; closing decides what is queued, then refuses."""
    gate = threading.Event()
    groups: list[list[int]] = []

    def run(tickets: list[Ticket[int]]) -> None:
        gate.wait(10)
        groups.append([t.item for t in tickets])
        for t in tickets:
            settle(t, t.item)

    writer: GroupWriter[int] = GroupWriter(run, max_items=3, max_weight=3, max_queued=6)
    first = writer.submit(0)
    deadline = time.monotonic() + 10
    while writer.queued and time.monotonic() < deadline:
        time.sleep(0.01)
    futures = [writer.submit(i, weight=2 if i == 3 else 1) for i in range(1, 7)]
    with pytest.raises(ResourceExhausted):
        writer.submit(99)
    gate.set()
    assert [f.result(10) for f in [first, *futures]] == list(range(7))
    # At most 3 items and a weight of 3: item 3 weighs 2, so [1, 2] stop before it.
    assert groups == [[0], [1, 2], [3, 4], [5, 6]]
    writer.close()
    with pytest.raises(Unavailable):
        writer.submit(7)


def test_a_group_writer_never_leaves_a_caller_waiting() -> None:
    def run(tickets: list[Ticket[int]]) -> None:
        for t in tickets:
            if t.item == 1:
                settle(t, "one")
        raise RuntimeError("boom")

    writer: GroupWriter[int] = GroupWriter(run, max_items=8, max_weight=8, max_queued=8)
    assert writer.submit(1).result(10) == "one"  # answered before the failure: it stands
    with pytest.raises(RuntimeError, match="boom"):
        writer.submit(2).result(10)
    writer.close()


def test_spends_from_many_threads_all_land(make_ledger: Callable[..., Ledger]) -> None:
    """32 threads spend at once through one ledger: every acknowledged spend is stored once,
    the budgets end exactly at the sum, and groups formed (fewer groups than spends)."""
    registry = CollectorRegistry()
    led = make_ledger(enforce_with="rdp", metrics=AccountantMetrics(registry))
    _budgets(led, "acme")
    led.budgets.put("acme", Budget(Scope("acme", D, S), 1e6, 1e-5))
    acked: list[str] = []

    def client(t: int) -> None:
        for i in range(8):
            c = Charge(Gaussian(100.0), "acme", D, f"t{t}-{i}", subject_ids=(S,))
            acked.append(led.spend("acme", c).spend_id)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(set(acked)) == 256
    status = led.budgets.remaining("acme", Scope("acme", D, S))
    assert status.event_count == 256 and led.audit.verify("acme", Scope("acme", D, S)).ok
    groups = registry.get_sample_value("veil_accountant_spend_group_size_spends_count")
    assert registry.get_sample_value("veil_accountant_spend_group_size_spends_sum") == 256
    assert groups < 256


def test_a_spend_whose_caller_gave_up_is_never_decided(make_ledger: Callable[..., Ledger]) -> None:
    """A queued spend whose future is cancelled (the RPC's deadline passed while it waited)
    is dropped from its group: nothing is stored; the others of the group are."""
    led = make_ledger(enforce_with="rdp")
    led.budgets.put(BLOCKER, Budget(Scope(BLOCKER), 100.0, 1e-5))
    _budgets(led, "acme")
    charges = [Charge(Gaussian(8.0), "acme", D, f"k{i}", subject_ids=(S,)) for i in range(3)]
    url = str(led._engine.url.render_as_string(hide_password=False))
    with writer_blocked(led, url):
        futures = [led.start_spend("acme", c) for c in charges]
        assert futures[1].cancel()
    assert not futures[0].result(60).replayed and not futures[2].result(60).replayed
    assert led.budgets.remaining("acme", Scope("acme", D, S)).event_count == 2
    assert led.history("acme", Scope("acme", D, S)).events[-1].charge.idempotency_key == "k2"
    # A retry of the cancelled one is a first spend, not a replay.
    assert not led.spend("acme", charges[1]).replayed
