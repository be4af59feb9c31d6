"""Protobuf ↔ the protection service's domain objects (no logic beyond the mapping)."""

from __future__ import annotations

import math

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import protection_pb2 as pb
from services.common.errors import InvalidArgument
from services.kernels.domain import DomainScore
from services.protection.core import (
    Evaluation,
    Pair,
    Params,
    Protected,
    ProtectJob,
    with_defaults,
)

MODE_NAMES: dict[int, str] = {
    pb.PROTECTION_MODE_UNSPECIFIED: "",
    pb.PROTECTION_MODE_FMD: "fmd",
    pb.PROTECTION_MODE_FAST: "fast",
}
MODE_OF: dict[str, str] = {"fmd": "PROTECTION_MODE_FMD", "fast": "PROTECTION_MODE_FAST"}
ROBUSTNESS_NAMES: dict[int, str] = {
    pb.ROBUSTNESS_UNSPECIFIED: "",
    pb.ROBUSTNESS_NONE: "none",
    pb.ROBUSTNESS_JPEG: "jpeg",
    pb.ROBUSTNESS_FULL: "full",
}
ENCODING_NAMES: dict[int, str] = {
    pb.IMAGE_ENCODING_UNSPECIFIED: "",
    pb.IMAGE_ENCODING_PNG: "png",
    pb.IMAGE_ENCODING_JPEG: "jpeg",
}
ROBUSTNESS_OF: dict[str, pb.Robustness] = {
    "none": pb.ROBUSTNESS_NONE,
    "jpeg": pb.ROBUSTNESS_JPEG,
    "full": pb.ROBUSTNESS_FULL,
}


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{field} must be a finite number >= 0", details={"field": field})
    return float(value)


def _enum_name(value: int, names: dict[int, str], field: str) -> str:
    """The domain name of a wire enum value ("" = unspecified, the server's default); a
    number this server does not know (a newer client's) is INVALID_ARGUMENT naming ``field``."""
    if value not in names:
        raise InvalidArgument(f"{field}: unknown value {value}", details={"field": field})
    return names[value]


def robustness_from_pb(value: int) -> str:
    return _enum_name(value, ROBUSTNESS_NAMES, "params.robustness")


def encoding_from_pb(value: int) -> str:
    return _enum_name(value, ENCODING_NAMES, "output_encoding")


def params_from_pb(params: pb.FmdParams) -> Params:
    if params.iterations < 0:
        raise InvalidArgument(
            "params.iterations must be >= 0", details={"field": "params.iterations"}
        )
    return with_defaults(
        Params(
            epsilon=_finite(params.epsilon, "params.epsilon"),
            step_size=_finite(params.step_size, "params.step_size"),
            iterations=int(params.iterations),
            ce_weight=(
                _finite(params.ce_weight, "params.ce_weight")
                if params.HasField("ce_weight")
                else Params().ce_weight
            ),
            feature_layer=params.feature_layer,
            robustness=robustness_from_pb(params.robustness),
        )
    )


def job_from_pb(request: pb.ProtectRequest, time_budget_s: float | None) -> ProtectJob:
    if not request.image.data:
        raise InvalidArgument("image is required", details={"field": "image"})
    return ProtectJob(
        image=request.image.data,
        label=int(request.label) if request.HasField("label") else None,
        mode=MODE_NAMES.get(request.mode, ""),
        params=params_from_pb(request.params),
        model=request.authorized_model.name,
        version=int(request.authorized_model.version),
        request_id=request.request_id,
        time_budget_s=time_budget_s,
        encoding=encoding_from_pb(request.output_encoding),
        jpeg_quality=_quality(request.jpeg_quality),
        allow_out_of_domain=bool(request.allow_out_of_domain),
    )


def _quality(value: int) -> int:
    if not 0 <= value <= 100:
        raise InvalidArgument(
            "jpeg_quality must be in [0, 100] (0 = the default)", details={"field": "jpeg_quality"}
        )
    return int(value)


def protected_to_pb(out: Protected) -> pb.ProtectResponse:
    return pb.ProtectResponse(
        image=common_pb2.Image(data=out.image, format_hint=out.format.lower()),
        linf=out.linf,
        feature_distortion=out.feature_distortion,
        authorized_label=out.authorized_label,
        authorized_prediction_after=out.authorized_prediction_after,
        request_id=out.request_id,
        steps_run=out.steps_run,
        early_stopped=out.early_stopped,
        mode=MODE_OF[out.mode],
        psnr_db=out.psnr_db if math.isfinite(out.psnr_db) else 0.0,
        authorized_model=common_pb2.ModelRef(name=out.model, version=out.version),
        robustness=ROBUSTNESS_OF[out.robustness],
        optimised_for=list(out.optimised_for),
        checks=[
            pb.TransformCheck(transform=c.transform, prediction=c.prediction, margin=c.margin)
            for c in out.checks
        ],
        margin=out.margin,
        domain=domain_to_pb(out.domain),
    )


def domain_to_pb(score: DomainScore | None) -> common_pb2.DomainScore | None:
    return None if score is None else common_pb2.DomainScore(**score.fields())


def pairs_from_pb(request: pb.EvaluateRequest) -> list[Pair]:
    return [Pair(p.original.data, p.protected.data, int(p.label)) for p in request.images]


def evaluation_to_pb(out: Evaluation) -> pb.EvaluateResponse:
    return pb.EvaluateResponse(
        authorized_accuracy_original=out.authorized_original,
        authorized_accuracy_protected=out.authorized_protected,
        unauthorized=[
            pb.ModelAccuracy(
                model=common_pb2.ModelRef(name=a.model, version=a.version),
                accuracy_original=a.original,
                accuracy_protected=a.protected,
            )
            for a in out.unauthorized
        ],
        mean_linf=out.mean_linf,
        mean_psnr_db=out.mean_psnr_db if math.isfinite(out.mean_psnr_db) else 0.0,
        image_count=out.count,
    )
