"""Real servers for the unlearning tests: a tiny model store (a random-init 16×16
classifier whose manifest says it was trained on ``synthfaces://?n=300&seed=7``), the
unlearning service on a SQLite file (or PostgreSQL) with the in-process inference backend,
and the tokens of two tenants. Jobs take seconds: tiny data, a few steps, a 5-step
retrained reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from services._proto.veil.v1 import common_pb2, unlearning_pb2_grpc
from services._proto.veil.v1 import unlearning_pb2 as pb
from services.kernels.classifiers import ClassifierConfig, build_classifier
from services.kernels.store import ModelStore
from services.runtime.settings import TokenGrant
from tests.support.server import ServerThread, bearer, serve

TOKEN_A, TOKEN_B = "unlearning-test-acme", "unlearning-test-globex"
TOKEN_SERVICE = "unlearning-test-protection-service"
TOKEN_OPERATOR = "unlearning-test-operator"
TOKENS = {
    TOKEN_OPERATOR: TokenGrant(
        tenant="veil-ops", scopes=["modelregistry:*", "modelregistry:promote"]
    ),
    TOKEN_A: TokenGrant(tenant="acme", scopes=["*"]),
    TOKEN_B: TokenGrant(tenant="globex", scopes=["*"]),
    TOKEN_SERVICE: TokenGrant(
        tenant="veil-protection", scopes=["modelregistry:resolve_model"], delegate=True
    ),
}
MODEL, ENTRY = "veil_classifier", "task-resnet"
BASE_URI = "synthfaces://?n=300&seed=7"
REVISED_URI = BASE_URI + "&resample=male&resample_seed=1"
REPLACED = tuple(f"synth-7-{i:06d}" for i in range(20))
TINY = ClassifierConfig(num_classes=3, resolution=16, width=8)


def tiny_store(root: Path) -> Path:
    """A store with ``task-resnet``: random init (seed 0), data ``BASE_URI``."""
    torch.manual_seed(0)
    model = build_classifier(TINY)
    ModelStore(root).save(
        ENTRY,
        "classifier",
        model.state_dict(),
        TINY.to_dict(),
        seed=0,
        data={"uri": BASE_URI, "n": 285, "resolution": 16},
        metrics={"held-out accuracy": 0.33},
    )
    return root


def settings(tmp: Path, store: Path, database_url: str | None = None, **overrides: Any):  # type: ignore[no-untyped-def]
    from services.inference.backend import InferenceSettings
    from services.unlearning.app import Settings

    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": None,
        "tokens": TOKENS,
        "database_url": database_url or f"sqlite:///{tmp / 'unlearning.sqlite'}",
        "store": store,
        "work_dir": tmp / "work",
        "inference": InferenceSettings(store=store, models=[MODEL]),
        "poll_s": 0.1,
        "lease_s": 3.0,
        "reference_steps": 5,
        "job_threads": 1,
        "max_steps": 50,
        "max_dataset_size": 1000,
        "max_sample_ids": 100,
        "shutdown_grace_s": 2.0,
        "readiness_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


def submit_request(**overrides: Any) -> pb.SubmitJobRequest:
    values: dict[str, Any] = {
        "base_model": common_pb2.ModelRef(name=MODEL),
        "revision": pb.DatasetRevision(dataset_uri=REVISED_URI, replaced_sample_ids=REPLACED),
        "forget_attributes": ["male"],
        "method": pb.UNLEARNING_METHOD_FINETUNE,
        "options": {"steps": "4"},
    }
    values.update(overrides)
    return pb.SubmitJobRequest(**values)


class Client:
    """A blocking stub that sends one tenant's token."""

    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self.stub = unlearning_pb2_grpc.UnlearningStub(channel)
        self.metadata = bearer(token)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.stub, name)
        return lambda request, **kw: method(request, metadata=self.metadata, timeout=60, **kw)

    def wait(self, job_id: str) -> list[pb.JobEvent]:
        """WatchJob to the end: every event."""
        return list(self.WatchJob(pb.WatchJobRequest(job_id=job_id)))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tiny_store(tmp_path / "store")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'unlearning.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def server(tmp_path: Path, store: Path, database_url: str) -> Iterator[ServerThread]:
    from services.unlearning.app import build_app

    with serve(build_app(settings(tmp_path, store, database_url))) as running:
        yield running


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as ch:
        yield ch


@pytest.fixture
def acme(channel: grpc.Channel) -> Client:
    return Client(channel, TOKEN_A)


@pytest.fixture
def globex(channel: grpc.Channel) -> Client:
    return Client(channel, TOKEN_B)
