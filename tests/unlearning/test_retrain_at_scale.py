"""The ``retrain`` method at scale: the fresh model is trained by ``veil train classifier``
on the revised dataset under ``torchrun`` (2 gloo ranks here; the GPU training Job in a
cluster), and the unlearning service checks it, evaluates it as any retrain and publishes
it as the tenant's next version — no training in the service. What is not a retrain of
the base on exactly the revised data is refused before anything is queued."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import registry_pb2 as rpb
from services._proto.veil.v1 import unlearning_pb2 as pb
from services.cli.main import main
from services.kernels.manifests import StoreReader
from services.unlearning.trained import TrainedStore, adopt
from tests.support.torchrun import run, torchrun
from tests.unlearning.conftest import (
    BASE_URI,
    ENTRY,
    MODEL,
    REVISED_URI,
    TOKEN_A,
    Client,
    submit_request,
)
from tests.unlearning.test_registry_service import Registry
from tests.unlearning.test_service import code_of, run_job

SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED
TINY = ["--resolution", "16", "--width", "8", "--steps", "6", "--batch-size", "8",
        "--threads", "1", "--no-progress", "--no-register", "--augment", "none"]  # fmt: skip


def _train(store: Path, tmp: Path, name: str, data: str, *extra: str) -> None:
    """``veil train classifier`` on 2 ranks under torchrun into ``store``, for tenant acme
    unless ``extra`` says otherwise (a later ``--tenant`` wins)."""
    argv = torchrun("-m", "services.cli", "train", "classifier", *TINY, "--data", data,
                    "--name", name, "--out", str(store), "--checkpoint-dir",
                    str(tmp / f"ckpt-{name}"), "--cache-dir", str(tmp / "cache"),
                    "--tenant", "acme", *extra)  # fmt: skip
    run(argv, tmp)


def test_a_retrain_trained_under_torchrun_is_published_as_the_tenants_version(
    acme: Client, store: Path, tmp_path: Path, channel: grpc.Channel, database_url: str
) -> None:
    _train(store, tmp_path, "task-resnet-retrained", REVISED_URI, "--registry-url", database_url)
    trained = StoreReader(store).manifest("task-resnet-retrained")
    assert trained.metrics["ranks"] == 2 and trained.data["uri"] == REVISED_URI
    assert trained.data["tenant"] == "acme"
    # One tenant's retrain is never a model every tenant sees: not registered by
    # `veil train`, not adopted when the service starts.
    registry_db = TrainedStore(database_url)
    try:
        adopt(registry_db, store)
        assert registry_db.trained_versions("task-resnet-retrained") == []
    finally:
        registry_db.close()

    job, events = run_job(
        acme,
        method=pb.UNLEARNING_METHOD_RETRAIN,
        options={},
        trained_entry="task-resnet-retrained",
    )
    assert events[-1].status.state == SUCCEEDED, events[-1].status.message
    assert job.spec.trained_entry == "task-resnet-retrained"
    report = events[-1].report  # evaluated as any retrain, and its own reference
    assert 0.0 <= report.task_accuracy <= 1.0 and [x.attribute for x in report.leakage] == ["male"]
    assert report.retrain_reference.task_accuracy == pytest.approx(report.task_accuracy)
    assert report.wall_seconds == pytest.approx(trained.metrics["wall time (s)"])
    assert job.result_model == common_pb2.ModelRef(name=MODEL, version=2)

    # Published as trained: the version's weights are the entry's, its lineage names it.
    published = StoreReader(store).blob(f"{ENTRY}-v2")[1]
    assert hashlib.sha256(published).hexdigest() == trained.sha256
    registry = Registry(channel, TOKEN_A)
    version = registry.GetModel(rpb.GetModelRequest(name=MODEL)).versions[0]
    assert version.ref.version == 2
    assert version.lineage["trained_entry"] == "task-resnet-retrained"
    assert version.lineage["trained_sha256"] == trained.sha256
    assert "veil train classifier" in version.lineage["trained_command"]


def _train_here(store: Path, tmp: Path, name: str, data: str, *extra: str) -> None:
    """One process, one step: what the refusals need."""
    assert main(["train", "classifier", *TINY, "--steps", "1", "--data", data, "--name", name,
                 "--out", str(store), "--checkpoint-dir", str(tmp / f"ckpt-{name}"),
                 "--cache-dir", str(tmp / "cache"), "--tenant", "acme", *extra]) == 0  # fmt: skip


def test_what_is_not_a_retrain_on_the_revised_data_is_refused(
    acme: Client, store: Path, tmp_path: Path
) -> None:
    _train_here(store, tmp_path, "on-the-base-data", BASE_URI)
    _train_here(store, tmp_path, "wider", REVISED_URI, "--width", "16")
    _train_here(store, tmp_path, "globex-s", REVISED_URI, "--tenant", "globex")
    for entry, code, said in (
        ("on-the-base-data", grpc.StatusCode.FAILED_PRECONDITION, "not on the revision's dataset"),
        ("wider", grpc.StatusCode.FAILED_PRECONDITION, "width 16 (base 8)"),
        ("missing", grpc.StatusCode.FAILED_PRECONDITION, "veil train classifier --data"),
        ("globex-s", grpc.StatusCode.FAILED_PRECONDITION, "no entry 'globex-s' trained for this"),
        ("../escape", grpc.StatusCode.INVALID_ARGUMENT, "trained_entry"),
    ):
        request = dict(method=pb.UNLEARNING_METHOD_RETRAIN, options={}, trained_entry=entry)
        got = code_of(acme.SubmitJob, submit_request(**request))
        assert got[0] == code and said in got[1], (entry, got)
    got = code_of(acme.SubmitJob, submit_request(trained_entry="on-the-base-data"))
    assert got[0] == grpc.StatusCode.INVALID_ARGUMENT and "RETRAIN only" in got[1]
    assert not acme.ListJobs(pb.ListJobsRequest()).jobs  # nothing was queued
