"""Tables of the ledger (SQLAlchemy Core); engines come from :mod:`services.common.db`.

``budgets`` holds each budget's limits plus its running composition (``rdp``: the RDP
curve over :data:`~services.accountant.accounting.ORDERS`; ``atoms``: the multiset as a
JSON list of ``[atom, count]``), ``event_count`` (events charged to it, kept so that
reading it never scans the log) and a ``version`` bumped on every change. ``events`` is
append-only (never updated or deleted); ``event_budgets`` links an event to every budget it
charged; ``reservations`` are leases on budget that count while ``status = 'live'`` and
``expires_at`` is in the future.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()
_BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrement needs INTEGER

budgets = Table(
    "accountant_budgets",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("tenant_id", String(255), nullable=False),
    Column("dataset_id", String(255), nullable=False, default=""),
    Column("subject_id", String(255), nullable=False, default=""),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("version", Integer, nullable=False, default=0),
    Column("event_count", BigInteger, nullable=False, default=0),
    Column("rdp", Text, nullable=False),
    Column("atoms", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("tenant_id", "dataset_id", "subject_id", name="uq_budget_scope"),
)

events = Table(
    "accountant_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("spend_id", String(64), nullable=False, unique=True),
    Column("tenant_id", String(255), nullable=False),
    Column("idempotency_key", String(255), nullable=False),
    Column("charge", Text, nullable=False),
    Column("cost_epsilon", Float, nullable=False),
    Column("committed_at", Float, nullable=False),
    UniqueConstraint("tenant_id", "idempotency_key", name="uq_event_key"),
)

event_budgets = Table(
    "accountant_event_budgets",
    metadata,
    Column("event_id", ForeignKey(events.c.id), primary_key=True),
    Column("budget_id", ForeignKey(budgets.c.id), primary_key=True),
    Index("ix_event_budgets_budget", "budget_id", "event_id"),
)

subject_defaults = Table(
    "accountant_subject_defaults",
    metadata,
    Column("budget_id", ForeignKey(budgets.c.id), primary_key=True),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
)
"""A dataset budget's limits for subject budgets created on first charge (a table of its
own, so that a ledger created by an earlier version gains it with ``create_all``)."""

tight_figures = Table(
    "accountant_tight_figures",
    metadata,
    Column("budget_id", ForeignKey(budgets.c.id), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("accountant", String(16), nullable=False),
    Column("delta", Float, nullable=False),
    Column("epsilon", Float),
)
"""The tight figure of a budget's committed composition, computed once per version (by
whichever replica reads it first) and kept; NULL epsilon = could not be computed within
its bounds. A version, accountant or δ that does not match is stale and recomputed."""

reservations = Table(
    "accountant_reservations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(255), nullable=False),
    Column("charge", Text, nullable=False),
    Column("budget_ids", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("spend_id", String(64)),
    Index("ix_reservations_live", "tenant_id", "status", "expires_at"),
)
