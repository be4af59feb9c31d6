"""Protobuf ↔ the sanitizer's domain objects (no logic beyond the mapping)."""

from __future__ import annotations

import math

from google.protobuf import timestamp_pb2

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.errors import InvalidArgument
from services.kernels.domain import DomainScore
from services.sanitizer.core import BatchItem, Candidate, Preview, Released, Request
from services.sanitizer.faces import Box
from services.sanitizer.pipeline import FaceChoice

COMPLEMENT_NAMES: dict[int, str] = {
    pb.COMPLEMENT_UNSPECIFIED: "",
    pb.COMPLEMENT_KEEP: "keep",
    pb.COMPLEMENT_ERASE: "erase",
}
COMPLEMENT_OF: dict[str, str] = {"keep": "COMPLEMENT_KEEP", "erase": "COMPLEMENT_ERASE"}
"""Domain name → the enum value's name (protobuf constructors take either)."""


def complement_from_pb(value: int) -> str:
    """Unknown enum values are treated as UNSPECIFIED (evolution rule 4)."""
    return COMPLEMENT_NAMES.get(value, "")


def face_from_pb(face: pb.FaceSelection, present: bool) -> FaceChoice:
    if not present:
        return FaceChoice()
    if face.HasField("box"):
        b = face.box
        if b.width <= 0 or b.height <= 0 or b.x < 0 or b.y < 0:
            raise InvalidArgument(
                "face.box needs x, y >= 0 and width, height > 0", details={"field": "face.box"}
            )
        return FaceChoice(whole_image=face.whole_image, box=Box(b.x, b.y, b.width, b.height))
    return FaceChoice(whole_image=face.whole_image)


def box_to_pb(box: Box) -> pb.Box:
    return pb.Box(x=box.x, y=box.y, width=box.width, height=box.height)


def weights_from_pb(weights) -> dict[str, float]:
    out: dict[str, float] = {}
    for w in weights:
        if w.attribute in out:
            raise InvalidArgument(
                f"attribute {w.attribute!r} is weighted twice", details={"field": "weights"}
            )
        out[w.attribute] = float(w.weight)
    return out


def epsilon_from_pb(value: float, field: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(
            f"{field} must be a finite number > 0; got {value!r}", details={"field": field}
        )
    return float(value)


def request_from_pb(request: pb.CreatePreviewRequest | pb.SanitizeRequest) -> Request:
    """The image, people and settings a preview or a one-shot release asks for (both
    messages carry them under the same names)."""
    return Request(
        dataset=request.dataset_id,
        subject=request.subject_id,
        image=request.image.data,
        weights=weights_from_pb(request.weights),
        delta=float(request.delta),
        steps=int(request.ddim_steps),
        complement=complement_from_pb(request.complement),
        face=face_from_pb(request.face, request.HasField("face")),
        allow_out_of_domain=bool(request.allow_out_of_domain),
    )


def item_from_pb(item: pb.SanitizeBatchRequest) -> BatchItem:
    request = item.request
    return BatchItem(
        item_id=item.item_id,
        request=request_from_pb(request),
        epsilon=epsilon_from_pb(request.epsilon, "epsilon"),
        key=request.idempotency_key,
    )


def cost_to_pb(epsilon: float, delta: float, per: dict[str, float]) -> common_pb2.PrivacyCost:
    return common_pb2.PrivacyCost(
        epsilon=epsilon,
        delta=delta,
        accountant="pld",
        per_attribute=[common_pb2.AttributeCost(attribute=a, epsilon=e) for a, e in per.items()],
    )


def image_to_pb(data: bytes, fmt: str) -> common_pb2.Image:
    return common_pb2.Image(data=data, format_hint=fmt.lower())


def released_to_pb(released: Released, fmt: str) -> pb.ReleaseResponse:
    return pb.ReleaseResponse(
        image=image_to_pb(released.image, fmt),
        cost=cost_to_pb(released.epsilon, released.delta, released.per_attribute),
        spend_id=released.spend_id,
        face_box=box_to_pb(released.face_box),
        composed_draws=released.composed_draws,
        replayed=released.replayed,
        complement=COMPLEMENT_OF.get(released.complement, "COMPLEMENT_UNSPECIFIED"),
        rdp_epsilon=released.rdp_epsilon,
        noise_multiplier=released.noise_multiplier,
        ledger_cost=common_pb2.PrivacyCost(
            epsilon=released.ledger_epsilon,
            delta=released.ledger_delta,
            accountant=released.ledger_accountant,
        ),
        domain=domain_to_pb(released.domain),
    )


def domain_to_pb(score: DomainScore | None) -> common_pb2.DomainScore | None:
    return None if score is None else common_pb2.DomainScore(**score.fields())


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def preview_to_pb(preview: Preview, fmt: str) -> pb.CreatePreviewResponse:
    epsilon, per = preview.cost_if_released
    cost = cost_to_pb(epsilon, preview.delta, per)

    def candidate(c: Candidate) -> pb.Candidate:
        return pb.Candidate(
            index=c.index, epsilon=c.epsilon, image=image_to_pb(c.image, fmt), cost_if_released=cost
        )

    return pb.CreatePreviewResponse(
        session_id=preview.session_id,
        candidates=[candidate(c) for c in preview.candidates],
        expires_at=timestamp(preview.expires_at),
        face_box=box_to_pb(preview.face_box),
        domain=domain_to_pb(preview.domain),
    )
