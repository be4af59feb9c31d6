"""The unlearning core's ``Workers`` port, one contract run on an in-memory fake and on the
real adapter (``services.runtime.workers.WorkerPool``, as the app wires it); then the core
itself, with no server, runs a job to a published version on each."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import Unavailable
from services.runtime.workers import WorkerPool
from services.unlearning.core import Unlearning
from services.unlearning.jobs import SUCCEEDED, TERMINAL, JobSpec, JobStore
from services.unlearning.metrics import UnlearningMetrics
from services.unlearning.ports import Workers
from services.unlearning.publishing import Publisher
from tests.unlearning.conftest import ENTRY, MODEL, REPLACED, REVISED_URI, settings

T = TypeVar("T")
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class FakeWorkers:
    """The :class:`~services.unlearning.ports.Workers` port without a pool: each call on a
    thread of its own (``asyncio.to_thread``), unbounded."""

    def __init__(self) -> None:
        self.running = False

    def start(self) -> None:
        self.running = True

    def shutdown(self) -> None:
        self.running = False

    async def run(self, fn: Callable[..., T], /, *args: Any) -> T:
        if not self.running:
            raise Unavailable("the workers are not running (fake)")
        return await asyncio.to_thread(fn, *args)


@pytest.fixture(params=["fake", "pool"])
def workers(request: pytest.FixtureRequest) -> Workers:
    if request.param == "fake":
        return FakeWorkers()
    return WorkerPool(1, 0, name="veil-unlearning-test")


def test_workers_run_calls_between_start_and_shutdown(workers: Workers) -> None:
    def boom() -> None:
        raise KeyError("from the job")

    async def scenario() -> None:
        with pytest.raises(Unavailable):
            await workers.run(sum, [1, 2])
        workers.start()
        workers.start()  # idempotent
        assert await workers.run(sum, [1, 2], 10) == 13
        CALLER.set("job-7")
        assert await workers.run(CALLER.get) == "job-7"  # the caller's context goes along
        with pytest.raises(KeyError, match="from the job"):
            await workers.run(boom)
        workers.shutdown()
        workers.shutdown()  # idempotent
        with pytest.raises(Unavailable):
            await workers.run(sum, [1])

    asyncio.run(scenario())


def test_the_core_runs_a_job_to_a_published_version(
    workers: Workers, tmp_path: Path, store: Path
) -> None:
    jobs = JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    loaded: list[tuple[str, int]] = []

    async def load(model: str, version: int) -> None:
        loaded.append((model, version))

    spec = JobSpec(MODEL, 0, REVISED_URI, (), REPLACED, ("male",), "finetune", {"steps": "4"})
    core = Unlearning(
        settings(tmp_path, store),
        jobs,
        Publisher(store, ENTRY, MODEL, None),
        load,
        UnlearningMetrics(CollectorRegistry()),
        workers,
    )

    async def scenario() -> str:
        await core.start()
        try:
            job = await core.submit("acme", spec)
            async for seen in core.watch("acme", job.job_id):
                if seen.state in TERMINAL:
                    return f"{seen.state} {seen.message}"
            return "watch ended"
        finally:
            await core.stop()

    try:
        outcome = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        jobs.close()
    assert outcome.startswith(SUCCEEDED), outcome
    assert loaded == [(MODEL, 2)]
    assert (store / f"{ENTRY}-v2").is_dir()
