"""The privacy ledger: budgets, atomic idempotent spends and reservations (no transport).

Every write runs in one transaction that first locks the budgets it touches (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: ``SELECT … FOR UPDATE`` in id order), then reads the
idempotency key, the live reservations and the running compositions, decides, and writes
the event, its budget links and the new running state together — or nothing. The cost of
a spend is independent of the number of past events: it touches one row per budget.

Every method takes the caller's tenant explicitly; a charge for another tenant is
PermissionDenied, and another tenant's reservation is NotFound (its existence is private).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from services.accountant.accounting import Atom, Composition, atoms_of, charge_epsilon
from services.accountant.events import Budget, BudgetStatus, Charge, Receipt, Reservation
from services.accountant.metrics import AccountantMetrics
from services.accountant.policy import Policy
from services.accountant.queries import LedgerQueries
from services.accountant.rows import (
    BudgetRow,
    atoms_to_json,
    dumps,
    live_reservation_atoms,
    load_budgets,
    scope_key,
    scope_key_details,
)
from services.accountant.schema import (
    budgets,
    event_budgets,
    events,
    metadata,
    reservations,
)
from services.accountant.settings import AccountantSettings
from services.common.db import create_schema, make_engine, transaction
from services.common.errors import (
    AlreadyExists,
    BudgetExhausted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)


class Ledger(LedgerQueries):
    """Transport-free core of the accountant over SQLite or PostgreSQL."""

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
    ) -> None:
        self._engine = engine or make_engine(url)
        self.policy = policy or Policy()
        self.default_lease_s, self.max_lease_s = default_lease_s, max_lease_s
        self._clock, self._metrics = clock, metrics

    @classmethod
    def from_settings(
        cls, settings: AccountantSettings, *, metrics: AccountantMetrics | None = None
    ) -> Ledger:
        policy = Policy(tight=settings.tight_accountant, enforce_with=settings.enforce_with)
        return cls(
            settings.database_url,
            policy=policy,
            metrics=metrics,
            default_lease_s=settings.default_lease_s,
            max_lease_s=settings.max_lease_s,
        )

    def _now(self) -> float:
        return self._clock()

    def create_schema(self) -> None:
        """Create the tables if missing (idempotent)."""
        create_schema(self._engine, metadata)

    def ping(self) -> bool:
        """True if the database answers (the server's readiness check)."""
        with self._tx(readonly=True) as conn:  # a plain BEGIN: no write lock for a ping
            return bool(conn.execute(text("SELECT 1")).scalar_one() == 1)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _tx(self, *, readonly: bool = False) -> Iterator[Connection]:
        with transaction(self._engine, readonly=readonly) as conn:
            yield conn

    # -- budgets -------------------------------------------------------------------------
    def put_budget(self, caller_tenant: str, budget: Budget) -> BudgetStatus:
        """Create a budget, or change the limits of an existing one (its spends stay)."""
        _authorize(caller_tenant, budget.scope.tenant_id)
        t, d, s = scope_key(budget.scope)
        with self._tx() as conn:
            rows = (
                load_budgets(conn, [budget.scope], lock=True) if self._exists(conn, t, d, s) else []
            )
            if rows:
                conn.execute(
                    update(budgets)
                    .where(budgets.c.id == rows[0].id)
                    .values(
                        epsilon=budget.epsilon,
                        delta=budget.delta,
                        version=rows[0].version + 1,
                        updated_at=self._clock(),
                    )
                )
                comp, version, count = rows[0].comp, rows[0].version + 1, rows[0].event_count
            else:
                comp, version, count = Composition(), 0, 0
                conn.execute(
                    insert(budgets).values(
                        tenant_id=t,
                        dataset_id=d,
                        subject_id=s,
                        epsilon=budget.epsilon,
                        delta=budget.delta,
                        version=0,
                        event_count=0,
                        rdp=dumps(comp.rdp.tolist()),
                        atoms=atoms_to_json(comp.atoms),
                        updated_at=self._clock(),
                    )
                )
        return replace(self.policy.status(budget, comp, version), event_count=count)

    @staticmethod
    def _exists(conn: Connection, t: str, d: str, s: str) -> bool:
        q = select(budgets.c.id).where(
            budgets.c.tenant_id == t, budgets.c.dataset_id == d, budgets.c.subject_id == s
        )
        return conn.execute(q).first() is not None

    # -- spends --------------------------------------------------------------------------
    def check(
        self, caller_tenant: str, charge: Charge, *, tight: bool = False
    ) -> tuple[BudgetStatus, ...]:
        """Dry run: projected status of every budget the charge touches. Writes nothing.

        Live reservations count. ``tight=True`` also computes the tight figure everywhere.
        """
        _authorize(caller_tenant, charge.tenant_id)
        with self._tx(readonly=True) as conn:
            rows = load_budgets(conn, charge.scopes, lock=False)
            held = live_reservation_atoms(
                conn, charge.tenant_id, [r.id for r in rows], self._clock()
            )
            return self._project(rows, held, atoms_of(charge), want_tight=tight)

    def spend(self, caller_tenant: str, charge: Charge) -> Receipt:
        """Commit a charge atomically on all its budgets, or raise and write nothing.

        Same idempotency key and same charge → the original receipt with ``replayed=True``;
        same key, other charge → AlreadyExists; a budget too small → BudgetExhausted.
        """
        _authorize(caller_tenant, charge.tenant_id)
        started = time.perf_counter()
        try:
            with self._tx() as conn:
                receipt = self._spend_in(conn, charge, enforce=True, exclude=None)
        except IntegrityError as exc:
            receipt = self._replay_after_race(charge, exc)
        except BudgetExhausted:
            self._refused("budget_exhausted")
            raise
        self._record(receipt, started, "spend")
        return receipt

    def reserve(
        self, caller_tenant: str, charge: Charge, lease_s: float | None = None
    ) -> Reservation:
        """Hold budget for ``charge`` until the lease ends; it counts against every budget."""
        _authorize(caller_tenant, charge.tenant_id)
        lease = self.default_lease_s if lease_s is None else lease_s
        if not 0 < lease <= self.max_lease_s:
            raise InvalidArgument(f"lease_s must be in (0, {self.max_lease_s}]")
        now = self._clock()
        with self._tx() as conn:
            self._sweep(conn, charge.tenant_id, now)
            rows = load_budgets(conn, charge.scopes, lock=True)
            if self._event_by_key(conn, charge) is not None:
                raise AlreadyExists("a spend with this idempotency key is already committed")
            try:
                statuses = self._decide(conn, rows, charge, now, exclude=None)
            except BudgetExhausted:
                self._refused("budget_exhausted")
                raise
            rid = uuid.uuid4().hex
            conn.execute(
                insert(reservations).values(
                    id=rid,
                    tenant_id=charge.tenant_id,
                    charge=dumps(charge.to_json()),
                    budget_ids=dumps([r.id for r in rows]),
                    status="live",
                    expires_at=now + lease,
                )
            )
        self._gauge_outstanding()
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
        self._gauge_outstanding()
        return receipt

    def release(self, caller_tenant: str, reservation_id: str) -> None:
        """Give a reservation's budget back. Idempotent; a committed one is FailedPrecondition."""
        with self._tx() as conn:
            row = self._reservation(conn, caller_tenant, reservation_id)
            if row.status == "committed":
                raise FailedPrecondition("reservation already committed")
            if row.status == "live":
                conn.execute(
                    update(reservations)
                    .where(reservations.c.id == reservation_id)
                    .values(status="released")
                )
        self._gauge_outstanding()

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
    ) -> Receipt:
        rows = load_budgets(conn, charge.scopes, lock=True)
        if (existing := self._event_by_key(conn, charge)) is not None:
            return self._replay_or_conflict(existing, charge)
        now = self._clock() if committed_at is None else committed_at
        if enforce:
            statuses = self._decide(conn, rows, charge, now, exclude=exclude)
        else:
            statuses = self._project(rows, {}, atoms_of(charge), want_tight=False)
        atoms = atoms_of(charge)
        cost = charge_epsilon(charge, min(r.budget.delta for r in rows))
        spend_id = spend_id or uuid.uuid4().hex
        event_id = conn.execute(
            insert(events)
            .values(
                spend_id=spend_id,
                tenant_id=charge.tenant_id,
                idempotency_key=charge.idempotency_key,
                charge=dumps(charge.to_json()),
                cost_epsilon=cost,
                committed_at=now,
            )
            .returning(events.c.id)
        ).scalar_one()
        conn.execute(
            insert(event_budgets), [{"event_id": event_id, "budget_id": r.id} for r in rows]
        )
        for r in rows:
            comp = r.comp.add(atoms)
            conn.execute(
                update(budgets)
                .where(budgets.c.id == r.id)
                .values(
                    rdp=dumps(comp.rdp.tolist()),
                    atoms=atoms_to_json(comp.atoms),
                    version=r.version + 1,
                    event_count=r.event_count + 1,
                    updated_at=now,
                )
            )
        return Receipt(spend_id, charge, now, statuses)

    def _decide(
        self,
        conn: Connection,
        rows: list[BudgetRow],
        charge: Charge,
        now: float,
        exclude: str | None,
    ) -> tuple[BudgetStatus, ...]:
        """Projected statuses, or BudgetExhausted naming the first budget that overflows."""
        held = live_reservation_atoms(conn, charge.tenant_id, [r.id for r in rows], now, exclude)
        statuses = self._project(rows, held, atoms_of(charge), want_tight=False)
        for row, status in zip(rows, statuses, strict=True):
            if status.exceeds:
                current = self.policy.status(row.budget, row.comp.add(held[row.id]), row.version)
                details = {
                    **scope_key_details(row.budget.scope),
                    "remaining_epsilon": f"{current.remaining_epsilon:.6g}",
                    "limit_epsilon": row.budget.epsilon,
                    "projected_epsilon": f"{status.epsilon_enforced:.6g}",
                }
                raise BudgetExhausted(
                    f"charge exceeds the {status.scope.kind} budget", details=details
                )
        return statuses

    def _project(
        self,
        rows: list[BudgetRow],
        held: dict[int, Counter[Atom]],
        atoms: Counter[Atom],
        *,
        want_tight: bool,
    ) -> tuple[BudgetStatus, ...]:
        out = []
        for r in rows:
            extra = Counter(held.get(r.id, Counter()))
            extra.update(atoms)
            status = self.policy.status(
                r.budget, r.comp.add(extra), r.version, want_tight=want_tight
            )
            out.append(replace(status, event_count=r.event_count + 1))
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

    def _gauge_outstanding(self) -> None:
        if self._metrics is None:
            return
        with self._tx(readonly=True) as conn:
            n = conn.execute(
                select(func.count())
                .select_from(reservations)
                .where(reservations.c.status == "live", reservations.c.expires_at > self._clock())
            ).scalar_one()
        self._metrics.reservations_outstanding.set(n)

    def _record(self, receipt: Receipt, started: float, kind: str) -> None:
        if self._metrics is None or receipt.replayed:
            return
        dataset = next((s for s in receipt.statuses if s.scope.kind == "dataset"), None)
        eps = dataset.epsilon_enforced if dataset else 0.0
        self._metrics.spent(kind, receipt.charge.dataset_id, eps, time.perf_counter() - started)

    def _refused(self, reason: str) -> None:
        if self._metrics:
            self._metrics.refused(reason)


def _authorize(caller_tenant: str, tenant_id: str) -> None:
    if caller_tenant != tenant_id:
        raise PermissionDenied("charge or scope belongs to another tenant")
