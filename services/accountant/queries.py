"""Read side of the ledger: remaining budget, history pages, verification, audit/replay.

:class:`LedgerQueries` is held by :class:`services.accountant.ledger.Ledger` (composition:
it gets the ledger's transaction factory, clock, policy and limits, and never writes), so
the write path reads on its own.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, select

from services.accountant.accounting import Atom, Composition, Figures, atoms_of
from services.accountant.events import (
    BudgetStatus,
    Charge,
    Scope,
    SubjectDefault,
)
from services.accountant.limits import Limits, check_scope, check_text
from services.accountant.policy import NOT_COMPUTED, Policy, charge_cost
from services.accountant.rows import (
    BudgetRow,
    StoredTight,
    live_reservation_atoms,
    load_budgets,
    row_to_budget,
    store_tight,
    stored_tight,
    subject_defaults_of,
)
from services.accountant.schema import budgets, event_budgets, events, subject_defaults
from services.common.errors import InvalidArgument, PermissionDenied, Unavailable


@dataclass(frozen=True)
class EventRecord:
    """One committed event as the history shows it."""

    spend_id: str
    charge: Charge
    committed_at: float
    cost: Figures
    """The charge's own ε at the δ of the budget the history is about."""


@dataclass(frozen=True)
class HistoryPage:
    """A page of history; pass ``next_page_token`` back for the next ('' = last page)."""

    events: tuple[EventRecord, ...]
    next_page_token: str
    delta: float
    """δ of the budget the page is about (the δ its events' costs are quoted at)."""


@dataclass(frozen=True)
class BudgetPage:
    """A page of budget statuses; pass ``next_page_token`` back for the next ('' = last)."""

    budgets: tuple[BudgetStatus, ...]
    next_page_token: str


@dataclass(frozen=True)
class VerifyReport:
    """Running state vs a full recomputation from the event log."""

    scope: Scope
    ok: bool
    event_count: int
    max_abs_rdp_diff: float
    atoms_equal: bool


class LedgerQueries:
    """Queries over the ledger's tables; every one is scoped to the caller's tenant."""

    def __init__(
        self,
        tx: Callable[..., AbstractContextManager[Connection]],
        clock: Callable[[], float],
        policy: Policy,
        limits: Limits,
    ) -> None:
        self._tx, self._now, self.policy, self.limits = tx, clock, policy, limits

    def remaining(self, caller_tenant: str, scope: Scope) -> BudgetStatus:
        """Committed figures of one budget, RDP and tight; ``epsilon_reserved`` says how
        much live reservations would add to the enforced figure."""
        _own(caller_tenant, scope, self.limits)
        with self._tx(readonly=True) as conn:
            row = load_budgets(conn, [scope], lock=False)[0]
            held = live_reservation_atoms(conn, scope.tenant_id, [row.id], self._now())
            defaults = subject_defaults_of(conn, [row.id])
            stored = stored_tight(conn, [row.id])
        return self._statuses([row], held, defaults, stored)[0]

    def list_budgets(
        self,
        caller_tenant: str,
        tenant_id: str,
        *,
        dataset_id: str | None = None,
        page_size: int = 50,
        page_token: str = "",
    ) -> BudgetPage:
        """The tenant's budgets (optionally one dataset's and its subjects'), by creation."""
        _own(caller_tenant, Scope(tenant_id), self.limits)
        check_text("dataset_id", dataset_id or "", self.limits.max_id_bytes)
        _check_page_size(page_size)
        after = _decode_token(page_token, newest_first=False)
        q = select(budgets).where(budgets.c.tenant_id == tenant_id)
        if dataset_id:
            q = q.where(budgets.c.dataset_id == dataset_id)
        if after is not None:
            q = q.where(budgets.c.id > after)
        with self._tx(readonly=True) as conn:
            rows = [
                row_to_budget(r)
                for r in conn.execute(q.order_by(budgets.c.id).limit(page_size + 1))
            ]
            page = rows[:page_size]
            ids = [r.id for r in page]
            held = live_reservation_atoms(conn, tenant_id, ids, self._now())
            defaults = subject_defaults_of(conn, ids)
            stored = stored_tight(conn, ids)
        token = _encode_token(page[-1].id, False) if len(rows) > page_size else ""
        return BudgetPage(self._statuses(page, held, defaults, stored), token)

    def _statuses(
        self,
        rows: list[BudgetRow],
        held: dict[int, Counter[Atom]],
        defaults: dict[int, SubjectDefault],
        stored: dict[int, StoredTight],
    ) -> tuple[BudgetStatus, ...]:
        """Committed figures of ``rows``, the tight one from the store where it is current;
        the ones computed now are stored, so each budget version computes it once."""
        name = self.policy.reported_tight
        out, fresh = [], {}
        for row in rows:
            version, accountant, delta, epsilon = stored.get(row.id, (-1, "", 0.0, None))
            current = (version, accountant, delta) == (row.version, name, row.budget.delta)
            known = (epsilon,) if current else None
            status = self.policy.status(
                row.budget, row.comp, row.version, want_tight=True, known_tight=known
            )
            if not current and status.tight_state != NOT_COMPUTED:
                fresh[row.id] = (row.version, name, row.budget.delta, status.epsilon_tight)
            reserved = 0.0
            if +held[row.id]:
                with_held = self.policy.status(row.budget, row.comp.add(held[row.id]), row.version)
                reserved = max(0.0, with_held.epsilon_enforced - status.epsilon_enforced)
            out.append(
                replace(
                    status,
                    event_count=row.event_count,
                    epsilon_reserved=reserved,
                    subject_default=defaults.get(row.id),
                )
            )
        if fresh:
            with suppress(Unavailable), self._tx() as conn:
                for budget_id, figure in fresh.items():
                    store_tight(conn, budget_id, figure)
        return tuple(out)

    def history(
        self,
        caller_tenant: str,
        scope: Scope,
        *,
        page_size: int = 50,
        page_token: str = "",
        newest_first: bool = False,
        since: float | None = None,
        until: float | None = None,
    ) -> HistoryPage:
        """Events charged to ``scope``: oldest first (the contract) unless ``newest_first``.

        The token is opaque (base64 JSON of the last event id and the direction); a token
        used with the other direction is InvalidArgument. ``since`` (inclusive) and
        ``until`` (exclusive) bound the commit time, in unix seconds.
        """
        _own(caller_tenant, scope, self.limits)
        _check_page_size(page_size)
        after = _decode_token(page_token, newest_first)
        with self._tx(readonly=True) as conn:
            budget_row = load_budgets(conn, [scope], lock=False)[0]
            bid = budget_row.id
            q = (
                select(events)
                .join(event_budgets, event_budgets.c.event_id == events.c.id)
                .where(event_budgets.c.budget_id == bid)
                .limit(page_size + 1)
            )
            if after is not None:
                q = q.where(events.c.id < after if newest_first else events.c.id > after)
            if since is not None:
                q = q.where(events.c.committed_at >= since)
            if until is not None:
                q = q.where(events.c.committed_at < until)
            q = q.order_by(events.c.id.desc() if newest_first else events.c.id)
            rows = conn.execute(q).all()
        more = len(rows) > page_size
        rows = rows[:page_size]
        token = _encode_token(rows[-1].id, newest_first) if more else ""
        delta = budget_row.budget.delta
        return HistoryPage(tuple(_record(r, delta) for r in rows), token, delta)

    def verify(self, caller_tenant: str, scope: Scope) -> VerifyReport:
        """Recompute a budget's composition from its full event log and compare."""
        _own(caller_tenant, scope, self.limits)
        with self._tx(readonly=True) as conn:
            row = load_budgets(conn, [scope], lock=False)[0]
            q = (
                select(events.c.charge, func.count())
                .join(event_budgets, event_budgets.c.event_id == events.c.id)
                .where(event_budgets.c.budget_id == row.id)
                .group_by(events.c.charge)
            )
            groups = conn.execute(q).all()
        total: Counter[Atom] = Counter()
        for text, n in groups:
            for atom, k in atoms_of(Charge.from_json(json.loads(text))).items():
                total[atom] += k * n
        fresh = Composition().add(total)
        diff = float(np.max(np.abs(fresh.rdp - row.comp.rdp))) if len(fresh.rdp) else 0.0
        close = bool(np.allclose(fresh.rdp, row.comp.rdp, rtol=1e-7, atol=1e-9))
        same = +total == +row.comp.atoms
        count = sum(n for _, n in groups)
        ok = close and same and count == row.event_count
        return VerifyReport(scope, ok, count, diff, same)

    def verify_all(self, tenant_id: str | None = None) -> Iterator[VerifyReport]:
        """:meth:`verify` for every budget (of one tenant, or of all): the operator's check."""
        with self._tx(readonly=True) as conn:
            q = select(budgets.c.tenant_id, budgets.c.dataset_id, budgets.c.subject_id)
            if tenant_id is not None:
                q = q.where(budgets.c.tenant_id == tenant_id)
            keys = conn.execute(q.order_by(budgets.c.id)).all()
        for t, d, s in keys:
            yield self.verify(t, Scope(t, d or None, s or None))

    def is_empty(self) -> bool:
        """True if the ledger holds no budget (a replay target must be empty)."""
        with self._tx(readonly=True) as conn:
            return conn.execute(select(budgets.c.id).limit(1)).first() is None

    def export_audit(
        self, tenant_id: str | None = None, since: float | None = None
    ) -> Iterator[str]:
        """JSON lines: every budget, then every event in commit order (operator use).

        ``replay`` of these lines into an empty ledger rebuilds the same state. ``since``
        (unix seconds, inclusive) keeps only events committed from then on (filtered in
        SQL); budgets are always all listed.
        """
        with self._tx(readonly=True) as conn:
            q = select(budgets, subject_defaults.c.epsilon.label("default_epsilon"))
            q = q.add_columns(subject_defaults.c.delta.label("default_delta"))
            q = q.outerjoin(subject_defaults, subject_defaults.c.budget_id == budgets.c.id)
            q = q.order_by(budgets.c.id)
            if tenant_id is not None:
                q = q.where(budgets.c.tenant_id == tenant_id)
            for r in conn.execute(q):
                b = row_to_budget(r).budget
                line: dict[str, Any] = {
                    "type": "budget",
                    "scope": b.scope.to_json(),
                    "epsilon": b.epsilon,
                    "delta": b.delta,
                }
                if r.default_epsilon is not None:
                    line["subject_default"] = {
                        "epsilon": r.default_epsilon,
                        "delta": r.default_delta,
                    }
                yield json.dumps(line)
            eq = select(events).order_by(events.c.id)
            if tenant_id is not None:
                eq = eq.where(events.c.tenant_id == tenant_id)
            if since is not None:
                eq = eq.where(events.c.committed_at >= since)
            for e in conn.execution_options(yield_per=1000).execute(eq):
                yield json.dumps(
                    {
                        "type": "event",
                        "spend_id": e.spend_id,
                        "committed_at": e.committed_at,
                        "charge": json.loads(e.charge),
                    }
                )


def _check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= 1000:
        raise InvalidArgument("page_size must be in [1, 1000]")


def _own(caller_tenant: str, scope: Scope, limits: Limits) -> None:
    if caller_tenant != scope.tenant_id:
        raise PermissionDenied("scope belongs to another tenant")
    check_scope(scope, limits)


def _record(row: Any, delta: float) -> EventRecord:
    """An event with its cost quoted at ``delta`` (the stored cost used the smallest δ of
    the budgets it touched, which need not be this one)."""
    charge = Charge.from_json(json.loads(row.charge))
    return EventRecord(row.spend_id, charge, row.committed_at, charge_cost(charge, delta))


def _encode_token(last_id: int, newest_first: bool) -> str:
    raw = json.dumps({"after": last_id, "desc": newest_first}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str, newest_first: bool) -> int | None:
    if not token:
        return None
    bad = InvalidArgument("malformed page_token", details={"field": "page.page_token"})
    if len(token) > 256:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after, desc = data["after"], data["desc"]
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise bad from None
    # Only what _encode_token writes: a row id (a signed 64-bit integer) and a bool.
    if type(after) is not int or not 0 <= after < 2**63 or type(desc) is not bool:
        raise bad
    if desc != newest_first:
        raise InvalidArgument(
            "page_token was issued for the other order", details={"field": "page.page_token"}
        )
    return after
