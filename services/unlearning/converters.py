"""Protobuf ↔ the unlearning service's domain objects (no logic beyond the mapping)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from google.protobuf import timestamp_pb2

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import unlearning_pb2 as pb
from services.common.errors import InvalidArgument
from services.unlearning.core import Page
from services.unlearning.jobs import Job, JobSpec
from services.unlearning.registry import Version

METHOD_NAMES: dict[int, str] = {
    pb.UNLEARNING_METHOD_RETRAIN: "retrain",
    pb.UNLEARNING_METHOD_FINETUNE: "finetune",
    pb.UNLEARNING_METHOD_FEATURE: "feature",
    pb.UNLEARNING_METHOD_SCRUB: "scrub",
}
METHOD_OF = {name: number for number, name in METHOD_NAMES.items()}
JOB_STATE = {
    "queued": common_pb2.JOB_STATE_QUEUED,
    "running": common_pb2.JOB_STATE_RUNNING,
    "succeeded": common_pb2.JOB_STATE_SUCCEEDED,
    "failed": common_pb2.JOB_STATE_FAILED,
    "cancelled": common_pb2.JOB_STATE_CANCELLED,
}
STATE_OF = {number: name for name, number in JOB_STATE.items()}
VERSION_STATE = {
    "loading": pb.MODEL_VERSION_STATE_LOADING,
    "ready": pb.MODEL_VERSION_STATE_READY,
    "retired": pb.MODEL_VERSION_STATE_RETIRED,
    "failed": pb.MODEL_VERSION_STATE_FAILED,
}


def spec_from_pb(request: pb.SubmitJobRequest) -> JobSpec:
    """Unknown or unset methods are INVALID_ARGUMENT (an unknown enum value = UNSPECIFIED)."""
    method = METHOD_NAMES.get(request.method)
    if method is None:
        raise InvalidArgument(
            f"method must be one of {sorted(METHOD_OF)}", details={"field": "method"}
        )
    if not request.HasField("base_model"):
        raise InvalidArgument("base_model is required", details={"field": "base_model"})
    if request.base_model.version < 0:
        raise InvalidArgument("base_model.version must be >= 0", details={"field": "base_model"})
    return JobSpec(
        model_name=request.base_model.name,
        base_version=int(request.base_model.version),
        dataset_uri=request.revision.dataset_uri,
        removed_ids=tuple(request.revision.removed_sample_ids),
        replaced_ids=tuple(request.revision.replaced_sample_ids),
        attributes=tuple(request.forget_attributes),
        method=method,
        options=dict(request.options),
        idempotency_key=request.idempotency_key,
        trained_entry=request.trained_entry,
    )


def spec_to_pb(job: Job) -> pb.SubmitJobRequest:
    spec = job.spec
    return pb.SubmitJobRequest(
        tenant_id=job.tenant,
        base_model=common_pb2.ModelRef(name=spec.model_name, version=job.base_version),
        revision=pb.DatasetRevision(
            dataset_uri=spec.dataset_uri,
            removed_sample_ids=list(spec.removed_ids),
            replaced_sample_ids=list(spec.replaced_ids),
        ),
        forget_attributes=list(spec.attributes),
        method=METHOD_OF[spec.method],  # type: ignore[arg-type]
        options=spec.options,
        idempotency_key=spec.idempotency_key,
        trained_entry=spec.trained_entry,
    )


def _time(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def status_to_pb(job: Job) -> common_pb2.JobStatus:
    status = common_pb2.JobStatus(
        job_id=job.job_id,
        state=JOB_STATE[job.state],
        progress=1.0 if job.terminal else job.progress,
        message=job.message,
    )
    for name, value in (
        ("created_at", job.created_at),
        ("started_at", job.started_at),
        ("finished_at", job.finished_at),
    ):
        stamp = _time(value)
        if stamp is not None:
            getattr(status, name).CopyFrom(stamp)
    return status


def _leakage(rows: list[list[Any]]) -> list[pb.AttributeLeakage]:
    return [
        pb.AttributeLeakage(attribute=str(a), probe_accuracy=float(p), chance_accuracy=float(c))
        for a, p, c in rows
    ]


def report_to_pb(report: dict[str, Any] | None) -> pb.UnlearningReport | None:
    if not report:
        return None
    figures = report["figures"]
    out = pb.UnlearningReport(
        task_accuracy=float(figures["task_accuracy"]),
        leakage=_leakage(figures["leakage"]),
        membership_inference_auc=float(figures["membership_inference_auc"]),
        wall_seconds=float(figures["wall_seconds"]),
    )
    reference = report.get("reference")
    if reference:
        out.retrain_reference.CopyFrom(
            pb.ReferenceFigures(
                task_accuracy=float(reference["task_accuracy"]),
                leakage=_leakage(reference["leakage"]),
                membership_inference_auc=float(reference["membership_inference_auc"]),
                wall_seconds=float(reference["wall_seconds"]),
            )
        )
    return out


def job_to_pb(job: Job) -> pb.Job:
    out = pb.Job(status=status_to_pb(job), spec=spec_to_pb(job))
    if job.state == "succeeded":
        out.result_model.CopyFrom(
            common_pb2.ModelRef(name=job.spec.model_name, version=job.result_version)
        )
        report = report_to_pb(job.report)
        if report is not None:
            out.report.CopyFrom(report)
    return out


def event_to_pb(job: Job) -> pb.JobEvent:
    event = pb.JobEvent(status=status_to_pb(job), phase=job.phase)
    if job.state == "succeeded":
        report = report_to_pb(job.report)
        if report is not None:
            event.report.CopyFrom(report)
    return event


def version_to_pb(version: Version) -> pb.ModelVersion:
    out = pb.ModelVersion(
        ref=common_pb2.ModelRef(name=version.model_name, version=version.version),
        state=VERSION_STATE[version.state],
        parent_job_id=version.parent_job_id,
        metrics={k: float(v) for k, v in version.metrics.items()},
        parent_version=version.parent_version,
        method=version.method,
        aliases=list(version.aliases),
        lineage={
            k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in version.lineage.items()
            if v is not None
        },
    )
    stamp = _time(version.created_at)
    if stamp is not None and version.created_at > 0:
        out.created_at.CopyFrom(stamp)
    return out


def job_state_from_pb(value: int) -> str:
    """UNSPECIFIED (or an unknown value) = every state."""
    return STATE_OF.get(value, "")  # type: ignore[call-overload]


def page_from_pb(page: common_pb2.PageRequest, filters: Any, default: int, cap: int) -> Page:
    """The page a request asks for; a token from other filters is INVALID_ARGUMENT."""
    if page.page_size < 0:
        raise InvalidArgument("page.page_size must be >= 0", details={"field": "page.page_size"})
    size = min(page.page_size or default, cap)
    if not page.page_token:
        return Page(0, size)
    try:
        data = json.loads(base64.urlsafe_b64decode(page.page_token.encode()))
        offset, digest = int(data["o"]), str(data["f"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(
            "page.page_token is not a token this server issued",
            details={"field": "page.page_token"},
        ) from None
    if digest != _digest(filters) or offset < 0:
        raise InvalidArgument(
            "page.page_token belongs to another query (tokens are only valid with the same "
            "filters)",
            details={"field": "page.page_token"},
        )
    return Page(offset, size)


def page_to_pb(page: Page, returned: int, total: int, filters: Any) -> common_pb2.PageResponse:
    end = page.offset + returned
    token = ""
    if end < total:
        text = json.dumps({"o": end, "f": _digest(filters)})
        token = base64.urlsafe_b64encode(text.encode()).decode()
    return common_pb2.PageResponse(next_page_token=token, total_size=total)


def _digest(filters: Any) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]
