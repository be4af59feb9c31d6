"""Budgets: their limits written, their committed figures read (one or a page).

A budget is created or changed in one transaction that locks its row; its running
composition and its spends stay. A read reports the committed figures, RDP and tight (the
tight one stored per budget version, so each version computes it once), and how much the
live reservations would add.
"""

from __future__ import annotations

from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, replace

from sqlalchemy import insert, select, update

from services.accountant.accounting import Atom, Composition
from services.accountant.core import Core, authorize, own
from services.accountant.events import Budget, BudgetStatus, Scope, SubjectDefault
from services.accountant.limits import check_delta, check_scope, check_text
from services.accountant.pages import check_page_size, decode_token, encode_token
from services.accountant.policy import NOT_COMPUTED
from services.accountant.rows import (
    BudgetRow,
    StoredTight,
    atoms_to_json,
    curve_text,
    find_budgets,
    live_reservation_atoms,
    load_budgets,
    put_subject_default,
    row_to_budget,
    scope_key,
    store_tight,
    stored_tight,
    subject_defaults_of,
)
from services.accountant.schema import budgets
from services.common.errors import Unavailable


@dataclass(frozen=True)
class BudgetPage:
    """A page of budget statuses; pass ``next_page_token`` back for the next ('' = last)."""

    budgets: tuple[BudgetStatus, ...]
    next_page_token: str


class Budgets:
    """Put and read budgets; every call is scoped to the caller's tenant."""

    def __init__(self, core: Core, max_delta: float = 1e-5) -> None:
        self._core = core
        self.max_delta = max_delta
        """The largest δ :meth:`put` accepts for a budget or a subject default."""

    def put(self, caller_tenant: str, budget: Budget) -> BudgetStatus:
        """Create a budget, or change the limits of an existing one (its spends stay). A
        dataset budget's ``subject_default`` is replaced too (None removes it). A δ above
        :attr:`max_delta` (the budget's or its subject default's) is InvalidArgument."""
        authorize(caller_tenant, budget.scope.tenant_id)
        check_delta(budget, self.max_delta)
        return self.write(budget)

    def write(self, budget: Budget) -> BudgetStatus:
        """Store ``budget``'s limits: :meth:`put` after its checks of the caller and of the
        δ maximum (a replayed export restores budgets as they were accepted)."""
        core = self._core
        check_scope(budget.scope, core.limits, "budget.scope")
        t, d, s = scope_key(budget.scope)
        now = core.clock()
        with core.tx() as conn:
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
        status = core.policy.status(budget, comp, version)
        return replace(status, event_count=count, subject_default=budget.subject_default)

    def remaining(self, caller_tenant: str, scope: Scope) -> BudgetStatus:
        """Committed figures of one budget, RDP and tight; ``epsilon_reserved`` says how
        much live reservations would add to the enforced figure."""
        core = self._core
        own(caller_tenant, scope, core.limits)
        with core.tx(readonly=True) as conn:
            row = load_budgets(conn, [scope], lock=False)[0]
            held = live_reservation_atoms(conn, scope.tenant_id, [row.id], core.clock())
            defaults = subject_defaults_of(conn, [row.id])
            stored = stored_tight(conn, [row.id])
        return self._statuses([row], held, defaults, stored)[0]

    def page(
        self,
        caller_tenant: str,
        tenant_id: str,
        *,
        dataset_id: str | None = None,
        page_size: int = 50,
        page_token: str = "",
    ) -> BudgetPage:
        """The tenant's budgets (optionally one dataset's and its subjects'), by creation."""
        core = self._core
        own(caller_tenant, Scope(tenant_id), core.limits)
        check_text("dataset_id", dataset_id or "", core.limits.max_id_bytes)
        check_page_size(page_size)
        after = decode_token(page_token, newest_first=False)
        q = select(budgets).where(budgets.c.tenant_id == tenant_id)
        if dataset_id:
            q = q.where(budgets.c.dataset_id == dataset_id)
        if after is not None:
            q = q.where(budgets.c.id > after)
        with core.tx(readonly=True) as conn:
            rows = [
                row_to_budget(r)
                for r in conn.execute(q.order_by(budgets.c.id).limit(page_size + 1))
            ]
            page = rows[:page_size]
            ids = [r.id for r in page]
            held = live_reservation_atoms(conn, tenant_id, ids, core.clock())
            defaults = subject_defaults_of(conn, ids)
            stored = stored_tight(conn, ids)
        token = encode_token(page[-1].id, False) if len(rows) > page_size else ""
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
        policy = self._core.policy
        name = policy.reported_tight
        out, fresh = [], {}
        for row in rows:
            version, accountant, delta, epsilon = stored.get(row.id, (-1, "", 0.0, None))
            current = (version, accountant, delta) == (row.version, name, row.budget.delta)
            known = (epsilon,) if current else None
            status = policy.status(
                row.budget, row.comp, row.version, want_tight=True, known_tight=known
            )
            if not current and status.tight_state != NOT_COMPUTED:
                fresh[row.id] = (row.version, name, row.budget.delta, status.epsilon_tight)
            reserved = 0.0
            if +held[row.id]:
                with_held = policy.status(row.budget, row.comp.add(held[row.id]), row.version)
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
            with suppress(Unavailable), self._core.tx() as conn:
                for budget_id, figure in fresh.items():
                    store_tight(conn, budget_id, figure)
        return tuple(out)
