"""The operator's side of the ledger: verify running state, export it, replay an export.

:meth:`Audit.verify` recomputes a budget's composition from its full event log and compares
it with the running state a spend keeps; :meth:`Audit.export` writes every budget and event
as JSON lines, and :meth:`Audit.replay` loads those lines into an empty ledger, rebuilding
the same state (``veil ledger verify|replay``, the ``ExportAudit`` RPC).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select

from services.accountant.accounting import Atom, Composition, atoms_of
from services.accountant.budgeting import Budgets
from services.accountant.core import Core, own
from services.accountant.events import Budget, Charge, Scope, SubjectDefault
from services.accountant.rows import load_budgets, row_to_budget
from services.accountant.schema import budgets, event_budgets, events, subject_defaults
from services.accountant.spending import Spends


@dataclass(frozen=True)
class VerifyReport:
    """Running state vs a full recomputation from the event log."""

    scope: Scope
    ok: bool
    event_count: int
    max_abs_rdp_diff: float
    atoms_equal: bool


class Audit:
    """Verification, export and replay over the whole ledger (or one tenant's part)."""

    def __init__(self, core: Core, budgets: Budgets, spends: Spends) -> None:
        self._core, self._budgets, self._spends = core, budgets, spends

    def verify(self, caller_tenant: str, scope: Scope) -> VerifyReport:
        """Recompute a budget's composition from its full event log and compare."""
        own(caller_tenant, scope, self._core.limits)
        with self._core.tx(readonly=True) as conn:
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
        with self._core.tx(readonly=True) as conn:
            q = select(budgets.c.tenant_id, budgets.c.dataset_id, budgets.c.subject_id)
            if tenant_id is not None:
                q = q.where(budgets.c.tenant_id == tenant_id)
            keys = conn.execute(q.order_by(budgets.c.id)).all()
        for t, d, s in keys:
            yield self.verify(t, Scope(t, d or None, s or None))

    def is_empty(self) -> bool:
        """True if the ledger holds no budget (a replay target must be empty)."""
        with self._core.tx(readonly=True) as conn:
            return conn.execute(select(budgets.c.id).limit(1)).first() is None

    def export(self, tenant_id: str | None = None, since: float | None = None) -> Iterator[str]:
        """JSON lines: every budget, then every event in commit order (operator use).

        :meth:`replay` of these lines into an empty ledger rebuilds the same state.
        ``since`` (unix seconds, inclusive) keeps only events committed from then on
        (filtered in SQL); budgets are always all listed.
        """
        with self._core.tx(readonly=True) as conn:
            q = select(budgets, subject_defaults.c.epsilon.label("default_epsilon"))
            q = q.add_columns(subject_defaults.c.delta.label("default_delta"))
            q = q.outerjoin(subject_defaults, subject_defaults.c.budget_id == budgets.c.id)
            q = q.order_by(budgets.c.id)
            if tenant_id is not None:
                q = q.where(budgets.c.tenant_id == tenant_id)
            for r in conn.execute(q):
                yield json.dumps(_budget_line(r))
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
                self._budgets.write(b)
            elif item["type"] == "event":
                charge = Charge.from_json(item["charge"])
                with self._core.tx() as conn:
                    self._spends.spend_in(
                        conn,
                        charge,
                        enforce=False,
                        exclude=None,
                        spend_id=item["spend_id"],
                        committed_at=item["committed_at"],
                    )
                n += 1
        return n


def _budget_line(r: Any) -> dict[str, Any]:
    """A budget's export line (with its subject default, if it has one)."""
    b = row_to_budget(r).budget
    line: dict[str, Any] = {
        "type": "budget",
        "scope": b.scope.to_json(),
        "epsilon": b.epsilon,
        "delta": b.delta,
    }
    if r.default_epsilon is not None:
        line["subject_default"] = {"epsilon": r.default_epsilon, "delta": r.default_delta}
    return line
