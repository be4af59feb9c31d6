"""Writing many charges in one transaction: what :meth:`Ledger.charge_batch` decides, and the
few bulk statements that store it.

The decisions run in memory over the running composition of every touched budget, item by
item (each sees the items accepted before it), so a batch of n items costs one transaction,
one lock of each touched budget, one INSERT of the events, one of their budget links and
one UPDATE per touched budget — not n of each.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, bindparam, insert, select, update

from services.accountant.accounting import Atom, Composition
from services.accountant.events import Charge
from services.accountant.rows import BudgetRow, atoms_to_json, dumps
from services.accountant.schema import budgets, event_budgets, events


def item_key(batch_key: str, index: int) -> str:
    """The idempotency key of item ``index`` of a batch."""
    return f"{batch_key}#{index}"


@dataclass
class Running:
    """One touched budget during a batch: its row and its composition so far."""

    row: BudgetRow
    comp: Composition
    event_count: int
    changed: bool = False


@dataclass
class Pending:
    """An accepted item waiting to be written."""

    charge: Charge
    budget_ids: list[int]
    cost_epsilon: float
    spend_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def existing_events(conn: Connection, tenant_id: str, keys: Iterable[str]) -> dict[str, object]:
    """Events already stored under ``keys`` (a retried batch), by key."""
    wanted = list(keys)
    if not wanted:
        return {}
    q = select(events).where(events.c.tenant_id == tenant_id, events.c.idempotency_key.in_(wanted))
    return {row.idempotency_key: row for row in conn.execute(q)}


def accept(running: list[Running], atoms: Counter[Atom]) -> None:
    """Compose an accepted item into every budget it touches."""
    for r in running:
        r.comp = r.comp.add(atoms)
        r.event_count += 1
        r.changed = True


def write(conn: Connection, pending: list[Pending], touched: Iterable[Running], now: float) -> None:
    """Store the accepted items and the new state of every budget they changed."""
    if not pending:
        return
    rows = [
        {
            "spend_id": p.spend_id,
            "tenant_id": p.charge.tenant_id,
            "idempotency_key": p.charge.idempotency_key,
            "charge": dumps(p.charge.to_json()),
            "cost_epsilon": p.cost_epsilon,
            "committed_at": now,
        }
        for p in pending
    ]
    conn.execute(insert(events), rows)
    q = select(events.c.spend_id, events.c.id).where(
        events.c.spend_id.in_([p.spend_id for p in pending])
    )
    ids = dict(conn.execute(q).all())
    links = [
        {"event_id": ids[p.spend_id], "budget_id": budget_id}
        for p in pending
        for budget_id in p.budget_ids
    ]
    conn.execute(insert(event_budgets), links)
    changes = [
        {
            "b_id": r.row.id,
            "b_rdp": dumps(r.comp.rdp.tolist()),
            "b_atoms": atoms_to_json(r.comp.atoms),
            "b_version": r.row.version + 1,
            "b_count": r.event_count,
            "b_updated": now,
        }
        for r in touched
        if r.changed
    ]
    stmt = (
        update(budgets)
        .where(budgets.c.id == bindparam("b_id"))
        .values(
            rdp=bindparam("b_rdp"),
            atoms=bindparam("b_atoms"),
            version=bindparam("b_version"),
            event_count=bindparam("b_count"),
            updated_at=bindparam("b_updated"),
        )
    )
    conn.execute(stmt, changes)
