"""``veil.v1.Unlearning`` over real gRPC, on SQLite and (marked ``postgres``) PostgreSQL:
a job submitted, watched to completion and its version inferred with; every bad input's
status; tenant isolation; idempotent submission; paging; cancel; rollback."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import unlearning_pb2 as pb
from services.inference.backend import InferenceSettings
from services.inference.local import LocalBackend
from tests.support.server import ServerThread
from tests.unlearning.conftest import (
    BASE_URI,
    ENTRY,
    MODEL,
    REPLACED,
    REVISED_URI,
    Client,
    submit_request,
)

SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED


def code_of(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value.code(), caught.value.details()


def run_job(client: Client, **overrides) -> tuple[pb.Job, list[pb.JobEvent]]:  # type: ignore[no-untyped-def]
    job = client.SubmitJob(submit_request(**overrides))
    events = client.wait(job.status.job_id)
    return client.GetJob(pb.GetJobRequest(job_id=job.status.job_id)), events


def test_a_job_runs_to_a_new_version_that_serves(
    acme: Client, store: Path, server: ServerThread
) -> None:
    job = acme.SubmitJob(submit_request(idempotency_key="first"))
    assert job.status.state == common_pb2.JOB_STATE_QUEUED
    assert job.spec.base_model.version == 1  # 0 resolved to the latest READY version
    events = acme.wait(job.status.job_id)
    states = [e.status.state for e in events]
    assert states[-1] == SUCCEEDED, events[-1].status.message
    assert common_pb2.JOB_STATE_RUNNING in states
    assert events[-1].HasField("report") and events[-1].status.progress == 1.0
    progress = [e.status.progress for e in events]
    assert progress == sorted(progress)
    report = events[-1].report
    assert 0.0 <= report.task_accuracy <= 1.0
    assert [leak.attribute for leak in report.leakage] == ["male"]
    assert report.HasField("retrain_reference") and report.retrain_reference.wall_seconds > 0

    done = acme.GetJob(pb.GetJobRequest(job_id=job.status.job_id))
    assert done.result_model == common_pb2.ModelRef(name=MODEL, version=2)
    version = acme.GetModelVersion(pb.GetModelVersionRequest(ref=done.result_model))
    assert version.state == pb.MODEL_VERSION_STATE_READY
    assert version.parent_job_id == job.status.job_id and version.parent_version == 1
    assert version.method == "finetune"
    assert version.metrics["task_accuracy"] == pytest.approx(report.task_accuracy)
    latest = acme.GetModelVersion(pb.GetModelVersionRequest(ref=common_pb2.ModelRef(name=MODEL)))
    assert latest.ref.version == 2

    manifest = json.loads((store / f"{ENTRY}-v2" / "manifest.json").read_text())
    assert manifest["unlearning"]["parent_version"] == 1
    assert manifest["unlearning"]["method"] == "finetune"
    assert manifest["data"]["uri"] == REVISED_URI
    assert not list(store.glob(".unlearning-*"))

    registry = server.server.app.registry
    assert (
        registry.get_sample_value(
            "veil_unlearning_versions_published_total", {"method": "finetune"}
        )
        == 1.0
    )
    assert (
        registry.get_sample_value("veil_unlearning_jobs_finished_total", {"state": "succeeded"})
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "veil_unlearning_job_duration_seconds_count",
            {"method": "finetune", "state": "succeeded"},
        )
        == 1.0
    )

    backend = LocalBackend(InferenceSettings(store=store, models=[MODEL]))
    images = np.zeros((2, 3, 16, 16), dtype=np.float32)
    new, _ = asyncio.run(backend.classify(images, version=2))
    old, _ = asyncio.run(backend.classify(images, version=1))
    assert new.shape == old.shape == (2, 3) and not np.allclose(new, old)


def test_submit_is_idempotent_by_key(acme: Client, globex: Client) -> None:
    first = acme.SubmitJob(submit_request(idempotency_key="k1"))
    again = acme.SubmitJob(submit_request(idempotency_key="k1"))
    assert again.status.job_id == first.status.job_id
    code, _ = code_of(acme.SubmitJob, submit_request(idempotency_key="k1", options={"steps": "3"}))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    other = globex.SubmitJob(submit_request(idempotency_key="k1"))  # keys are per tenant
    assert other.status.job_id != first.status.job_id
    unkeyed = acme.SubmitJob(submit_request())
    assert unkeyed.status.job_id != first.status.job_id


def test_tenants_never_see_each_other(acme: Client, globex: Client) -> None:
    job, _ = run_job(acme)
    job_id = job.status.job_id
    for call, request in (
        (globex.GetJob, pb.GetJobRequest(job_id=job_id)),
        (globex.CancelJob, pb.CancelJobRequest(job_id=job_id)),
        (globex.GetModelVersion, pb.GetModelVersionRequest(ref=job.result_model)),
        (globex.RollbackModel, pb.RollbackModelRequest(target=job.result_model)),
    ):
        code, message = code_of(call, request)
        assert code == grpc.StatusCode.NOT_FOUND, message
    code, _ = code_of(lambda r: list(globex.WatchJob(r)), pb.WatchJobRequest(job_id=job_id))
    assert code == grpc.StatusCode.NOT_FOUND
    unknown = code_of(globex.GetJob, pb.GetJobRequest(job_id="no-such-job"))
    assert code_of(globex.GetJob, pb.GetJobRequest(job_id=job_id))[1].replace(
        job_id, "X"
    ) == unknown[1].replace("no-such-job", "X")  # the same answer: nothing leaks
    assert globex.ListJobs(pb.ListJobsRequest()).jobs == []
    versions = globex.ListModelVersions(pb.ListModelVersionsRequest(model_name=MODEL)).versions
    assert [v.ref.version for v in versions] == [1]
    latest = globex.GetModelVersion(pb.GetModelVersionRequest(ref=common_pb2.ModelRef(name=MODEL)))
    assert latest.ref.version == 1
    code, _ = code_of(globex.ListJobs, pb.ListJobsRequest(tenant_id="acme"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # globex may not unlearn from acme's version either
    code, _ = code_of(globex.SubmitJob, submit_request(base_model=job.result_model))
    assert code == grpc.StatusCode.NOT_FOUND


BAD = [
    ("unknown model", {"base_model": common_pb2.ModelRef(name="nope")}, "NOT_FOUND"),
    ("unknown version", {"base_model": common_pb2.ModelRef(name=MODEL, version=9)}, "NOT_FOUND"),
    ("no method", {"method": pb.UNLEARNING_METHOD_UNSPECIFIED}, "INVALID_ARGUMENT"),
    ("unknown method", {"method": 99}, "INVALID_ARGUMENT"),
    ("no attributes", {"forget_attributes": []}, "INVALID_ARGUMENT"),
    ("unknown option", {"options": {"stepz": "3"}}, "INVALID_ARGUMENT"),
    ("bad option value", {"options": {"steps": "many"}}, "INVALID_ARGUMENT"),
    ("steps above the cap", {"options": {"steps": "51"}}, "INVALID_ARGUMENT"),
    ("batch above the cap", {"options": {"batch_size": "5000"}}, "INVALID_ARGUMENT"),
    ("long option", {"options": {"seed": "1" * 300}}, "INVALID_ARGUMENT"),
    ("too many options", {"options": {f"k{i}": "1" for i in range(40)}}, "INVALID_ARGUMENT"),
    (
        "dataset above the cap",
        {"revision": pb.DatasetRevision(dataset_uri="synthfaces://?n=5000&seed=7")},
        "INVALID_ARGUMENT",
    ),
    (
        "too many sample ids",
        {
            "revision": pb.DatasetRevision(
                dataset_uri=REVISED_URI, removed_sample_ids=[f"x{i}" for i in range(101)]
            )
        },
        "INVALID_ARGUMENT",
    ),
    ("no dataset", {"revision": pb.DatasetRevision()}, "INVALID_ARGUMENT"),
    ("too many attributes", {"forget_attributes": ["male"] * 17}, "INVALID_ARGUMENT"),
]
REVISIONS = [
    ("unknown scheme", "bogus://x", (), (), "revision.dataset_uri", "unknown dataset URI"),
    (
        "missing root",
        "folder:///no/such/dir?attributes=a",
        (),
        (),
        "revision.dataset_uri",
        "not a dir",
    ),
    ("bad parameter", BASE_URI + "&resample_seed=two", (), (), "revision.dataset_uri", "integer"),
    (
        "resample of an unknown attribute",
        BASE_URI + "&resample=tattoo",
        (),
        (),
        "revision.dataset_uri",
        "tattoo",
    ),
    (
        "removed id not in the base set",
        REVISED_URI,
        ("synth-7-999999",),
        (),
        "revision.removed_sample_ids",
        "synth-7-999999",
    ),
    (
        "replaced id of another dataset",
        REVISED_URI,
        (),
        ("synth-0-000001",),
        "revision.replaced_sample_ids",
        "base model's training set",
    ),
    (
        "replaced id the revision lacks",
        "synthfaces://?n=100&seed=7",
        (),
        ("synth-7-000200",),
        "revision.replaced_sample_ids",
        "revised dataset",
    ),
]


@pytest.mark.parametrize(("case", "overrides", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_submissions_are_refused_before_a_job_exists(
    acme: Client, case: str, overrides: dict, code: str
) -> None:
    got, message = code_of(acme.SubmitJob, submit_request(**overrides))
    assert got.name == code, message
    assert acme.ListJobs(pb.ListJobsRequest()).jobs == []


def test_unknown_attributes_name_the_known_ones(acme: Client) -> None:
    code, message = code_of(acme.SubmitJob, submit_request(forget_attributes=["male", "tattoo"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "tattoo" in message and "dark_skin" in message and "glasses" in message


@pytest.mark.parametrize(
    ("case", "uri", "removed", "replaced", "field", "said"),
    REVISIONS,
    ids=[r[0] for r in REVISIONS],
)
def test_a_revision_the_kernels_would_refuse_is_refused_at_submit(
    acme: Client, case: str, uri: str, removed: tuple, replaced: tuple, field: str, said: str
) -> None:
    """What used to fail the job after it was queued (a dataset that does not open, ids
    that are not the base model's) is INVALID_ARGUMENT naming the field, and no job."""
    revision = pb.DatasetRevision(
        dataset_uri=uri, removed_sample_ids=removed, replaced_sample_ids=replaced
    )
    with pytest.raises(grpc.RpcError) as caught:
        acme.SubmitJob(submit_request(revision=revision))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details() and said in caught.value.details()
    assert acme.ListJobs(pb.ListJobsRequest()).jobs == []


def test_cancel(acme: Client) -> None:
    running = acme.SubmitJob(submit_request(options={"steps": "50"}))
    queued = acme.SubmitJob(submit_request(options={"steps": "50", "seed": "1"}))
    cancelled = acme.CancelJob(pb.CancelJobRequest(job_id=queued.status.job_id, reason="test"))
    assert cancelled.status.state == common_pb2.JOB_STATE_CANCELLED  # never started
    assert "test" in cancelled.status.message
    acme.CancelJob(pb.CancelJobRequest(job_id=running.status.job_id))
    events = acme.wait(running.status.job_id)
    assert events[-1].status.state == common_pb2.JOB_STATE_CANCELLED
    for job_id in (queued.status.job_id, running.status.job_id):
        code, _ = code_of(acme.CancelJob, pb.CancelJobRequest(job_id=job_id))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    versions = acme.ListModelVersions(pb.ListModelVersionsRequest(model_name=MODEL)).versions
    assert [v.ref.version for v in versions] == [1]


def test_list_jobs_pages_newest_first(acme: Client) -> None:
    ids = [acme.SubmitJob(submit_request(idempotency_key=f"p{i}")).status.job_id for i in range(5)]
    for job_id in ids:
        acme.CancelJob(pb.CancelJobRequest(job_id=job_id))
    seen: list[str] = []
    token = ""
    while True:
        page = acme.ListJobs(
            pb.ListJobsRequest(page=common_pb2.PageRequest(page_size=2, page_token=token))
        )
        assert page.page.total_size == 5 and len(page.jobs) <= 2
        seen += [j.status.job_id for j in page.jobs]
        token = page.page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    filtered = acme.ListJobs(pb.ListJobsRequest(state=common_pb2.JOB_STATE_SUCCEEDED))
    assert filtered.jobs == [] and filtered.page.total_size == 0
    first = acme.ListJobs(pb.ListJobsRequest(page=common_pb2.PageRequest(page_size=2)))
    code, _ = code_of(
        acme.ListJobs,
        pb.ListJobsRequest(
            model_name="other",
            page=common_pb2.PageRequest(page_token=first.page.next_page_token),
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(acme.ListJobs, pb.ListJobsRequest(page=common_pb2.PageRequest(page_size=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_rollback_publishes_the_old_weights_as_the_latest(acme: Client, store: Path) -> None:
    job, _ = run_job(acme, idempotency_key="r1")
    assert job.status.state == SUCCEEDED, job.status.message
    request = pb.RollbackModelRequest(
        target=common_pb2.ModelRef(name=MODEL, version=1), reason="bad", idempotency_key="rb"
    )
    rolled = acme.RollbackModel(request)
    assert rolled.ref.version == 3 and rolled.method == "rollback" and rolled.parent_version == 1
    assert acme.RollbackModel(request).ref.version == 3  # idempotent
    base = json.loads((store / ENTRY / "manifest.json").read_text())
    copy = json.loads((store / f"{ENTRY}-v3" / "manifest.json").read_text())
    assert copy["sha256"] == base["sha256"]
    versions = acme.ListModelVersions(pb.ListModelVersionsRequest(model_name=MODEL)).versions
    states = {v.ref.version: v.state for v in versions}
    assert states == {
        3: pb.MODEL_VERSION_STATE_READY,
        2: pb.MODEL_VERSION_STATE_RETIRED,
        1: pb.MODEL_VERSION_STATE_READY,
    }
    latest = acme.GetModelVersion(pb.GetModelVersionRequest(ref=common_pb2.ModelRef(name=MODEL)))
    assert latest.ref.version == 3
    for target, expected in ((0, "INVALID_ARGUMENT"), (7, "NOT_FOUND")):
        bad = pb.RollbackModelRequest(target=common_pb2.ModelRef(name=MODEL, version=target))
        assert code_of(acme.RollbackModel, bad)[0].name == expected
    bad = pb.RollbackModelRequest(target=common_pb2.ModelRef(name="nope", version=1))
    assert code_of(acme.RollbackModel, bad)[0] == grpc.StatusCode.NOT_FOUND


def test_list_versions_pages(acme: Client) -> None:
    for _ in range(3):
        acme.RollbackModel(
            pb.RollbackModelRequest(target=common_pb2.ModelRef(name=MODEL, version=1))
        )
    seen, token = [], ""
    while True:
        page = acme.ListModelVersions(
            pb.ListModelVersionsRequest(
                model_name=MODEL, page=common_pb2.PageRequest(page_size=3, page_token=token)
            )
        )
        assert page.page.total_size == 4
        seen += [v.ref.version for v in page.versions]
        token = page.page.next_page_token
        if not token:
            break
    assert seen == [4, 3, 2, 1]
    code, _ = code_of(acme.ListModelVersions, pb.ListModelVersionsRequest(model_name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(
        acme.GetModelVersion,
        pb.GetModelVersionRequest(ref=common_pb2.ModelRef(name=MODEL, version=-1)),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert REPLACED  # the shared revision is not empty
