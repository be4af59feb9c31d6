"""Spends: the dry run, the atomic idempotent spend and its group commit (no transport).

A spend runs in one transaction that first locks the budgets it touches (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT … FOR UPDATE`` in id order), then reads the
idempotency key, the live reservations and the running compositions, decides, and writes
the event, its budget links and the new running state together — or nothing. The cost of
a spend is independent of the number of past events: it touches one row per budget.
Concurrent spends share that transaction: one writer thread decides the spends waiting
together in order and commits them at once (group commit, :mod:`services.accountant.group`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from services.accountant import batch
from services.accountant.accounting import Atom, atoms_of
from services.accountant.core import (
    WARM_ATTEMPTS,
    Core,
    authorize,
    event_by_key,
    replay_or_conflict,
)
from services.accountant.events import BudgetStatus, Charge, Receipt, Scope
from services.accountant.group import GroupWriter, Ticket, settle
from services.accountant.limits import check_charge
from services.accountant.policy import TightNeeded, charge_cost
from services.accountant.rows import (
    charge_budgets,
    drop_budgets,
    dumps,
    live_reservation_atoms,
    not_found,
)
from services.common.errors import BudgetExhausted, Unavailable, VeilError

ALONE = object()
"""A group's verdict on a spend whose group's transaction failed on a conflict (e.g. a key
another replica stored meanwhile): the spend runs again on its own."""
WARM = object()
"""A group's verdict on a spend whose decision needs a tight figure that it may not compute
under the lock: it is computed outside (memoised) and the spend queued again."""


class Spends:
    """Check and spend; every one takes the caller's tenant (another's is PermissionDenied)."""

    def __init__(self, core: Core, *, group_max: int = 64, spend_queue: int = 1024) -> None:
        self._core = core
        self._group: GroupWriter[_Spend] = GroupWriter(
            self._spend_group,
            max_items=group_max,
            max_weight=max(group_max, core.limits.max_subjects + 2),
            max_queued=spend_queue,
        )
        """Group commit of spends (:mod:`services.accountant.group`)."""
        self._alone: ThreadPoolExecutor | None = None
        """Where a spend that its group handed back runs on its own (started on need)."""
        self._alone_lock = threading.Lock()

    @property
    def queued(self) -> int:
        """Spends waiting for the writer thread."""
        return self._group.queued

    def close(self) -> None:
        """Decide the queued spends, then stop the writer and the spends run alone."""
        self._group.close()
        with self._alone_lock:
            alone, self._alone = self._alone, None
        if alone is not None:
            alone.shutdown(wait=True)

    def check(
        self, caller_tenant: str, charge: Charge, *, tight: bool = False
    ) -> tuple[BudgetStatus, ...]:
        """Dry run: projected status of every budget the charge touches. Writes nothing.

        Live reservations count. ``tight=True`` also computes the tight figure everywhere.
        """
        core = self._core
        authorize(caller_tenant, charge.tenant_id)
        check_charge(charge, core.limits)
        with core.tx(readonly=True) as conn:
            rows = core.dry_rows(conn, charge)
            held = live_reservation_atoms(
                conn, charge.tenant_id, [r.id for r in rows], core.clock()
            )
        return core.project(rows, held, atoms_of(charge), want_tight=tight)

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
        authorize(caller_tenant, charge.tenant_id)
        check_charge(charge, self._core.limits)
        spend = _Spend(charge, time.perf_counter(), 0)
        return self._group.submit(spend, weight=len(charge.scopes))

    def spend_in(
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
        """Spend ``charge`` in the caller's transaction ``conn``: decided against the
        budgets (``enforce``; a reservation ``exclude`` not counting), or only stored (a
        reservation's commit, a replayed export keeping its ``spend_id`` and time)."""
        core = self._core
        now = core.clock() if committed_at is None else committed_at
        rows, _ = charge_budgets(conn, charge, now, create=enforce)
        if (existing := event_by_key(conn, charge)) is not None:
            return replay_or_conflict(existing, charge)
        if enforce:
            statuses = core.decide(
                conn, rows, charge, now, exclude=exclude, allow_tight=allow_tight
            )
        else:
            statuses = core.project(rows, {}, atoms_of(charge), want_tight=False)
        cost = charge_cost(charge, min(r.budget.delta for r in rows)).epsilon
        item = batch.Pending(charge, [r.id for r in rows], cost, spend_id or uuid.uuid4().hex)
        running = [batch.Running(r, r.comp, r.event_count) for r in rows]
        batch.accept(running, atoms_of(charge))
        batch.write(conn, [item], running, now)
        return Receipt(item.spend_id, charge, now, statuses)

    # -- the group commit ----------------------------------------------------------------
    def _spend_group(self, tickets: list[Ticket[_Spend]]) -> None:
        """The writer's work: decide and commit one group, then answer each caller."""
        core = self._core
        if core.metrics is not None:
            core.metrics.spend_group_size.observe(len(tickets))
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
                core.record(outcome, ticket.item.started, "spend")
            elif isinstance(outcome, BudgetExhausted):
                core.refused("budget_exhausted")
            settle(ticket, outcome)

    def _hand_back(self, ticket: Ticket[_Spend], *, warm: bool) -> None:
        """Off the writer thread: ``warm``, compute the tight figure the spend's decision
        needs (outside any lock, memoised) and queue it again, allowed to compute it under
        the lock after :data:`WARM_ATTEMPTS` (as :meth:`Core.outside_lock_first`); else run
        the spend on its own."""
        spend = ticket.item

        def again() -> None:
            try:
                if not warm:
                    settle(ticket, self._spend_alone(spend.charge, spend.started))
                    return
                with suppress(VeilError):
                    self._core.warm(spend.charge)
                retry = replace(spend, attempt=spend.attempt + 1)
                future = self._group.submit(retry, weight=ticket.weight)
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
        core = self._core
        try:
            receipt = core.outside_lock_first(lambda allow: self._spend_once(charge, allow), charge)
        except IntegrityError as exc:
            receipt = self._replay_after_race(charge, exc)
        except BudgetExhausted:
            core.refused("budget_exhausted")
            raise
        core.record(receipt, started, "spend")
        return receipt

    def _spend_once(self, charge: Charge, allow_tight: bool) -> Receipt:
        with self._core.tx() as conn:
            return self.spend_in(conn, charge, enforce=True, exclude=None, allow_tight=allow_tight)

    def _replay_after_race(self, charge: Charge, exc: IntegrityError) -> Receipt:
        """A concurrent spend won the unique key between our read and insert (PostgreSQL)."""
        with self._core.tx(readonly=True) as conn:
            row = event_by_key(conn, charge)
        if row is None:
            raise exc
        return replay_or_conflict(row, charge)

    def _decide_group(self, spends: list[_Spend]) -> list[Any]:
        """Decide ``spends`` in order in one transaction and commit the accepted ones;
        each outcome is a Receipt, the spend's VeilError, or :data:`WARM`."""
        charges = [s.charge for s in spends]
        now = self._core.clock()
        with self._core.tx() as conn:
            scopes = {s for c in charges for s in c.scopes}
            found, created = batch.lock_creating(conn, scopes, now)
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
        """Decide one spend of a group against the running state, as :meth:`spend_in`
        would (missing budget, then replay, then the verdict), and queue its write."""
        charge = spend.charge
        missing = [s for s in charge.scopes if s not in by_scope]
        if missing:
            return not_found(missing[0])
        key = (charge.tenant_id, charge.idempotency_key)
        try:
            if (existing := done.get(key)) is not None:
                return replay_or_conflict(existing, charge)
            running = sorted((by_scope[s] for s in charge.scopes), key=lambda r: r.row.id)
            atoms = atoms_of(charge)
            allow = spend.attempt >= WARM_ATTEMPTS
            rows = [r.now() for r in running]
            statuses = self._core.verdict(rows, held, atoms, allow_tight=allow)
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


@dataclass(frozen=True)
class _Spend:
    """A queued spend: its charge, when it was asked for (latency metric) and how many times
    it was queued again to compute a tight figure first."""

    charge: Charge
    started: float
    attempt: int
