"""The job store on SQLite and (marked ``postgres``) PostgreSQL: claims under leases, take
over after a lapse or a release, attempts, cancel, idempotency, version numbers."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.unlearning.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobSpec,
    JobStore,
)
from services.unlearning.registry import PREVIOUS, PRODUCTION, READY

M = "veil_classifier"
SPEC = JobSpec(M, 0, "synthfaces://?n=300&seed=7", (), ("a",), ("male",), "feature")


@pytest.fixture
def jobs(database_url: str) -> JobStore:
    store = JobStore(database_url)
    store.create_schema()
    return store


def test_claims_are_exclusive_and_leased(jobs: JobStore) -> None:
    ids = [jobs.submit("acme", SPEC, 1, f"f{i}").job_id for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        claimed = list(pool.map(lambda w: jobs.claim(f"w{w}", 30.0, 3), range(6)))
    taken = [c.job_id for c in claimed if c is not None]
    assert sorted(taken) == sorted(ids)  # each job once, none twice
    assert all(c.state == RUNNING and c.attempts == 1 for c in claimed if c is not None)
    assert jobs.claim("late", 30.0, 3) is None


def test_a_lapsed_or_released_lease_is_taken_over(jobs: JobStore) -> None:
    job = jobs.submit("acme", SPEC, 1, "f")
    assert jobs.claim("dead", 0.05, 3) is not None
    assert jobs.claim("other", 30.0, 3) is None  # the lease holds
    time.sleep(0.1)
    again = jobs.claim("other", 30.0, 3)
    assert again is not None and again.job_id == job.job_id and again.attempts == 2
    assert jobs.heartbeat(job.job_id, "dead", 30.0) == (False, False)  # no longer its job
    assert jobs.finish(job.job_id, "dead", FAILED, "x") is False
    assert jobs.release("other") == 1
    third = jobs.claim("third", 30.0, 3)
    assert third is not None and third.attempts == 3
    assert jobs.release("third") == 1
    assert jobs.claim("fourth", 30.0, 3) is None  # past max_attempts: failed, not retried
    final = jobs.get("acme", job.job_id)
    assert final.state == FAILED and "interrupted 3 times" in final.message


def test_cancel_and_terminal_states(jobs: JobStore) -> None:
    queued = jobs.submit("acme", SPEC, 1, "q")
    assert jobs.cancel("acme", queued.job_id, "no").state == CANCELLED
    with pytest.raises(FailedPrecondition):
        jobs.cancel("acme", queued.job_id, "")
    with pytest.raises(NotFound):
        jobs.cancel("globex", queued.job_id, "")
    running = jobs.submit("acme", SPEC, 1, "r")
    assert jobs.claim("w", 30.0, 3) is not None
    asked = jobs.cancel("acme", running.job_id, "stop")
    assert asked.state == RUNNING and asked.cancel_requested
    assert jobs.heartbeat(running.job_id, "w", 30.0, "training", 0.5) == (True, True)
    assert jobs.finish(running.job_id, "w", CANCELLED, "cancelled")
    assert jobs.get("acme", running.job_id).state == CANCELLED


def test_idempotency_is_per_tenant_and_per_request(jobs: JobStore) -> None:
    keyed = JobSpec(**{**SPEC.__dict__, "idempotency_key": "k"})
    first = jobs.submit("acme", keyed, 1, "same")
    assert jobs.submit("acme", keyed, 1, "same").job_id == first.job_id
    with pytest.raises(AlreadyExists):
        jobs.submit("acme", keyed, 1, "different")
    assert jobs.submit("globex", keyed, 1, "same").job_id != first.job_id
    assert jobs.get("acme", first.job_id).state == QUEUED
    with pytest.raises(NotFound):
        jobs.get("globex", first.job_id)


def test_versions_are_numbered_once_and_succeed_with_their_job(jobs: JobStore) -> None:
    job = jobs.submit("acme", SPEC, 1, "v")
    assert jobs.claim("w", 30.0, 3) is not None
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: jobs.allocate("acme", M, 1, "x", job.job_id), range(8)))
    numbers = sorted(v.version for v in made)
    assert numbers == list(range(2, 10)) and sorted(v.serial for v in made) == numbers
    assert [v.version for v in jobs.unfinished_versions(job.job_id)] == numbers
    second = next(v for v in made if v.version == 2)
    assert jobs.succeed(job.job_id, "w", second, {"task_accuracy": 0.9}, {"figures": {}})
    assert jobs.get("acme", job.job_id).state == SUCCEEDED
    version = jobs.get_version("acme", M, 2)
    assert (
        version is not None and version.state == READY and version.metrics["task_accuracy"] == 0.9
    )
    assert jobs.get_version("globex", M, 2) is None
    assert jobs.latest_ready("acme", M) == version
    assert jobs.aliases("acme", M) == {PRODUCTION: 2, PREVIOUS: 1}
    assert jobs.aliases("globex", M) == {}
