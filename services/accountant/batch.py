"""Writing many charges in one transaction: a batch of charges (:func:`charge`, the
ledger's ``charge_batch``), what it and a group of concurrent spends
(:mod:`services.accountant.group`) decide, and the few bulk statements that store it.

The decisions run in memory over the running composition of every touched budget, item by
item (each sees the items accepted before it), so n items cost one transaction, one lock of
each touched budget, one INSERT of the events (returning their ids), one of their budget
links and one UPDATE of the touched budgets — not n of each. The statements are built once
(here, at import): building one costs more CPU than running it.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, insert, select, update

from services.accountant import hotsql
from services.accountant.accounting import Atom, Composition, atoms_of
from services.accountant.core import Core, authorize, replay_or_conflict
from services.accountant.events import Budget, BudgetStatus, Charge, Receipt, Scope
from services.accountant.limits import check_charge, check_text
from services.accountant.policy import Policy, charge_cost
from services.accountant.rows import (
    BudgetRow,
    atoms_to_json,
    create_subjects,
    curve_text,
    drop_budgets,
    dumps,
    find_budgets,
    live_reservation_atoms,
    not_found,
    remember,
)
from services.accountant.schema import budgets, event_budgets, events
from services.common.errors import BudgetExhausted, InvalidArgument, VeilError

LOOK_AHEAD_MIN, LOOK_AHEAD_MAX = 8, 256
"""Items of a batch decided together (:func:`look_ahead`): the window doubles while
every item is accepted and starts small again after one that was decided alone (a refusal
costs at most this much figuring thrown away)."""


def item_key(batch_key: str, index: int) -> str:
    """The idempotency key of item ``index`` of a batch."""
    return f"{batch_key}#{index}"


def charge(
    core: Core, caller_tenant: str, batch_key: str, items: Sequence[Charge | VeilError]
) -> list[Receipt | VeilError]:
    """Charge every item in one transaction; each is accepted or refused on its own.

    Item ``i`` is stored under the idempotency key ``<batch_key>#<i>`` (its own key
    must be empty), so a retry replays the items accepted before and decides the
    refused ones again. An item given as an error (it did not convert) stays refused.
    """
    limits = core.limits
    check_text("idempotency_key", batch_key, limits.max_key_bytes - 8, required=True)
    if len(items) > limits.max_batch:
        raise InvalidArgument(
            f"a batch holds at most {limits.max_batch} charges",
            details={"field": "charges", "limit": limits.max_batch},
        )
    started = time.perf_counter()
    results: list[Receipt | VeilError | None] = [None] * len(items)
    charges: dict[int, Charge] = {}
    for i, item in enumerate(items):
        if isinstance(item, VeilError):
            results[i] = item
            continue
        try:
            authorize(caller_tenant, item.tenant_id)
            check_charge(item, limits, f"charges[{i}]")
        except VeilError as exc:
            results[i] = exc
            continue
        charges[i] = replace(item, idempotency_key=item_key(batch_key, i))
    if not charges:  # nothing left to decide: no transaction
        return [r if r is not None else InvalidArgument("no result") for r in results]
    now = core.clock()
    with core.tx() as conn:
        scopes = {s for c in charges.values() for s in c.scopes}
        found, created = lock_creating(conn, scopes, now)
        by_scope = {r.budget.scope: Running(r, r.comp, r.event_count) for r in found}
        held = live_reservation_atoms(conn, caller_tenant, [r.id for r in found], now)
        done = existing_events(conn, caller_tenant, (c.idempotency_key for c in charges.values()))
        pending: list[Pending] = []
        todo, window = list(charges.items()), LOOK_AHEAD_MIN
        while todo:
            ahead = look_ahead(core.policy, [c for _, c in todo[:window]], by_scope, held, done)
            for (i, item), decided in zip(todo, ahead, strict=False):
                results[i] = _taken(item, decided, pending, now)
            if len(ahead) < min(window, len(todo)):  # the next item is decided alone
                i, item = todo[len(ahead)]
                results[i] = _decide_item(core, item, by_scope, held, done, pending, now)
                todo, window = todo[len(ahead) + 1 :], LOOK_AHEAD_MIN
            else:
                todo, window = todo[len(ahead) :], min(2 * window, LOOK_AHEAD_MAX)
        write(conn, pending, by_scope.values(), now)
        used = {budget_id for p in pending for budget_id in p.budget_ids}
        drop_budgets(conn, (b for b in created if b not in used))
    for result in results:
        if isinstance(result, Receipt) and not result.replayed:
            core.record(result, started, "batch")
        elif isinstance(result, BudgetExhausted):
            core.refused("budget_exhausted")
    return [r if r is not None else InvalidArgument("no result") for r in results]


def lock_creating(
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


def _taken(item: Charge, ahead: Ahead, pending: list[Pending], now: float) -> Receipt:
    """Accept an item decided ahead (what :func:`_decide_item` does for one accepted)."""
    cost = charge_cost(item, min(r.row.budget.delta for r in ahead.running)).epsilon
    queued = Pending(item, [r.row.id for r in ahead.running], cost)
    take(ahead)
    pending.append(queued)
    return Receipt(queued.spend_id, item, now, ahead.statuses)


def _decide_item(
    core: Core,
    item: Charge,
    by_scope: dict[Scope, Running],
    held: dict[int, Counter[Atom]],
    done: dict[str, Any],
    pending: list[Pending],
    now: float,
) -> Receipt | VeilError:
    """Decide one item of a batch against the running state (and queue its write)."""
    try:
        if (existing := done.get(item.idempotency_key)) is not None:
            return replay_or_conflict(existing, item)
        missing = [s for s in item.scopes if s not in by_scope]
        if missing:
            raise not_found(missing[0])
        running = [by_scope[s] for s in item.scopes]
        running.sort(key=lambda r: r.row.id)
        atoms = atoms_of(item)
        now_rows = [replace(r.row, comp=r.comp, event_count=r.event_count) for r in running]
        statuses = core.verdict(now_rows, held, atoms, allow_tight=True)
        cost = charge_cost(item, min(r.row.budget.delta for r in running)).epsilon
        queued = Pending(item, [r.row.id for r in running], cost)
        accept(running, atoms)
        pending.append(queued)
        return Receipt(queued.spend_id, item, now, tuple(statuses))
    except VeilError as exc:
        return exc


@dataclass
class Running:
    """One touched budget during a batch: its row, its composition so far and the version
    it will be stored with (a batch is one change of a budget; each spend of a group is
    one, as if they had come one after the other)."""

    row: BudgetRow
    comp: Composition
    event_count: int
    changed: bool = False
    version: int = field(init=False)

    def __post_init__(self) -> None:
        self.version = self.row.version

    def now(self) -> BudgetRow:
        """The row as the next item sees it."""
        row = self.row
        return BudgetRow(row.id, row.budget, self.version, self.comp, self.event_count)


@dataclass
class Pending:
    """An accepted item waiting to be written."""

    charge: Charge
    budget_ids: list[int]
    cost_epsilon: float
    spend_id: str = field(default_factory=lambda: uuid.uuid4().hex)


class StoredEvent(NamedTuple):
    """The fields of a stored event that a replay reads (an ``events`` row has them too)."""

    spend_id: str
    charge: str
    committed_at: float


_EXISTING = select(
    events.c.idempotency_key, events.c.spend_id, events.c.charge, events.c.committed_at
).where(
    events.c.tenant_id == bindparam("tenant"),
    events.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)
_INSERT_EVENTS = insert(events).returning(events.c.id, sort_by_parameter_order=True)
_INSERT_LINKS = insert(event_budgets)
_UPDATE_BUDGETS = (
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


def existing_events(conn: Connection, tenant_id: str, keys: Iterable[str]) -> dict[str, Any]:
    """Events already stored under ``keys`` (a retry), by key, as :class:`StoredEvent`."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    if hotsql.usable(conn):
        rows: Iterable[Any] = hotsql.existing_events(conn, tenant_id, wanted)
    else:
        rows = conn.execute(_EXISTING, {"tenant": tenant_id, "keys": wanted})
    return {key: StoredEvent(spend_id, charge, at) for key, spend_id, charge, at in rows}


def accept(running: list[Running], atoms: Counter[Atom], *, version_each: bool = False) -> None:
    """Compose an accepted item into every budget it touches; ``version_each``: the item is
    a change of its own (a spend of a group), else the whole batch is one."""
    for r in running:
        r.comp = r.comp.add(atoms)
        r.event_count += 1
        r.changed = True
        r.version = r.version + 1 if version_each else r.row.version + 1


class Ahead(NamedTuple):
    """An item decided ahead (:func:`look_ahead`): its budgets in id order, each one's
    composition with the item in, and the item's statuses (its receipt's)."""

    running: list[Running]
    comps: list[Composition]
    statuses: tuple[BudgetStatus, ...]


def look_ahead(
    policy: Policy,
    charges: Sequence[Charge],
    by_scope: Mapping[Scope, Running],
    held: Mapping[int, Counter[Atom]],
    done: Container[str],
) -> list[Ahead]:
    """Decide the leading run of ``charges`` that are each accepted on the cheap bounds
    alone, as the item-by-item decision would, with the figures of all their budgets
    computed together (:meth:`Policy.statuses`: one numpy pass, not one per budget).

    Every item is assumed accepted, in order, so each sees the compositions the ones before
    it leave; the run stops before the first item that would not be accepted that way (a
    replay, a missing budget, a refusal, a status that needs the tight figure), which the
    caller decides on its own (then this runs again from the item after it). Nothing is
    changed: :func:`take` applies a run.
    """
    comps: dict[int, Composition] = {}
    counts: dict[int, int] = {}
    planned: list[tuple[list[Running], list[Composition]]] = []
    flat: list[tuple[Budget, Composition, int, int]] = []  # what each item's verdict sees
    for charge in charges:
        if charge.idempotency_key in done or any(s not in by_scope for s in charge.scopes):
            break
        running = sorted((by_scope[s] for s in charge.scopes), key=lambda r: r.row.id)
        atoms = atoms_of(charge)
        after = []
        for r in running:
            comp = comps.get(r.row.id, r.comp)
            new = comp.add(atoms)
            seen, mine = new, held.get(r.row.id)
            if mine:  # reservations composed in as the item-by-item decision does (_after)
                extra = Counter(mine)
                extra.update(atoms)
                seen = comp.add(extra)
            count = counts.get(r.row.id, r.event_count) + 1
            flat.append((r.row.budget, seen, r.row.version, count))
            after.append(new)
            comps[r.row.id], counts[r.row.id] = new, count
        planned.append((running, after))
    budgets_, seen_, versions, events = zip(*flat, strict=True) if flat else ((), (), (), ())
    statuses = policy.statuses(budgets_, seen_, versions, events)
    out: list[Ahead] = []
    at = 0
    for running, after in planned:
        figures = statuses[at : at + len(running)]
        at += len(running)
        if any(st is None or st.exceeds for st in figures):
            break
        out.append(Ahead(running, after, tuple(st for st in figures if st is not None)))
    return out


def take(ahead: Ahead) -> None:
    """Apply an item decided by :func:`look_ahead` (as :func:`accept` would, a batch)."""
    for r, comp in zip(ahead.running, ahead.comps, strict=True):
        r.comp = comp
        r.event_count += 1
        r.changed = True
        r.version = r.row.version + 1


def write(conn: Connection, pending: list[Pending], touched: Iterable[Running], now: float) -> None:
    """Store the accepted items and the new state of every budget they changed."""
    if not pending:
        return
    events_rows = [
        (
            p.spend_id,
            p.charge.tenant_id,
            p.charge.idempotency_key,
            dumps(p.charge.to_json()),
            p.cost_epsilon,
            now,
        )
        for p in pending
    ]
    changes = []
    for r in touched:
        if r.changed:
            rdp, atoms = curve_text(r.comp.rdp), atoms_to_json(r.comp.atoms)
            remember(rdp, atoms, r.comp)  # the next spend reads this text: parsed already
            changes.append((rdp, atoms, r.version, r.event_count, now, r.row.id))
    if hotsql.usable(conn):
        ids = hotsql.insert_events(conn, events_rows)
        links = [
            (event_id, budget_id)
            for p, event_id in zip(pending, ids, strict=True)
            for budget_id in p.budget_ids
        ]
        hotsql.insert_links(conn, links)
        hotsql.update_budgets(conn, changes)
        return
    names = ("spend_id", "tenant_id", "idempotency_key", "charge", "cost_epsilon", "committed_at")
    rows = [dict(zip(names, row, strict=True)) for row in events_rows]
    # One statement, ids back in the order of the rows (INSERT … RETURNING, batched).
    stored = conn.execute(_INSERT_EVENTS, rows).scalars().all()
    conn.execute(
        _INSERT_LINKS,
        [
            {"event_id": event_id, "budget_id": budget_id}
            for p, event_id in zip(pending, stored, strict=True)
            for budget_id in p.budget_ids
        ],
    )
    keys = ("b_rdp", "b_atoms", "b_version", "b_count", "b_updated", "b_id")
    if changes:
        conn.execute(_UPDATE_BUDGETS, [dict(zip(keys, c, strict=True)) for c in changes])
