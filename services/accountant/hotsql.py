"""The spend path's statements as driver SQL on the connection's DBAPI cursor.

A spend (alone, in a group commit or a batch) runs the same six statements: lock its
budgets, read the live reservations and the stored idempotency keys, insert the events and
their budget links, update the budgets. Through SQLAlchemy Core each cost more CPU in
parameter processing, result set-up and events than the driver spent running it (about
half the ledger's CPU per spend, measured with cProfile); here each is one fixed SQL text per
dialect, so neither the driver's statement cache nor SQLAlchemy's grows with the number of
subjects or items (lists travel as one JSON text on SQLite, as arrays on PostgreSQL).

The rows and effects are exactly those of the SQLAlchemy statements they replace
(:data:`ENABLED` = False runs those instead; a test compares the two, table by table).
A driver error is raised as SQLAlchemy's wrapped exception (``OperationalError``,
``IntegrityError``…, parameters hidden), so callers map failures as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

ENABLED = True
"""False: the SQLAlchemy statements (the reference the tests compare with)."""

_BUDGET_COLS = (
    "id, tenant_id, dataset_id, subject_id, epsilon, delta, version, event_count, rdp, atoms"
)
_KEYS_SQLITE = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(?)"  # noqa: E501
_SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        "budgets": f"SELECT {_BUDGET_COLS} FROM accountant_budgets "
        f"WHERE (tenant_id, dataset_id, subject_id) IN ({_KEYS_SQLITE}) ORDER BY id",
        "live": "SELECT id, charge, budget_ids FROM accountant_reservations "
        "WHERE tenant_id = ? AND status = 'live' AND expires_at > ?",
        "existing": "SELECT idempotency_key, spend_id, charge, committed_at "
        "FROM accountant_events WHERE tenant_id = ? "
        "AND idempotency_key IN (SELECT value FROM json_each(?))",
        "event": "INSERT INTO accountant_events "
        "(spend_id, tenant_id, idempotency_key, charge, cost_epsilon, committed_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        "links": "INSERT INTO accountant_event_budgets (event_id, budget_id) VALUES (?, ?)",
        "update": "UPDATE accountant_budgets SET rdp = ?, atoms = ?, version = ?, "
        "event_count = ?, updated_at = ? WHERE id = ?",
    },
    "postgresql": {
        "budgets": f"SELECT {_BUDGET_COLS} FROM accountant_budgets "
        "WHERE (tenant_id, dataset_id, subject_id) IN "
        "(SELECT * FROM unnest(%b::text[], %b::text[], %b::text[])) ORDER BY id",
        "live": "SELECT id, charge, budget_ids FROM accountant_reservations "
        "WHERE tenant_id = %b AND status = 'live' AND expires_at > %b",
        "existing": "SELECT idempotency_key, spend_id, charge, committed_at "
        "FROM accountant_events WHERE tenant_id = %b AND idempotency_key = ANY(%b::text[])",
        "events": "INSERT INTO accountant_events "
        "(spend_id, tenant_id, idempotency_key, charge, cost_epsilon, committed_at) "
        "SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], "
        "%b::float8[], %b::float8[]) RETURNING id, spend_id",
        "links": "INSERT INTO accountant_event_budgets (event_id, budget_id) "
        "SELECT * FROM unnest(%b::bigint[], %b::bigint[])",
        "update": "UPDATE accountant_budgets AS b SET rdp = u.rdp, atoms = u.atoms, "
        "version = u.version, event_count = u.event_count, updated_at = u.updated_at "
        "FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::int[], %b::bigint[], "
        "%b::float8[]) AS u(id, rdp, atoms, version, event_count, updated_at) "
        "WHERE b.id = u.id",
    },
}


def usable(conn: Connection) -> bool:
    """Whether the driver SQL serves this connection's dialect (else SQLAlchemy does)."""
    return ENABLED and conn.dialect.name in _SQL


@contextmanager
def _cursor(conn: Connection, sql: str) -> Iterator[Any]:
    """The connection's DBAPI cursor, its driver errors raised as SQLAlchemy's."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.cursor()
    try:
        yield cursor
    except dbapi.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            None,
            exc,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=conn.dialect,
        ) from exc
    finally:
        cursor.close()


def _sql(conn: Connection, name: str) -> str:
    return _SQL[conn.dialect.name][name]


def _run(conn: Connection, cur: Any, sql: str, params: Any) -> None:
    """Execute; on PostgreSQL in binary format both ways (``%b``: text arrays need no
    escaping, which cost more than the rest of the call with the RDP texts in them)."""
    if conn.dialect.name == "sqlite":
        cur.execute(sql, params)
    else:
        cur.execute(sql, params, binary=True)


def budgets(conn: Connection, keys: Sequence[tuple[str, str, str]], lock: bool) -> list[Any]:
    """Budget rows (id, tenant, dataset, subject, ε, δ, version, count, rdp, atoms) of the
    stored scope ``keys``, by id; ``lock``: ``FOR UPDATE`` (PostgreSQL; SQLite's
    transaction holds the database lock already)."""
    sql = _sql(conn, "budgets")
    if conn.dialect.name == "sqlite":
        params: tuple[Any, ...] = (json.dumps(keys),)
    else:
        sql += " FOR UPDATE" if lock else ""
        params = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    with _cursor(conn, sql) as cur:
        _run(conn, cur, sql, params)
        return list(cur.fetchall())


def live_reservations(conn: Connection, tenant_id: str, now: float) -> list[Any]:
    """(id, charge, budget_ids) of the tenant's live, unexpired reservations."""
    sql = _sql(conn, "live")
    with _cursor(conn, sql) as cur:
        _run(conn, cur, sql, (tenant_id, now))
        return list(cur.fetchall())


def existing_events(conn: Connection, tenant_id: str, keys: Sequence[str]) -> list[Any]:
    """(key, spend_id, charge, committed_at) of the tenant's events stored under ``keys``."""
    sql = _sql(conn, "existing")
    arg: Any = json.dumps(list(keys)) if conn.dialect.name == "sqlite" else list(keys)
    with _cursor(conn, sql) as cur:
        _run(conn, cur, sql, (tenant_id, arg))
        return list(cur.fetchall())


def insert_events(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> list[int]:
    """Insert events (spend_id, tenant, key, charge, cost ε, committed_at); their ids, in
    the order of ``rows``."""
    if conn.dialect.name == "sqlite":
        sql = _sql(conn, "event")
        ids = []
        with _cursor(conn, sql) as cur:
            for row in rows:
                cur.execute(sql, row)
                ids.append(int(cur.lastrowid))
        return ids
    sql = _sql(conn, "events")
    with _cursor(conn, sql) as cur:
        _run(conn, cur, sql, tuple(list(column) for column in zip(*rows, strict=True)))
        by_spend = {spend_id: int(event_id) for event_id, spend_id in cur.fetchall()}
    return [by_spend[row[0]] for row in rows]


def insert_links(conn: Connection, links: Sequence[tuple[int, int]]) -> None:
    """Insert (event id, budget id) links."""
    _many(conn, "links", links)


def update_budgets(conn: Connection, changes: Sequence[tuple[Any, ...]]) -> None:
    """Store (rdp, atoms, version, event_count, updated_at, id) of changed budgets."""
    if conn.dialect.name == "sqlite":
        _many(conn, "update", changes)
    else:  # the id first, as the unnest's columns
        _many(conn, "update", [(c[5], *c[:5]) for c in changes])


def _many(conn: Connection, name: str, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    sql = _sql(conn, name)
    with _cursor(conn, sql) as cur:
        if conn.dialect.name == "sqlite":
            cur.executemany(sql, rows)
        else:
            _run(conn, cur, sql, tuple(list(column) for column in zip(*rows, strict=True)))
