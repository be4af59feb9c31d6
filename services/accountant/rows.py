"""Row-level helpers shared by the ledger's write path and its queries."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, or_, select

from services.accountant.accounting import Atom, Composition, atoms_of
from services.accountant.events import Budget, Charge, Scope
from services.accountant.schema import budgets, reservations
from services.common.errors import NotFound


@dataclass(frozen=True)
class BudgetRow:
    """A budget as stored: limits, running composition and version."""

    id: int
    budget: Budget
    version: int
    comp: Composition
    event_count: int = 0


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys) so equal charges have equal text (GROUP BY in verify)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def atoms_to_json(atoms: Mapping[Atom, int]) -> str:
    return dumps(sorted([[list(a), n] for a, n in atoms.items() if n], key=repr))


def atoms_from_json(text: str) -> Counter[Atom]:
    return Counter({(str(a[0]), *map(float, a[1:])): int(n) for a, n in json.loads(text)})


def scope_key(scope: Scope) -> tuple[str, str, str]:
    """Stored form of a scope: '' stands for "no dataset" / "no subject"."""
    return scope.tenant_id, scope.dataset_id or "", scope.subject_id or ""


def row_to_budget(row: Any) -> BudgetRow:
    scope = Scope(row.tenant_id, row.dataset_id or None, row.subject_id or None)
    comp = Composition(np.array(json.loads(row.rdp), dtype=float), atoms_from_json(row.atoms))
    budget = Budget(scope, row.epsilon, row.delta)
    return BudgetRow(row.id, budget, row.version, comp, int(row.event_count))


def load_budgets(conn: Connection, scopes: Iterable[Scope], *, lock: bool) -> list[BudgetRow]:
    """Budgets of ``scopes`` ordered by id; ``lock`` takes ``FOR UPDATE`` row locks.

    Locking in id order means two spends touching overlapping budgets always lock them in
    the same order, so PostgreSQL never deadlocks on them. A missing budget is NotFound.
    """
    keys = [scope_key(s) for s in scopes]
    cond = or_(
        *(
            and_(budgets.c.tenant_id == t, budgets.c.dataset_id == d, budgets.c.subject_id == s)
            for t, d, s in keys
        )
    )
    query = select(budgets).where(cond).order_by(budgets.c.id)
    if lock:
        query = query.with_for_update()
    rows = [row_to_budget(r) for r in conn.execute(query)]
    found = {scope_key(r.budget.scope) for r in rows}
    for scope, key in zip(scopes, keys, strict=True):
        if key not in found:
            raise NotFound(
                f"no {scope.kind} budget for this scope", details=scope_key_details(scope)
            )
    return rows


def scope_key_details(scope: Scope) -> dict[str, str]:
    return {"scope": scope.kind, **{k: v for k, v in scope.to_json().items() if v is not None}}


def live_reservation_atoms(
    conn: Connection,
    tenant_id: str,
    budget_ids: Iterable[int],
    now: float,
    exclude: str | None = None,
) -> dict[int, Counter[Atom]]:
    """Atoms held by live (unexpired) reservations, per budget id among ``budget_ids``."""
    wanted = set(budget_ids)
    held: dict[int, Counter[Atom]] = {b: Counter() for b in wanted}
    query = select(reservations.c.id, reservations.c.charge, reservations.c.budget_ids).where(
        reservations.c.tenant_id == tenant_id,
        reservations.c.status == "live",
        reservations.c.expires_at > now,
    )
    for rid, charge_text, ids_text in conn.execute(query):
        if rid == exclude:
            continue
        touched = wanted.intersection(json.loads(ids_text))
        if touched:
            atoms = atoms_of(Charge.from_json(json.loads(charge_text)))
            for b in touched:
                held[b].update(atoms)
    return held
