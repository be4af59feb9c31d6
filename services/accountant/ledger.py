"""The privacy ledger: budgets, atomic idempotent spends and reservations (no transport).

Every write runs in one transaction that first locks the budgets it touches (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT … FOR UPDATE`` in id order), then reads the
idempotency key, the live reservations and the running compositions, decides, and writes
the event, its budget links and the new running state together — or nothing. The cost of
a spend is independent of the number of past events: it touches one row per budget.
Concurrent spends share that transaction: one writer thread decides the spends waiting
together in order and commits them at once (group commit, :mod:`services.accountant.group`).

Every method takes the caller's tenant explicitly; a charge for another tenant is
PermissionDenied, and another tenant's reservation is NotFound (its existence is private).
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from services.accountant import batch, reserving
from services.accountant.accounting import Atom, Composition, atoms_of
from services.accountant.events import (
    Budget,
    BudgetStatus,
    Charge,
    Receipt,
    Reservation,
    Scope,
    SubjectDefault,
)
from services.accountant.group import GroupWriter, Ticket, settle
from services.accountant.limits import (
    Limits,
    check_charge,
    check_delta,
    check_scope,
    check_text,
)
from services.accountant.metrics import AccountantMetrics
from services.accountant.policy import Policy, TightNeeded, charge_cost
from services.accountant.queries import BudgetPage, HistoryPage, LedgerQueries, VerifyReport
from services.accountant.rows import (
    BudgetRow,
    atoms_to_json,
    charge_budgets,
    create_subjects,
    curve_text,
    drop_budgets,
    dumps,
    find_budgets,
    live_reservation_atoms,
    not_found,
    put_subject_default,
    scope_key,
    scope_key_details,
    subject_default,
)
from services.accountant.schema import budgets, events, metadata, reservations
from services.accountant.settings import AccountantSettings
from services.accountant.tightpool import TightPool
from services.common.db import create_schema, make_engine, transaction
from services.common.errors import (
    AlreadyExists,
    BudgetExhausted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    VeilError,
)

T = TypeVar("T")
WARM_ATTEMPTS = 3
"""Write attempts that may not compute a tight figure under their lock (each failed one
warms the memo outside it) before one that may."""
LOOK_AHEAD_MIN, LOOK_AHEAD_MAX = 8, 256
"""Items of a batch decided together (:func:`batch.look_ahead`): the window doubles while
every item is accepted and starts small again after one that was decided alone (a refusal
costs at most this much figuring thrown away)."""
ALONE = object()
"""A group's verdict on a spend whose group's transaction failed on a conflict (e.g. a key
another replica stored meanwhile): the spend runs again on its own."""
WARM = object()
"""A group's verdict on a spend whose decision needs a tight figure that it may not compute
under the lock: it is computed outside (memoised) and the spend queued again."""


class Ledger:
    """Transport-free core of the accountant over SQLite or PostgreSQL: the write path here,
    the reads in :attr:`queries` (delegated below)."""

    def __init__(
        self,
        url: str,
        *,
        policy: Policy | None = None,
        default_lease_s: float = 30.0,
        max_lease_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        metrics: AccountantMetrics | None = None,
        engine: Engine | None = None,
        limits: Limits | None = None,
        tight_pool: TightPool | None = None,
        group_max: int = 64,
        spend_queue: int = 1024,
        max_delta: float = 1e-5,
    ) -> None:
        self._engine = engine or make_engine(url)
        self._writer = threading.Lock() if self._engine.dialect.name == "sqlite" else None
        """SQLite has one writer at a time: this process's writers queue here, on a lock,
        rather than in SQLite's busy handler, which sleeps with backoff (up to 100 ms a
        try) and made p99 under 32 clients 80× p99 under one."""
        self.limits = limits or Limits()
        self._tight_pool = tight_pool
        """Owned: closed with the ledger (its policy computes tight figures there)."""
        self.policy = policy or Policy()
        self.default_lease_s, self.max_lease_s = default_lease_s, max_lease_s
        self.max_delta = max_delta
        """The largest δ :meth:`put_budget` accepts for a budget or a subject default."""
        self._clock, self._metrics = clock, metrics
        self.queries = LedgerQueries(self._tx, clock, self.policy, self.limits)
        self._spends: GroupWriter[_Spend] = GroupWriter(
            self._spend_group,
            max_items=group_max,
            max_weight=max(group_max, self.limits.max_subjects + 2),
            max_queued=spend_queue,
        )
        """Group commit of spends (:mod:`services.accountant.group`)."""
        self._alone: ThreadPoolExecutor | None = None
        """Where a spend that its group handed back runs on its own (started on need)."""
        self._alone_lock = threading.Lock()
        if metrics is not None:
            metrics.reservations_outstanding.set_function(self.live_reservations)

    @classmethod
    def from_settings(
        cls, settings: AccountantSettings, *, metrics: AccountantMetrics | None = None
    ) -> Ledger:
        pool = TightPool(settings.tight_workers, settings.tight_timeout_s)
        policy = Policy(
            tight=settings.tight_accountant,
            enforce_with=settings.enforce_with,
            tight_fn=pool.figure,
        )
        return cls(
            settings.database_url,
            policy=policy,
            metrics=metrics,
            default_lease_s=settings.default_lease_s,
            max_lease_s=settings.max_lease_s,
            limits=settings.limits,
            tight_pool=pool,
            group_max=settings.group_max,
            spend_queue=settings.spend_queue,
            max_delta=settings.max_delta,
        )

    def _now(self) -> float:
        return self._clock()

    def start_tight_pool(self) -> None:
        """Start the tight figures' worker processes (a no-op without a pool)."""
        if self._tight_pool is not None:
            self._tight_pool.start()

    def create_schema(self) -> None:
        """Create the tables if missing (idempotent)."""
        create_schema(self._engine, metadata)

    def ping(self) -> bool:
        """True if the database answers (the server's readiness check); never raises for
        an unreachable database."""
        try:
            with self._tx(readonly=True) as conn:  # a plain BEGIN: no write lock for a ping
                return bool(conn.execute(text("SELECT 1")).scalar_one() == 1)
        except Unavailable:
            return False

    def close(self) -> None:
        self._spends.close()  # the queued spends are decided first
        with self._alone_lock:
            alone, self._alone = self._alone, None
        if alone is not None:
            alone.shutdown(wait=True)
        self._engine.dispose()
        if self._tight_pool is not None:
            self._tight_pool.close()

    @contextmanager
    def _tx(self, *, readonly: bool = False) -> Iterator[Connection]:
        if readonly or self._writer is None:
            with transaction(self._engine, readonly=readonly) as conn:
                yield conn
            return
        with self._writer, transaction(self._engine) as conn:
            yield conn

    # -- reads (LedgerQueries) -----------------------------------------------------------
    def remaining(self, caller_tenant: str, scope: Scope) -> BudgetStatus:
        return self.queries.remaining(caller_tenant, scope)

    def list_budgets(self, caller_tenant: str, tenant_id: str, **page: Any) -> BudgetPage:
        return self.queries.list_budgets(caller_tenant, tenant_id, **page)

    def history(self, caller_tenant: str, scope: Scope, **page: Any) -> HistoryPage:
        return self.queries.history(caller_tenant, scope, **page)

    def verify(self, caller_tenant: str, scope: Scope) -> VerifyReport:
        return self.queries.verify(caller_tenant, scope)

    def verify_all(self, tenant_id: str | None = None) -> Iterator[VerifyReport]:
        return self.queries.verify_all(tenant_id)

    def is_empty(self) -> bool:
        return self.queries.is_empty()

    def export_audit(
        self, tenant_id: str | None = None, since: float | None = None
    ) -> Iterator[str]:
        return self.queries.export_audit(tenant_id, since)

    def replay(self, lines: Iterable[str]) -> int:
        """Load an audit export into this (empty) ledger; returns the number of events.

        Events are applied without enforcement (they were accepted once; a limit lowered
        later must not drop history) but keep their spend ids and commit times; budgets
        keep their δ even above this server's ``max_delta`` (they were accepted once too).
        """
        n = 0
        for line in lines:
            item = json.loads(line)
            if item["type"] == "budget":
                default = item.get("subject_default")
                b = Budget(
                    Scope.from_json(item["scope"]),
                    item["epsilon"],
                    item["delta"],
                    SubjectDefault(**default) if default else None,
                )
                self._write_budget(b)
            elif item["type"] == "event":
                charge = Charge.from_json(item["charge"])
                with self._tx() as conn:
                    self._spend_in(
                        conn,
                        charge,
                        enforce=False,
                        exclude=None,
                        spend_id=item["spend_id"],
                        committed_at=item["committed_at"],
                    )
                n += 1
        return n

    # -- budgets -------------------------------------------------------------------------
    def put_budget(self, caller_tenant: str, budget: Budget) -> BudgetStatus:
        """Create a budget, or change the limits of an existing one (its spends stay). A
        dataset budget's ``subject_default`` is replaced too (None removes it). A δ above
        :attr:`max_delta` (the budget's or its subject default's) is InvalidArgument."""
        _authorize(caller_tenant, budget.scope.tenant_id)
        check_delta(budget, self.max_delta)
        return self._write_budget(budget)

    def _write_budget(self, budget: Budget) -> BudgetStatus:
        """Store ``budget``'s limits: :meth:`put_budget` after its checks of the caller and
        of the δ maximum (:meth:`replay` restores budgets as they were accepted)."""
        check_scope(budget.scope, self.limits, "budget.scope")
        t, d, s = scope_key(budget.scope)
        now = self._clock()
        with self._tx() as conn:
            rows, _ = find_budgets(conn, [budget.scope], lock=True)
            if rows:
                budget_id = rows[0].id
                conn.execute(
                    update(budgets)
                    .where(budgets.c.id == budget_id)
                    .values(
                        epsilon=budget.epsilon,
                        delta=budget.delta,
                        version=rows[0].version + 1,
                        updated_at=now,
                    )
                )
                comp, version, count = rows[0].comp, rows[0].version + 1, rows[0].event_count
            else:
                comp, version, count = Composition(), 0, 0
                budget_id = conn.execute(
                    insert(budgets)
                    .values(
                        tenant_id=t,
                        dataset_id=d,
                        subject_id=s,
                        epsilon=budget.epsilon,
                        delta=budget.delta,
                        version=0,
                        event_count=0,
                        rdp=curve_text(comp.rdp),
                        atoms=atoms_to_json(comp.atoms),
                        updated_at=now,
                    )
                    .returning(budgets.c.id)
                ).scalar_one()
            if budget.scope.kind == "dataset":
                put_subject_default(conn, budget_id, budget.subject_default)
        status = self.policy.status(budget, comp, version)
        return replace(status, event_count=count, subject_default=budget.subject_default)

    @staticmethod
    def _with_new_subjects(conn: Connection, charge: Charge) -> list[BudgetRow]:
        """The charge's budgets for a dry run: a subject without a budget counts as the
        fresh budget its dataset's subject default would create (nothing is written)."""
        rows, missing = find_budgets(conn, charge.scopes, lock=False)
        if not missing:
            return rows
        default = None
        if all(m.kind == "subject" for m in missing):
            default = subject_default(conn, charge.tenant_id, charge.dataset_id)
        if default is None:
            raise not_found(missing[0])
        fresh = [
            BudgetRow(-(i + 1), Budget(m, default.epsilon, default.delta), 0, Composition())
            for i, m in enumerate(missing)
        ]
        return rows + fresh

    # -- spends --------------------------------------------------------------------------
    def check(
        self, caller_tenant: str, charge: Charge, *, tight: bool = False
    ) -> tuple[BudgetStatus, ...]:
        """Dry run: projected status of every budget the charge touches. Writes nothing.

        Live reservations count. ``tight=True`` also computes the tight figure everywhere.
        """
        _authorize(caller_tenant, charge.tenant_id)
        check_charge(charge, self.limits)
        with self._tx(readonly=True) as conn:
            rows = self._with_new_subjects(conn, charge)
            held = live_reservation_atoms(
                conn, charge.tenant_id, [r.id for r in rows], self._clock()
            )
        return self._project(rows, held, atoms_of(charge), want_tight=tight)

    def spend(self, caller_tenant: str, charge: Charge) -> Receipt:
        """Commit a charge atomically on all its budgets, or raise and write nothing.

        Same idempotency key and same charge → the original receipt with ``replayed=True``;
        same key, other charge → AlreadyExists; a budget too small → BudgetExhausted.
        """
        return self.start_spend(caller_tenant, charge).result()

    def start_spend(self, caller_tenant: str, charge: Charge) -> Future[Receipt]:
        """:meth:`spend` without waiting: the charge is checked now and queued for the group
        commit; the future resolves with its receipt or error once its group is committed.

        Spends waiting together are decided in queue order in one transaction, each against
        the state the ones before it left (so exactly as one after the other: statuses,
        versions and refusals), and committed together; a replay or a refusal is that
        spend's answer alone. If the group's transaction fails, nothing of it is stored: a
        database outage is each caller's UNAVAILABLE, any other failure (a key another
        replica stored meanwhile) sends each spend through the path of a spend alone.
        """
        _authorize(caller_tenant, charge.tenant_id)
        check_charge(charge, self.limits)
        spend = _Spend(charge, time.perf_counter(), 0)
        return self._spends.submit(spend, weight=len(charge.scopes))

    def _spend_group(self, tickets: list[Ticket[_Spend]]) -> None:
        """The writer's work: decide and commit one group, then answer each caller."""
        if self._metrics is not None:
            self._metrics.spend_group_size.observe(len(tickets))
        try:
            outcomes = self._decide_group([t.item for t in tickets])
        except Unavailable as exc:
            outcomes = [Unavailable(exc.message, details=exc.details) for _ in tickets]
        except Exception:  # e.g. IntegrityError: nothing was committed; each goes alone
            outcomes = [ALONE] * len(tickets)
        for ticket, outcome in zip(tickets, outcomes, strict=True):
            if outcome is ALONE or outcome is WARM:
                self._hand_back(ticket, warm=outcome is WARM)
                continue
            if isinstance(outcome, Receipt):
                self._record(outcome, ticket.item.started, "spend")
            elif isinstance(outcome, BudgetExhausted):
                self._refused("budget_exhausted")
            settle(ticket, outcome)

    def _hand_back(self, ticket: Ticket[_Spend], *, warm: bool) -> None:
        """Off the writer thread: ``warm``, compute the tight figure the spend's decision
        needs (outside any lock, memoised) and queue it again, allowed to compute it under
        the lock after :data:`WARM_ATTEMPTS` (as :meth:`_outside_lock_first`); else run the
        spend on its own."""
        spend = ticket.item

        def again() -> None:
            try:
                if not warm:
                    settle(ticket, self._spend_alone(spend.charge, spend.started))
                    return
                with suppress(VeilError):
                    self._warm(spend.charge)
                retry = replace(spend, attempt=spend.attempt + 1)
                future = self._spends.submit(retry, weight=ticket.weight)
                future.add_done_callback(lambda f: settle(ticket, f.exception() or f.result()))
            except BaseException as exc:
                settle(ticket, exc)

        try:
            with self._alone_lock:
                if self._alone is None:
                    self._alone = ThreadPoolExecutor(2, thread_name_prefix="ledger-alone")
                self._alone.submit(again)
        except RuntimeError:  # shut down meanwhile
            settle(ticket, Unavailable("the ledger is shutting down; retry"))

    def _spend_alone(self, charge: Charge, started: float) -> Receipt:
        """One spend in its own transaction(s): a tight figure is computed outside the lock."""
        try:
            receipt = self._outside_lock_first(
                lambda allow: self._spend_once(charge, allow), charge.tenant_id, charge
            )
        except IntegrityError as exc:
            receipt = self._replay_after_race(charge, exc)
        except BudgetExhausted:
            self._refused("budget_exhausted")
            raise
        self._record(receipt, started, "spend")
        return receipt

    def _decide_group(self, spends: list[_Spend]) -> list[Any]:
        """Decide ``spends`` in order in one transaction and commit the accepted ones;
        each outcome is a Receipt, the spend's VeilError, or :data:`WARM`."""
        charges = [s.charge for s in spends]
        now = self._clock()
        with self._tx() as conn:
            scopes = {s for c in charges for s in c.scopes}
            found, created = self._lock_creating(conn, scopes, now)
            by_scope = {r.budget.scope: batch.Running(r, r.comp, r.event_count) for r in found}
            held: dict[int, Counter[Atom]] = {}
            done: dict[tuple[str, str], Any] = {}
            for tenant in sorted({c.tenant_id for c in charges}):
                ids = [r.id for r in found if r.budget.scope.tenant_id == tenant]
                held |= live_reservation_atoms(conn, tenant, ids, now)
                keys = (c.idempotency_key for c in charges if c.tenant_id == tenant)
                stored = batch.existing_events(conn, tenant, keys)
                done |= {(tenant, key): row for key, row in stored.items()}
            pending: list[batch.Pending] = []
            outcomes = [self._group_item(s, by_scope, held, done, pending, now) for s in spends]
            batch.write(conn, pending, by_scope.values(), now)
            used = {budget_id for p in pending for budget_id in p.budget_ids}
            drop_budgets(conn, (b for b in created if b not in used))
        return outcomes

    def _group_item(
        self,
        spend: _Spend,
        by_scope: dict[Scope, batch.Running],
        held: dict[int, Counter[Atom]],
        done: dict[tuple[str, str], Any],
        pending: list[batch.Pending],
        now: float,
    ) -> Any:
        """Decide one spend of a group against the running state, as :meth:`_spend_in`
        would (missing budget, then replay, then the verdict), and queue its write."""
        charge = spend.charge
        missing = [s for s in charge.scopes if s not in by_scope]
        if missing:
            return not_found(missing[0])
        key = (charge.tenant_id, charge.idempotency_key)
        try:
            if (existing := done.get(key)) is not None:
                return self._replay_or_conflict(existing, charge)
            running = sorted((by_scope[s] for s in charge.scopes), key=lambda r: r.row.id)
            atoms = atoms_of(charge)
            allow = spend.attempt >= WARM_ATTEMPTS
            statuses = self._verdict([r.now() for r in running], held, atoms, allow_tight=allow)
        except TightNeeded:
            return WARM
        except VeilError as exc:
            return exc
        cost = charge_cost(charge, min(r.row.budget.delta for r in running)).epsilon
        item = batch.Pending(charge, [r.row.id for r in running], cost)
        batch.accept(running, atoms, version_each=True)
        pending.append(item)
        done[key] = batch.StoredEvent(item.spend_id, dumps(charge.to_json()), now)
        return Receipt(item.spend_id, charge, now, statuses)

    def _spend_once(self, charge: Charge, allow_tight: bool) -> Receipt:
        with self._tx() as conn:
            return self._spend_in(conn, charge, enforce=True, exclude=None, allow_tight=allow_tight)

    def _outside_lock_first(
        self, attempt: Callable[[bool], T], caller_tenant: str, charge: Charge
    ) -> T:
        """Run a write ``attempt`` that may not compute tight figures under its lock; if it
        needs one, compute it in a read-only transaction (memoised by content) and retry,
        now allowed (the figure is a cache hit unless the budget changed in between)."""
        for _ in range(WARM_ATTEMPTS):
            try:
                return attempt(False)
            except TightNeeded:
                with suppress(VeilError):
                    self._warm(charge)
        return attempt(True)  # the budgets kept changing: compute under the lock

    def _warm(self, charge: Charge) -> None:
        """The decision a spend of ``charge`` is about to make, in a read-only transaction:
        its tight figures are then memoised (BudgetExhausted, if any, is the spend's to say)."""
        with self._tx(readonly=True) as conn:
            rows = self._with_new_subjects(conn, charge)
            ids = [r.id for r in rows]
            held = live_reservation_atoms(conn, charge.tenant_id, ids, self._clock())
        self._verdict(rows, held, atoms_of(charge), allow_tight=True)

    def charge_batch(
        self, caller_tenant: str, batch_key: str, items: Sequence[Charge | VeilError]
    ) -> list[Receipt | VeilError]:
        """Charge every item in one transaction; each is accepted or refused on its own.

        Item ``i`` is stored under the idempotency key ``<batch_key>#<i>`` (its own key
        must be empty), so a retry replays the items accepted before and decides the
        refused ones again. An item given as an error (it did not convert) stays refused.
        """
        check_text("idempotency_key", batch_key, self.limits.max_key_bytes - 8, required=True)
        if len(items) > self.limits.max_batch:
            raise InvalidArgument(
                f"a batch holds at most {self.limits.max_batch} charges",
                details={"field": "charges", "limit": self.limits.max_batch},
            )
        started = time.perf_counter()
        results: list[Receipt | VeilError | None] = [None] * len(items)
        charges: dict[int, Charge] = {}
        for i, item in enumerate(items):
            if isinstance(item, VeilError):
                results[i] = item
                continue
            try:
                _authorize(caller_tenant, item.tenant_id)
                check_charge(item, self.limits, f"charges[{i}]")
            except VeilError as exc:
                results[i] = exc
                continue
            charges[i] = replace(item, idempotency_key=batch.item_key(batch_key, i))
        if not charges:  # nothing left to decide: no transaction
            return [r if r is not None else InvalidArgument("no result") for r in results]
        now = self._clock()
        with self._tx() as conn:
            scopes = {s for c in charges.values() for s in c.scopes}
            found, created = self._lock_creating(conn, scopes, now)
            by_scope = {r.budget.scope: batch.Running(r, r.comp, r.event_count) for r in found}
            held = live_reservation_atoms(conn, caller_tenant, [r.id for r in found], now)
            done = batch.existing_events(
                conn, caller_tenant, (c.idempotency_key for c in charges.values())
            )
            pending: list[batch.Pending] = []
            todo, window = list(charges.items()), LOOK_AHEAD_MIN
            while todo:
                ahead = batch.look_ahead(
                    self.policy, [c for _, c in todo[:window]], by_scope, held, done
                )
                for (i, charge), decided in zip(todo, ahead, strict=False):
                    results[i] = self._batch_taken(charge, decided, pending, now)
                if len(ahead) < min(window, len(todo)):  # the next item is decided alone
                    i, charge = todo[len(ahead)]
                    results[i] = self._batch_item(charge, by_scope, held, done, pending, now)
                    todo, window = todo[len(ahead) + 1 :], LOOK_AHEAD_MIN
                else:
                    todo, window = todo[len(ahead) :], min(2 * window, LOOK_AHEAD_MAX)
            batch.write(conn, pending, by_scope.values(), now)
            used = {budget_id for p in pending for budget_id in p.budget_ids}
            drop_budgets(conn, (b for b in created if b not in used))
        for result in results:
            if isinstance(result, Receipt) and not result.replayed:
                self._record(result, started, "batch")
            elif isinstance(result, BudgetExhausted):
                self._refused("budget_exhausted")
        return [r if r is not None else InvalidArgument("no result") for r in results]

    @staticmethod
    def _lock_creating(
        conn: Connection, scopes: Iterable[Scope], now: float
    ) -> tuple[list[BudgetRow], list[int]]:
        """The budgets of ``scopes``, locked, in id order, after creating the missing subject
        budgets whose dataset has a subject default; and the ids created."""
        scopes = set(scopes)
        found, missing = find_budgets(conn, scopes, lock=True)
        created: list[int] = []
        by_dataset: dict[tuple[str, str | None], list[Scope]] = {}
        for scope in missing:
            by_dataset.setdefault((scope.tenant_id, scope.dataset_id), []).append(scope)
        for group in by_dataset.values():
            created += create_subjects(conn, group, now)
        if missing:  # again: see charge_budgets
            found, _ = find_budgets(conn, scopes, lock=True)
        return found, created

    @staticmethod
    def _batch_taken(
        charge: Charge, item: batch.Ahead, pending: list[batch.Pending], now: float
    ) -> Receipt:
        """Accept an item decided ahead (what :meth:`_batch_item` does for one accepted)."""
        cost = charge_cost(charge, min(r.row.budget.delta for r in item.running)).epsilon
        queued = batch.Pending(charge, [r.row.id for r in item.running], cost)
        batch.take(item)
        pending.append(queued)
        return Receipt(queued.spend_id, charge, now, item.statuses)

    def _batch_item(
        self,
        charge: Charge,
        by_scope: dict[Scope, batch.Running],
        held: dict[int, Counter[Atom]],
        done: dict[str, Any],
        pending: list[batch.Pending],
        now: float,
    ) -> Receipt | VeilError:
        """Decide one item of a batch against the running state (and queue its write)."""
        try:
            if (existing := done.get(charge.idempotency_key)) is not None:
                return self._replay_or_conflict(existing, charge)
            missing = [s for s in charge.scopes if s not in by_scope]
            if missing:
                raise not_found(missing[0])
            running = [by_scope[s] for s in charge.scopes]
            running.sort(key=lambda r: r.row.id)
            atoms = atoms_of(charge)
            now_rows = [replace(r.row, comp=r.comp, event_count=r.event_count) for r in running]
            statuses = self._verdict(now_rows, held, atoms, allow_tight=True)
            cost = charge_cost(charge, min(r.row.budget.delta for r in running)).epsilon
            item = batch.Pending(charge, [r.row.id for r in running], cost)
            batch.accept(running, atoms)
            pending.append(item)
            return Receipt(item.spend_id, charge, now, tuple(statuses))
        except VeilError as exc:
            return exc

    def reserve(
        self, caller_tenant: str, charge: Charge, lease_s: float | None = None
    ) -> Reservation:
        """Hold budget for ``charge`` until the lease ends; it counts against every budget.

        Idempotent by the charge's key (:mod:`services.accountant.reserving`): the key's
        live or committed reservation of the same charge is returned as stored (its id; a
        live one's lease extended to end no earlier than this one), ``replayed``, with its
        ``spend_id`` if committed, and nothing new is held; its expired or released one is
        decided against the budgets again and re-armed under the same id. Another charge
        under a key that is live or committed, or a key a direct spend used, is
        AlreadyExists.
        """
        _authorize(caller_tenant, charge.tenant_id)
        check_charge(charge, self.limits)
        lease = self.default_lease_s if lease_s is None else lease_s
        if not (math.isfinite(lease) and lease > 0):
            raise InvalidArgument("lease must be > 0 seconds", details={"field": "lease"})
        lease = min(lease, self.max_lease_s)  # the contract: clamped to the server maximum

        def attempt(allow: bool) -> Reservation:
            return self._reserve_once(charge, lease, allow)

        try:
            reservation = self._outside_lock_first(attempt, caller_tenant, charge)
        except (IntegrityError, reserving.Raced):  # a concurrent Reserve stored the id first
            reservation = self._outside_lock_first(attempt, caller_tenant, charge)  # its replay
        return self._as_now(reservation) if reservation.replayed else reservation

    def _as_now(self, replay: Reservation) -> Reservation:
        """A replayed reservation with its budgets' statuses as computed now (read as
        :meth:`check` reads, figured outside any lock): after its commit, a live one's own
        hold composed in once as a new reservation's projection, a committed one as it
        stands (with the other live reservations, as always)."""
        charge, now = replay.charge, self._clock()
        with self._tx(readonly=True) as conn:
            rows = self._with_new_subjects(conn, charge)
            ids = [r.id for r in rows]
            held = live_reservation_atoms(conn, charge.tenant_id, ids, now, replay.reservation_id)
        live = not replay.spend_id
        atoms = atoms_of(charge) if live else Counter()
        statuses = self._project(rows, held, atoms, want_tight=False, events=int(live))
        return replace(replay, statuses=statuses)

    def _reserve_once(self, charge: Charge, lease: float, allow_tight: bool) -> Reservation:
        now = self._clock()
        rid = reserving.reservation_id(charge.tenant_id, charge.idempotency_key)
        with self._tx() as conn:
            # The key's row is locked before the budgets, in Commit's order (no deadlock).
            stored = reserving.stored(conn, rid, lock=True)
            if (replay := reserving.replay_of(stored, charge, now)) is not None:
                if not replay.spend_id and replay.expires_at < now + lease:
                    reserving.extend(conn, rid, now + lease)  # the retry needs its time
                    replay = replace(replay, expires_at=now + lease)
                return replay
            rows, _ = charge_budgets(conn, charge, now, create=True)
            # PostgreSQL: a Reserve of the key that held the tenant budget's lock before us
            # has committed its row by now, and a new statement sees it.
            if stored is None and reserving.stored(conn, rid, lock=False) is not None:
                raise reserving.Raced
            self._sweep(conn, charge.tenant_id, now)
            if self._event_by_key(conn, charge) is not None:
                raise AlreadyExists("a spend with this idempotency key is already committed")
            try:  # the key's own row never counts against it (stored meanwhile: see reserve)
                statuses = self._decide(
                    conn, rows, charge, now, exclude=rid, allow_tight=allow_tight
                )
            except BudgetExhausted:
                self._refused("budget_exhausted")
                raise
            ids = [r.id for r in rows]
            reserving.hold(conn, rid, charge, ids, now + lease, rearm=stored is not None)
        return Reservation(rid, charge, now + lease, statuses)

    def commit(self, caller_tenant: str, reservation_id: str) -> Receipt:
        """Turn a live reservation into a spend; an expired one is FailedPrecondition."""
        started = time.perf_counter()
        with self._tx() as conn:
            row = self._reservation(conn, caller_tenant, reservation_id)
            charge = Charge.from_json(json.loads(row.charge))
            if row.status == "committed":
                return self._replayed(conn, charge)
            error = self._lapse(conn, row)
            if error is None:
                receipt = self._spend_in(conn, charge, enforce=False, exclude=reservation_id)
                conn.execute(
                    update(reservations)
                    .where(reservations.c.id == reservation_id)
                    .values(status="committed", spend_id=receipt.spend_id)
                )
        if error is not None:  # raised after the commit so that "expired" is stored
            raise error
        self._record(receipt, started, "commit")
        return receipt

    def release(self, caller_tenant: str, reservation_id: str) -> bool:
        """Give a reservation's budget back; False when it was already released or had
        expired (a no-op). A committed one is FailedPrecondition."""
        with self._tx() as conn:
            row = self._reservation(conn, caller_tenant, reservation_id)
            if row.status == "committed":
                raise FailedPrecondition("reservation already committed")
            live = row.status == "live" and row.expires_at > self._clock()
            if row.status == "live":
                conn.execute(
                    update(reservations)
                    .where(reservations.c.id == reservation_id)
                    .values(status="released" if live else "expired")
                )
        return live

    # -- internals -----------------------------------------------------------------------
    def _spend_in(
        self,
        conn: Connection,
        charge: Charge,
        *,
        enforce: bool,
        exclude: str | None,
        spend_id: str | None = None,
        committed_at: float | None = None,
        allow_tight: bool = True,
    ) -> Receipt:
        now = self._clock() if committed_at is None else committed_at
        rows, _ = charge_budgets(conn, charge, now, create=enforce)
        if (existing := self._event_by_key(conn, charge)) is not None:
            return self._replay_or_conflict(existing, charge)
        if enforce:
            statuses = self._decide(
                conn, rows, charge, now, exclude=exclude, allow_tight=allow_tight
            )
        else:
            statuses = self._project(rows, {}, atoms_of(charge), want_tight=False)
        cost = charge_cost(charge, min(r.budget.delta for r in rows)).epsilon
        item = batch.Pending(charge, [r.id for r in rows], cost, spend_id or uuid.uuid4().hex)
        running = [batch.Running(r, r.comp, r.event_count) for r in rows]
        batch.accept(running, atoms_of(charge))
        batch.write(conn, [item], running, now)
        spend_id = item.spend_id
        return Receipt(spend_id, charge, now, statuses)

    def _decide(
        self,
        conn: Connection,
        rows: list[BudgetRow],
        charge: Charge,
        now: float,
        exclude: str | None,
        allow_tight: bool = True,
    ) -> tuple[BudgetStatus, ...]:
        """Projected statuses, or BudgetExhausted naming the first budget that overflows."""
        held = live_reservation_atoms(conn, charge.tenant_id, [r.id for r in rows], now, exclude)
        return self._verdict(rows, held, atoms_of(charge), allow_tight)

    def _verdict(
        self,
        rows: list[BudgetRow],
        held: dict[int, Counter[Atom]],
        atoms: Counter[Atom],
        allow_tight: bool,
    ) -> tuple[BudgetStatus, ...]:
        """Projected statuses (in ``rows``' order), or BudgetExhausted for the first budget
        found to overflow. Subject budgets are looked at first, then the dataset's, then the
        tenant's: a refusal stops at the first overflow, so it costs at most one tight
        figure, and the one it needs is of the budget other spends change least (a memoised
        figure of a subject budget stays valid while the tenant's keeps moving)."""
        order = {"subject": 0, "dataset": 1, "tenant": 2}
        statuses: dict[int, BudgetStatus] = {}
        looked = sorted(rows, key=lambda r: order[r.budget.scope.kind])
        comps = [_after(row, held, atoms) for row in looked]
        cheap = self.policy.statuses(  # the figures of all at once; None: ask status()
            [r.budget for r in looked],
            comps,
            [r.version for r in looked],
            [r.event_count + 1 for r in looked],
        )
        for row, comp, known in zip(looked, comps, cheap, strict=True):
            status = known or self.policy.status(
                row.budget,
                comp,
                row.version,
                allow_tight=allow_tight,
                event_count=row.event_count + 1,
            )
            if status.exceeds:
                current = self.policy.status(
                    row.budget,
                    row.comp.add(held.get(row.id, Counter())),
                    row.version,
                    allow_tight=allow_tight,
                )
                raise _exhausted(row, status, current)
            statuses[row.id] = status
        return tuple(statuses[row.id] for row in rows)

    def _project(
        self,
        rows: list[BudgetRow],
        held: dict[int, Counter[Atom]],
        atoms: Counter[Atom],
        *,
        want_tight: bool,
        events: int = 1,
    ) -> tuple[BudgetStatus, ...]:
        """Statuses of ``rows`` with ``held`` and ``atoms`` composed in, counting ``events``
        more events (the candidate charge's one, by default)."""
        comps = [_after(r, held, atoms) for r in rows]
        counts = [r.event_count + events for r in rows]
        cheap: list[BudgetStatus | None] = [None] * len(rows)
        if not want_tight:
            cheap = self.policy.statuses(
                [r.budget for r in rows], comps, [r.version for r in rows], counts
            )
        out = []
        for r, comp, count, known in zip(rows, comps, counts, cheap, strict=True):
            status = known or self.policy.status(
                r.budget, comp, r.version, want_tight=want_tight, event_count=count
            )
            out.append(status)
        return tuple(out)

    @staticmethod
    def _event_by_key(conn: Connection, charge: Charge) -> Any:
        q = select(events).where(
            events.c.tenant_id == charge.tenant_id,
            events.c.idempotency_key == charge.idempotency_key,
        )
        return conn.execute(q).first()

    @staticmethod
    def _replay_or_conflict(row: Any, charge: Charge) -> Receipt:
        original = Charge.from_json(json.loads(row.charge))
        if not original.same_charge(charge):
            raise AlreadyExists(
                "idempotency key already used for a different charge",
                details={"idempotency_key": charge.idempotency_key},
            )
        return Receipt(row.spend_id, original, row.committed_at, (), replayed=True)

    def _replayed(self, conn: Connection, charge: Charge) -> Receipt:
        return self._replay_or_conflict(self._event_by_key(conn, charge), charge)

    def _replay_after_race(self, charge: Charge, exc: IntegrityError) -> Receipt:
        """A concurrent spend won the unique key between our read and insert (PostgreSQL)."""
        with self._tx(readonly=True) as conn:
            row = self._event_by_key(conn, charge)
        if row is None:
            raise exc
        return self._replay_or_conflict(row, charge)

    def _reservation(self, conn: Connection, caller_tenant: str, rid: str) -> Any:
        check_text("reservation_id", rid, self.limits.max_id_bytes, required=True)
        q = select(reservations).where(reservations.c.id == rid).with_for_update()
        row = conn.execute(q).first()
        if row is None or row.tenant_id != caller_tenant:
            raise NotFound("no such reservation", details={"reservation_id": rid})
        return row

    def _lapse(self, conn: Connection, row: Any) -> FailedPrecondition | None:
        """The error that stops committing ``row`` (marking a lapsed lease expired), if any."""
        details = {"reservation_id": row.id}
        if row.status == "live" and row.expires_at <= self._clock():
            conn.execute(
                update(reservations).where(reservations.c.id == row.id).values(status="expired")
            )
            if self._metrics:
                self._metrics.reservations_expired.inc()
            return FailedPrecondition("reservation lease expired", details=details)
        if row.status != "live":
            return FailedPrecondition(f"reservation is {row.status}", details=details)
        return None

    def _sweep(self, conn: Connection, tenant_id: str, now: float) -> None:
        """Mark this tenant's lapsed reservations expired (they already stopped counting)."""
        res = conn.execute(
            update(reservations)
            .where(
                reservations.c.tenant_id == tenant_id,
                reservations.c.status == "live",
                reservations.c.expires_at <= now,
            )
            .values(status="expired")
        )
        if self._metrics and res.rowcount:
            self._metrics.reservations_expired.inc(res.rowcount)

    def live_reservations(self) -> float:
        """Live, unexpired reservations in the whole ledger (read at scrape time); NaN when
        the database cannot answer (a scrape must not fail)."""
        try:
            with self._tx(readonly=True) as conn:
                q = select(func.count()).select_from(reservations)
                q = q.where(
                    reservations.c.status == "live", reservations.c.expires_at > self._clock()
                )
                return float(conn.execute(q).scalar_one())
        except Unavailable:
            return math.nan

    def _record(self, receipt: Receipt, started: float, kind: str) -> None:
        if self._metrics is None or receipt.replayed:
            return
        dataset = next((s for s in receipt.statuses if s.scope.kind == "dataset"), None)
        eps = dataset.epsilon_enforced if dataset else 0.0
        self._metrics.spent(kind, receipt.charge.dataset_id, eps, time.perf_counter() - started)

    def _refused(self, reason: str) -> None:
        if self._metrics:
            self._metrics.refused(reason)


@dataclass(frozen=True)
class _Spend:
    """A queued spend: its charge, when it was asked for (latency metric) and how many times
    it was queued again to compute a tight figure first."""

    charge: Charge
    started: float
    attempt: int


def _after(row: BudgetRow, held: dict[int, Counter[Atom]], atoms: Counter[Atom]) -> Composition:
    """A budget's composition with its live reservations and a candidate charge composed in."""
    mine = held.get(row.id)
    if not mine:  # the usual case: no reservation holds this budget
        return row.comp.add(atoms)
    extra = Counter(mine)
    extra.update(atoms)
    return row.comp.add(extra)


def _exhausted(row: BudgetRow, projected: BudgetStatus, current: BudgetStatus) -> BudgetExhausted:
    """The refusal of a charge that would take ``row`` past its limit, with what remains."""
    details = {
        **scope_key_details(row.budget.scope),
        "remaining_epsilon": f"{current.remaining_epsilon:.6g}",
        "limit_epsilon": row.budget.epsilon,
        "projected_epsilon": f"{projected.epsilon_enforced:.6g}",
    }
    return BudgetExhausted(f"charge exceeds the {projected.scope.kind} budget", details=details)


def _authorize(caller_tenant: str, tenant_id: str) -> None:
    if caller_tenant != tenant_id:
        raise PermissionDenied("charge or scope belongs to another tenant")
