"""Tables of the ledger and engine setup for SQLite and PostgreSQL (SQLAlchemy Core).

``budgets`` holds each budget's limits plus its running composition (``rdp``: the RDP
curve over :data:`~services.accountant.accounting.ORDERS`; ``atoms``: the multiset as a
JSON list of ``[atom, count]``), ``event_count`` (events charged to it, kept so that
reading it never scans the log) and a ``version`` bumped on every change. ``events`` is
append-only (never updated or deleted); ``event_budgets`` links an event to every budget it
charged; ``reservations`` are leases on budget that count while ``status = 'live'`` and
``expires_at`` is in the future.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
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


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Engine with the per-backend setup spends rely on.

    SQLite: WAL (readers never block the writer), ``synchronous=FULL`` (an acknowledged
    spend survives a power cut), a busy timeout, and pysqlite's own transaction handling
    disabled so that every transaction opens with ``BEGIN IMMEDIATE``: writers serialise
    on the database lock *before* reading the budgets they check (no lost updates).
    PostgreSQL: plain pool; row locks are taken with ``SELECT … FOR UPDATE``.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **kwargs)
    engine = create_engine(url, connect_args={"timeout": 60}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get("veil_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine
