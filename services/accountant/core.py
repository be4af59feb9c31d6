"""What the ledger's parts share: one transaction factory, and the decision of a charge.

:class:`Core` is held by every part of :class:`services.accountant.ledger.Ledger` (budgets,
spends, reservations, audit). It owns the transactions — on SQLite this process's writers
queue on one lock — and decides a charge against budget rows read or locked by its caller:
the verdict (accept with the projected statuses, or BudgetExhausted), the projection of a
dry run, and the tight figures a write may not compute under its lock (computed outside,
memoised, then the write runs again).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, select

from services.accountant.accounting import Atom, Composition, atoms_of
from services.accountant.events import Budget, BudgetStatus, Charge, Receipt, Scope
from services.accountant.limits import Limits, check_scope
from services.accountant.metrics import AccountantMetrics
from services.accountant.policy import Policy, TightNeeded
from services.accountant.rows import (
    BudgetRow,
    find_budgets,
    live_reservation_atoms,
    not_found,
    scope_key_details,
    subject_default,
)
from services.accountant.schema import events
from services.common.db import transaction
from services.common.errors import AlreadyExists, BudgetExhausted, PermissionDenied, VeilError

T = TypeVar("T")
WARM_ATTEMPTS = 3
"""Write attempts that may not compute a tight figure under their lock (each failed one
warms the memo outside it) before one that may."""


class Core:
    """Transactions, clock, policy, limits and metrics, and the decisions every write makes."""

    def __init__(
        self,
        engine: Engine,
        *,
        policy: Policy,
        limits: Limits,
        clock: Callable[[], float],
        metrics: AccountantMetrics | None,
    ) -> None:
        self.engine = engine
        self._writer = threading.Lock() if engine.dialect.name == "sqlite" else None
        """SQLite has one writer at a time: this process's writers queue here, on a lock,
        rather than in SQLite's busy handler, which sleeps with backoff (up to 100 ms a
        try) and made p99 under 32 clients 80× p99 under one."""
        self.policy, self.limits, self.clock, self.metrics = policy, limits, clock, metrics

    @contextmanager
    def tx(self, *, readonly: bool = False) -> Iterator[Connection]:
        """One transaction (a write one holds SQLite's writer lock, see :attr:`_writer`)."""
        if readonly or self._writer is None:
            with transaction(self.engine, readonly=readonly) as conn:
                yield conn
            return
        with self._writer, transaction(self.engine) as conn:
            yield conn

    # -- deciding ------------------------------------------------------------------------
    def dry_rows(self, conn: Connection, charge: Charge) -> list[BudgetRow]:
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

    def decide(
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
        return self.verdict(rows, held, atoms_of(charge), allow_tight)

    def verdict(
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

    def project(
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

    def outside_lock_first(self, attempt: Callable[[bool], T], charge: Charge) -> T:
        """Run a write ``attempt`` that may not compute tight figures under its lock; if it
        needs one, compute it in a read-only transaction (memoised by content) and retry,
        now allowed (the figure is a cache hit unless the budget changed in between)."""
        for _ in range(WARM_ATTEMPTS):
            try:
                return attempt(False)
            except TightNeeded:
                with suppress(VeilError):
                    self.warm(charge)
        return attempt(True)  # the budgets kept changing: compute under the lock

    def warm(self, charge: Charge) -> None:
        """The decision a spend of ``charge`` is about to make, in a read-only transaction:
        its tight figures are then memoised (BudgetExhausted, if any, is the spend's to say)."""
        with self.tx(readonly=True) as conn:
            rows = self.dry_rows(conn, charge)
            ids = [r.id for r in rows]
            held = live_reservation_atoms(conn, charge.tenant_id, ids, self.clock())
        self.verdict(rows, held, atoms_of(charge), allow_tight=True)

    # -- metrics -------------------------------------------------------------------------
    def record(self, receipt: Receipt, started: float, kind: str) -> None:
        """Count a committed spend (not a replay) with its dataset ε and its latency."""
        if self.metrics is None or receipt.replayed:
            return
        dataset = next((s for s in receipt.statuses if s.scope.kind == "dataset"), None)
        eps = dataset.epsilon_enforced if dataset else 0.0
        self.metrics.spent(kind, receipt.charge.dataset_id, eps, time.perf_counter() - started)

    def refused(self, reason: str) -> None:
        if self.metrics:
            self.metrics.refused(reason)


def authorize(caller_tenant: str, tenant_id: str) -> None:
    """A charge or scope of another tenant is PermissionDenied."""
    if caller_tenant != tenant_id:
        raise PermissionDenied("charge or scope belongs to another tenant")


def own(caller_tenant: str, scope: Scope, limits: Limits) -> None:
    """A read of another tenant's scope is PermissionDenied; a malformed scope is refused."""
    if caller_tenant != scope.tenant_id:
        raise PermissionDenied("scope belongs to another tenant")
    check_scope(scope, limits)


def event_by_key(conn: Connection, charge: Charge) -> Any:
    """The stored event under the charge's tenant and idempotency key, or None."""
    q = select(events).where(
        events.c.tenant_id == charge.tenant_id,
        events.c.idempotency_key == charge.idempotency_key,
    )
    return conn.execute(q).first()


def replay_or_conflict(row: Any, charge: Charge) -> Receipt:
    """The stored event ``row``'s receipt, ``replayed``, if it is of the same charge; else
    AlreadyExists (the key was used for another charge)."""
    original = Charge.from_json(json.loads(row.charge))
    if not original.same_charge(charge):
        raise AlreadyExists(
            "idempotency key already used for a different charge",
            details={"idempotency_key": charge.idempotency_key},
        )
    return Receipt(row.spend_id, original, row.committed_at, (), replayed=True)


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
