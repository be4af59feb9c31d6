"""Faults: a real ``veil serve unlearning`` process killed with SIGKILL mid-job, then started
again on the same database and store. No version is half-published, and the job is either
run again to a clean SUCCEEDED or, past its attempts, a clean FAILED. And a publication
interrupted between its writes (files staged, version row LOADING) is removed by the next
attempt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import unlearning_pb2 as pb
from services.runtime.client import wait_until_ready
from services.unlearning.jobs import JobSpec, JobStore
from services.unlearning.publishing import Publisher, Weights
from tests.support.server import free_port
from tests.unlearning.conftest import ENTRY, MODEL, TOKEN_A, TOKENS, Client, submit_request

pytestmark = pytest.mark.slow


class Served:
    """``veil serve unlearning`` in a subprocess over ``tmp``'s database and ``store``."""

    def __init__(self, tmp: Path, store: Path, **env: str) -> None:
        self.port = free_port()
        tokens = {token: grant.model_dump() for token, grant in TOKENS.items()}
        self.env = {
            **os.environ,
            "VEIL_UNLEARNING_PORT": str(self.port),
            "VEIL_UNLEARNING_METRICS_PORT": "0",
            "VEIL_UNLEARNING_DATABASE_URL": f"sqlite:///{tmp / 'unlearning.sqlite'}",
            "VEIL_UNLEARNING_STORE": str(store),
            "VEIL_UNLEARNING_WORK_DIR": str(tmp / "work"),
            "VEIL_UNLEARNING_TOKENS": json.dumps(tokens),
            "VEIL_UNLEARNING_POLL_S": "0.1",
            "VEIL_UNLEARNING_LEASE_S": "2",
            "VEIL_UNLEARNING_REFERENCE_STEPS": "5",
            "VEIL_UNLEARNING_MAX_STEPS": "100000",
            "VEIL_UNLEARNING_LOG_LEVEL": "WARNING",
            "VEIL_INFERENCE_STORE": str(store),
            "VEIL_INFERENCE_MODELS": json.dumps([MODEL]),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Served:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", "unlearning"], env=self.env
        )
        target = f"127.0.0.1:{self.port}"
        wait_until_ready(
            target, 90, alive=lambda: self.proc is not None and self.proc.poll() is None
        )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def served(tmp_path: Path, store: Path) -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for each in started:
        each.stop()


def wait_running(client: Client, job_id: str, timeout: float = 60) -> pb.Job:
    """Until the job trains (a phase past loading, progress above 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.GetJob(pb.GetJobRequest(job_id=job_id))
        if job.status.state == common_pb2.JOB_STATE_RUNNING and job.status.progress > 0:
            return job
        assert job.status.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)
        time.sleep(0.05)
    raise AssertionError("the job never started training")


def published(store: Path, repository: Path | None = None) -> list[str]:
    """Everything in the store and the repository besides version 1 (staged dirs too)."""
    found = sorted(p.name for p in store.iterdir() if p.name != ENTRY)
    if repository is not None:
        found += sorted(f"repo:{p.name}" for p in (repository / MODEL).iterdir() if p.name != "1")
    return found


@pytest.mark.parametrize("attempts", ["3", "1"], ids=["resumed", "failed"])
def test_kill_9_mid_job_leaves_no_half_published_version(
    tmp_path: Path, store: Path, served: list[Served], attempts: str
) -> None:
    first = Served(tmp_path, store)
    served.append(first.start())
    with grpc.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        client = Client(channel, TOKEN_A)
        job = client.SubmitJob(submit_request(options={"steps": "150"}))
        wait_running(client, job.status.job_id)
    first.kill()
    assert published(store) == []  # nothing staged in the store's view

    again = Served(tmp_path, store, VEIL_UNLEARNING_MAX_ATTEMPTS=attempts)
    served.append(again.start())
    with grpc.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        client = Client(channel, TOKEN_A)
        events = client.wait(job.status.job_id)
        final = client.GetJob(pb.GetJobRequest(job_id=job.status.job_id))
        versions = client.ListModelVersions(pb.ListModelVersionsRequest(model_name=MODEL))
    assert events[-1].status.state == final.status.state
    if attempts == "1":
        assert final.status.state == common_pb2.JOB_STATE_FAILED
        assert "interrupted" in final.status.message
        assert [v.ref.version for v in versions.versions] == [1]
        assert published(store) == []
    else:
        assert final.status.state == common_pb2.JOB_STATE_SUCCEEDED, final.status.message
        assert [v.ref.version for v in versions.versions] == [2, 1]
        assert published(store) == [f"{ENTRY}-v2"]


def test_an_interrupted_publication_is_removed_by_the_next_attempt(
    tmp_path: Path, store: Path
) -> None:
    """What a kill between the writes of a publication leaves (the version row LOADING, the
    entry staged or renamed, the repository directory written) is what a new attempt cleans
    before it trains: the files of both places and the row."""
    repository = tmp_path / "repo"
    (repository / MODEL / "1").mkdir(parents=True)
    (repository / MODEL / "1" / "model.py").write_text("# version 1\n")
    jobs = JobStore(f"sqlite:///{tmp_path / 'u.sqlite'}")
    jobs.create_schema()
    spec = JobSpec(MODEL, 0, "synthfaces://?n=300&seed=7", (), (), ("male",), "finetune")
    job = jobs.submit("acme", spec, 1, "f")
    claimed = jobs.claim("dead-replica", 0.01, 3)
    assert claimed is not None and claimed.job_id == job.job_id
    publisher = Publisher(store, ENTRY, MODEL, repository)
    number = jobs.allocate("acme", MODEL, 1, "finetune", job.job_id).version
    weights = Weights(b"not-really-weights", {}, {}, {}, {})
    publisher.publish(job.job_id, number, weights)  # renamed into both places, row LOADING
    staged = store / f".unlearning-{job.job_id}-{ENTRY}-v9"
    staged.mkdir()  # and a staged directory of a later try
    assert published(store, repository) == [staged.name, f"{ENTRY}-v2", "repo:2"]
    assert jobs.get_version("acme", MODEL, number) is not None

    time.sleep(0.05)  # the dead replica's lease lapses
    import asyncio

    from prometheus_client import CollectorRegistry

    from services.runtime.workers import WorkerPool
    from services.unlearning.core import Unlearning
    from services.unlearning.metrics import UnlearningMetrics
    from tests.unlearning.conftest import settings

    async def load(model: str, version: int) -> None:
        return None

    core = Unlearning(
        settings(tmp_path, store),
        jobs,
        publisher,
        load,
        UnlearningMetrics(CollectorRegistry()),
        WorkerPool(1, 0),
    )
    taken = jobs.claim(core.worker, 5.0, 3)
    assert taken is not None and taken.attempts == 2
    asyncio.run(core._clean_leftovers(taken.job_id))
    assert published(store, repository) == []
    assert not staged.exists()
    assert jobs.get_version("acme", MODEL, number) is None
