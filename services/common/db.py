"""One database helper for every service that stores state (SQLAlchemy; SQLite or PostgreSQL).

:func:`make_engine` sets each backend up the way transactional services here rely on it:

- **SQLite** (the embedded default): WAL (readers never block the writer),
  ``synchronous=FULL`` (an acknowledged write survives a power cut), a busy timeout,
  foreign keys on, and pysqlite's own transaction handling disabled so that every
  transaction opens with ``BEGIN IMMEDIATE`` — writers serialise on the database lock
  *before* they read what they check (no lost updates). A connection whose execution
  options carry ``veil_readonly=True`` opens a plain ``BEGIN`` instead (no write lock).
- **PostgreSQL**: a pool with pre-ping; row locks are the caller's (``SELECT … FOR UPDATE``).

:func:`create_schema` is the migration step: it creates missing tables, columns and indexes
(idempotent; on PostgreSQL under an advisory lock, so replicas starting together take turns)
and makes the directory of a SQLite file first. The accountant's ledger uses this today; the
sanitizer's sessions and the unlearning jobs use the same helper.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError

from services.common.errors import Unavailable

READONLY = "veil_readonly"
"""Execution option: this transaction only reads (SQLite opens ``BEGIN``, not IMMEDIATE)."""


def data_dir() -> Path:
    """Where embedded databases live by default: ``$VEIL_DATA_DIR``, else
    ``$XDG_DATA_HOME/veil``, else ``~/.local/share/veil`` — absolute, never the working
    directory (a server started elsewhere must not open a new, empty ledger)."""
    if os.environ.get("VEIL_DATA_DIR"):
        return Path(os.environ["VEIL_DATA_DIR"]).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(xdg).expanduser() / "veil").resolve()


def default_sqlite_url(name: str) -> str:
    """``sqlite:///<data_dir>/<name>.sqlite``."""
    return f"sqlite:///{data_dir() / name}.sqlite"


def check_url(url: str) -> str:
    """``url`` itself; a SQLite file path must be absolute (a relative one would follow the
    working directory). Raises ValueError, which settings report at start-up."""
    path = sqlite_file(url)
    if path is not None and not path.is_absolute():
        raise ValueError(
            f"the SQLite path {str(path)!r} is relative to the working directory; give an "
            f"absolute one (sqlite:////abs/path.sqlite), or leave the URL unset for "
            f"{default_sqlite_url('<service>')}"
        )
    return url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, or None (in-memory, or another backend)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def make_engine(
    url: str, *, busy_timeout_s: float = 60.0, connect_timeout_s: float = 5.0, **kwargs: Any
) -> Engine:
    """An engine for ``url`` with the per-backend setup described in the module docstring.

    ``hide_parameters``: an error's text never carries the statement's parameters (subject
    ids are personal data, and errors are logged).
    """
    kwargs.setdefault("hide_parameters", True)
    if not is_sqlite(url):
        connect_args = {"connect_timeout": max(1, round(connect_timeout_s))}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
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
    """One transaction on its own connection: committed on exit, rolled back on error.

    A database that cannot be reached, or that fails the operation itself (connection
    refused or lost, SQLite's lock wait timing out, a disk error), is
    :class:`~services.common.errors.Unavailable`: retryable, nothing was committed. The
    driver's message stays in the logs of the chained exception only as its class name.
    """
    try:
        with engine.connect() as conn:
            conn.execution_options(**{READONLY: readonly})
            with conn.begin():
                yield conn
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable(
            f"the database is unavailable ({type(exc.orig).__name__}); retry",
            details={"backend": engine.url.get_backend_name()},
        ) from None


def create_schema(engine: Engine, metadata: MetaData) -> None:
    """Create the tables of ``metadata`` that are missing, add the nullable columns an
    existing table lacks, then the indexes it lacks (idempotent; the only migration:
    columns and indexes are only ever added, columns nullable); for a SQLite file, its
    directory first."""
    path = sqlite_file(str(engine.url))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _schema_lock(engine):
            metadata.create_all(engine)
            _add_missing_columns(engine, metadata)
            for table in metadata.sorted_tables:
                for index in table.indexes:  # create_all makes them with new tables only
                    index.create(engine, checkfirst=True)
    except (OperationalError, InterfaceError) as exc:
        raise Unavailable(
            f"the database is unavailable ({type(exc.orig).__name__}); retry",
            details={"backend": engine.url.get_backend_name()},
        ) from None


SCHEMA_LOCK = 0x7E11_5C4E
"""PostgreSQL advisory lock key that :func:`create_schema` holds: replicas starting together
on one database create the schema one after the other (``CREATE TABLE`` checks and creates
in two steps, and two replicas racing there end in a duplicate-table error)."""


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[None]:
    """Hold :data:`SCHEMA_LOCK` on PostgreSQL for the block (a session lock on a connection
    of its own; released when the block ends, or with the connection if the process dies).
    SQLite needs none: its DDL runs under the database's write lock."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
            conn.commit()


def _add_missing_columns(engine: Engine, metadata: MetaData) -> None:
    existing = inspect(engine)
    missing = [
        (table, column)
        for table in metadata.sorted_tables
        if existing.has_table(table.name)
        for column in table.columns
        if column.name not in {c["name"] for c in existing.get_columns(table.name)}
    ]
    if not missing:
        return
    guard = "" if engine.dialect.name == "sqlite" else "IF NOT EXISTS "
    with transaction(engine) as conn:
        for table, column in missing:
            if not column.nullable:
                raise RuntimeError(f"{table.name}.{column.name}: a new column must be nullable")
            kind = column.type.compile(dialect=engine.dialect)
            conn.exec_driver_sql(
                f'ALTER TABLE "{table.name}" ADD COLUMN {guard}"{column.name}" {kind}'
            )


class TableStore:
    """A service's tables (``metadata``) on one engine: the schema, a liveness probe and
    short transactions; the sanitizer's sessions and the unlearning jobs build on it."""

    metadata: MetaData

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.engine = engine or make_engine(url)

    def create_schema(self) -> None:
        create_schema(self.engine, self.metadata)

    def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        try:
            with transaction(self.engine, readonly=True) as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self, readonly: bool = False) -> Iterator[Connection]:
        with transaction(self.engine, readonly=readonly) as conn:
            yield conn
