"""The shared database helper: default paths that never follow the working directory."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services.common import db


def test_default_url_is_absolute_and_follows_the_data_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VEIL_DATA_DIR", str(tmp_path / "data"))
    assert db.default_sqlite_url("ledger") == f"sqlite:///{tmp_path / 'data' / 'ledger'}.sqlite"
    monkeypatch.delenv("VEIL_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert db.data_dir() == tmp_path / "xdg" / "veil"
    monkeypatch.chdir(tmp_path)
    assert db.sqlite_file(db.default_sqlite_url("x")).is_absolute()


@pytest.mark.parametrize("url", ["sqlite:///var/ledger.sqlite", "sqlite:///ledger.sqlite"])
def test_a_relative_sqlite_path_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="relative to the working directory"):
        db.check_url(url)


@pytest.mark.parametrize(
    "url", ["sqlite:////abs/ledger.sqlite", "sqlite://", "postgresql+psycopg://u@h/db"]
)
def test_absolute_memory_and_server_urls_pass(url: str) -> None:
    assert db.check_url(url) == url


def test_the_accountant_refuses_a_relative_path_at_start_up(monkeypatch) -> None:
    from pydantic import ValidationError

    from services.accountant.settings import AccountantSettings

    monkeypatch.setenv("VEIL_ACCOUNTANT_DATABASE_URL", "sqlite:///var/accountant.sqlite")
    with pytest.raises(ValidationError, match="relative"):
        AccountantSettings()


def test_create_schema_makes_the_directory_of_a_sqlite_file(tmp_path: Path) -> None:
    from sqlalchemy import Column, Integer, MetaData, Table

    metadata = MetaData()
    Table("t", metadata, Column("id", Integer, primary_key=True))
    engine = db.make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.sqlite'}")
    db.create_schema(engine, metadata)
    db.create_schema(engine, metadata)  # idempotent
    with db.transaction(engine) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    assert (tmp_path / "a" / "b" / "x.sqlite").exists()


@pytest.mark.postgres
def test_replicas_creating_one_schema_at_once_all_start(pg_url: str) -> None:
    """Several replicas starting together on an empty PostgreSQL database each create the
    schema (tables, a later-added column, indexes): all of them succeed. Without the
    schema lock, CREATE TABLE races end in a duplicate-table or duplicate-type error that
    crashes a replica."""
    from services.unlearning.jobs import JobStore

    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def start() -> None:
        store = JobStore(pg_url)
        try:
            barrier.wait()
            store.create_schema()
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    for _ in range(3):  # three rounds: a race is timing, not certainty
        threads = [threading.Thread(target=start) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        engine = db.make_engine(pg_url)
        with engine.begin() as conn:
            for table in sorted(JobStore.metadata.tables, reverse=True):
                conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}" CASCADE')
        engine.dispose()
