"""A budget's history: the committed events charged to it, a page at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from services.accountant.accounting import Figures
from services.accountant.core import Core, own
from services.accountant.events import Charge, Scope
from services.accountant.pages import check_page_size, decode_token, encode_token
from services.accountant.policy import charge_cost
from services.accountant.rows import load_budgets
from services.accountant.schema import event_budgets, events


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


def history(
    core: Core,
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
    own(caller_tenant, scope, core.limits)
    check_page_size(page_size)
    after = decode_token(page_token, newest_first)
    with core.tx(readonly=True) as conn:
        budget_row = load_budgets(conn, [scope], lock=False)[0]
        q = (
            select(events)
            .join(event_budgets, event_budgets.c.event_id == events.c.id)
            .where(event_budgets.c.budget_id == budget_row.id)
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
    token = encode_token(rows[-1].id, newest_first) if more else ""
    delta = budget_row.budget.delta
    return HistoryPage(tuple(_record(r, delta) for r in rows), token, delta)


def _record(row: Any, delta: float) -> EventRecord:
    """An event with its cost quoted at ``delta`` (the stored cost used the smallest δ of
    the budgets it touched, which need not be this one)."""
    charge = Charge.from_json(json.loads(row.charge))
    return EventRecord(row.spend_id, charge, row.committed_at, charge_cost(charge, delta))
