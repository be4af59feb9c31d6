"""The model registry's rows on SQLite and (marked ``postgres``) PostgreSQL: numbers per
tenant, serials across tenants, aliases, and rows written before tenants had numbers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import insert

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.unlearning.jobs import JobStore
from services.unlearning.registry import (
    PREVIOUS,
    PRODUCTION,
    READY,
    RETIRED,
    versions,
)

M = "veil_classifier"


@pytest.fixture
def jobs(database_url: str) -> JobStore:
    store = JobStore(database_url)
    store.create_schema()
    return store


def test_each_tenant_numbers_its_own_versions_and_serials_stay_unique(jobs: JobStore) -> None:
    a2 = jobs.allocate("acme", M, 1, "finetune")
    a3 = jobs.allocate("acme", M, 2, "finetune")
    g2 = jobs.allocate("globex", M, 1, "scrub")
    assert (a2.version, a3.version, g2.version) == (2, 3, 2)
    assert (a2.serial, a3.serial, g2.serial) == (2, 3, 4)
    assert jobs.get_version("globex", M, 2) == g2
    assert jobs.get_version("globex", M, 3) is None  # acme's 3 is no version of globex's
    assert jobs.get_version("acme", M, 2) == a2
    rows, total = jobs.list_versions("globex", M, 0, 10)
    assert [v.version for v in rows] == [2] and total == 1


def test_numbers_stay_per_tenant_under_concurrent_allocation(jobs: JobStore) -> None:
    barrier = threading.Barrier(8)

    def allocate(i: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        return jobs.allocate(("acme", "globex")[i % 2], M, 1, "x")

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(allocate, range(8)))
    for tenant in ("acme", "globex"):
        assert sorted(v.version for v in made if v.tenant == tenant) == [2, 3, 4, 5]
    assert sorted(v.serial for v in made) == list(range(2, 10))


def test_rows_written_before_numbers_keep_their_serial_as_number(jobs: JobStore) -> None:
    with jobs._tx() as conn:
        conn.execute(
            insert(versions).values(
                model_name=M,
                version=4,
                tenant="acme",
                state=READY,
                parent_version=1,
                parent_job_id="j",
                method="finetune",
                metrics="{}",
                created_at=0.0,
            )
        )
    old = jobs.get_version("acme", M, 4)
    assert old is not None and (old.version, old.serial, old.lineage) == (4, 4, {})
    new = jobs.allocate("acme", M, 4, "scrub")
    assert (new.version, new.serial) == (5, 5)
    assert jobs.allocate("globex", M, 1, "scrub").version == 2


def test_a_publish_moves_production_and_previous_follows(jobs: JobStore) -> None:
    first = jobs.allocate("acme", M, 1, "x")
    jobs.promote(M, first.serial, {"task_accuracy": 0.9})
    assert jobs.aliases("acme", M) == {PRODUCTION: 2, PREVIOUS: 1}
    second = jobs.allocate("acme", M, 2, "x")
    jobs.promote(M, second.serial, {})
    assert jobs.aliases("acme", M) == {PRODUCTION: 3, PREVIOUS: 2}
    jobs.set_alias("acme", M, PRODUCTION, 1)  # back to the shared base
    assert jobs.aliases("acme", M) == {PRODUCTION: 1, PREVIOUS: 3}
    jobs.set_alias("acme", M, "canary", 2)
    assert jobs.aliases("acme", M)["canary"] == 2 and jobs.aliases("globex", M) == {}


def test_another_tenants_version_is_answered_as_an_unknown_one(jobs: JobStore) -> None:
    theirs = jobs.allocate("acme", M, 1, "x")
    jobs.promote(M, theirs.serial, {})
    with pytest.raises(NotFound) as other:
        jobs.set_alias("globex", M, PRODUCTION, theirs.version)
    with pytest.raises(NotFound) as unknown:
        jobs.set_alias("globex", M, PRODUCTION, 99)
    assert other.value.message.replace("2", "N") == unknown.value.message.replace("99", "N")
    assert jobs.aliases("globex", M) == {}


def test_aliases_name_servable_versions_only(jobs: JobStore) -> None:
    loading = jobs.allocate("acme", M, 1, "x")
    with pytest.raises(FailedPrecondition):
        jobs.set_alias("acme", M, PRODUCTION, loading.version)
    jobs.mark_version(M, loading.serial, RETIRED)
    jobs.set_alias("acme", M, "old", loading.version)  # a retired version may be named
    for bad in ("", "Prod", "9lives", "a" * 65, "prod/uction"):
        with pytest.raises(InvalidArgument):
            jobs.set_alias("acme", M, bad, 1)


def test_two_publishes_at_once_both_land_and_production_names_one(jobs: JobStore) -> None:
    """The first alias of a tenant's model created by two publishes at the same moment: no
    error (both insert the row; one statement each), and production names one of them."""
    made = [jobs.allocate("acme", M, 1, "x") for _ in range(2)]
    barrier = threading.Barrier(2)

    def promote(version):  # type: ignore[no-untyped-def]
        barrier.wait()
        jobs.promote(M, version.serial, {})

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(promote, made))
    names = jobs.aliases("acme", M)
    assert names[PRODUCTION] in {v.version for v in made}
    assert all(jobs.get_version("acme", M, v.version).state == READY for v in made)  # type: ignore[union-attr]


def test_a_database_from_before_numbers_gains_the_columns_and_the_unique_index(
    database_url: str,
) -> None:
    """The tables as the previous release made them (no ``number``, ``lineage`` or index):
    start-up adds both columns and the unique index, old rows keep their numbers, and two
    replicas allocating at once still get distinct numbers."""
    from sqlalchemy import Column as C
    from sqlalchemy import Float, MetaData, String, Table, Text, create_engine, inspect
    from sqlalchemy import Integer as I

    old = MetaData()
    Table(
        "unlearning_versions",
        old,
        C("model_name", String(255), primary_key=True),
        C("version", I, primary_key=True),
        C("tenant", String(255), nullable=False),
        C("state", String(16), nullable=False),
        C("parent_version", I, nullable=False),
        C("parent_job_id", String(64), nullable=False),
        C("method", String(32), nullable=False),
        C("metrics", Text, nullable=False),
        C("created_at", Float, nullable=False),
        C("idempotency_key", String(255), nullable=True),
    )
    engine = create_engine(database_url)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(old.tables["unlearning_versions"]).values(
                model_name=M,
                version=2,
                tenant="acme",
                state=READY,
                parent_version=1,
                parent_job_id="j",
                method="x",
                metrics="{}",
                created_at=0.0,
            )
        )
    engine.dispose()

    jobs = JobStore(database_url)
    jobs.create_schema()
    jobs.create_schema()  # idempotent
    found = inspect(jobs.engine)
    assert {"number", "lineage"} <= {c["name"] for c in found.get_columns("unlearning_versions")}
    unique = [i for i in found.get_indexes("unlearning_versions") if i["unique"]]
    assert [i["column_names"] for i in unique] == [["tenant", "model_name", "number"]]
    assert jobs.get_version("acme", M, 2) is not None
    barrier = threading.Barrier(4)

    def allocate(_: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        return jobs.allocate("acme", M, 2, "x").version

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(allocate, range(4))) == [3, 4, 5, 6]
