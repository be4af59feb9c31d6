"""One database helper for every service that stores state (SQLAlchemy; SQLite or PostgreSQL).

:func:`make_engine` sets each backend up the way transactional services here rely on it:

- **SQLite** (the embedded default): WAL (readers never block the writer),
  ``synchronous=FULL`` (an acknowledged write survives a power cut), a busy timeout,
  foreign keys on, and pysqlite's own transaction handling disabled so that every
  transaction opens with ``BEGIN IMMEDIATE`` — writers serialise on the database lock
  *before* they read what they check (no lost updates). A connection whose execution
  options carry ``veil_readonly=True`` opens a plain ``BEGIN`` instead (no write lock).
- **PostgreSQL**: a pool with pre-ping; row locks are the caller's (``SELECT … FOR UPDATE``).

:func:`create_schema` is the migration step: it creates missing tables (idempotent) and
makes the directory of a SQLite file first. The accountant's ledger uses this today; the
sanitizer's sessions and the unlearning jobs use the same helper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url

READONLY = "veil_readonly"
"""Execution option: this transaction only reads (SQLite opens ``BEGIN``, not IMMEDIATE)."""


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, or None (in-memory, or another backend)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(url: str, *, busy_timeout_s: float = 60.0, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the per-backend setup described in the module docstring."""
    if not is_sqlite(url):
        return create_engine(url, pool_pre_ping=True, **kwargs)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


@contextmanager
def transaction(engine: Engine, *, readonly: bool = False) -> Iterator[Connection]:
    """One transaction on its own connection: committed on exit, rolled back on error."""
    with engine.connect() as conn:
        conn.execution_options(**{READONLY: readonly})
        with conn.begin():
            yield conn


def create_schema(engine: Engine, metadata: MetaData) -> None:
    """Create the tables of ``metadata`` that are missing (idempotent); for a SQLite file,
    its directory first."""
    path = sqlite_file(str(engine.url))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    metadata.create_all(engine)
