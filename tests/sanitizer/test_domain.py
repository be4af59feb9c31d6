"""Faces outside what the loaded model represents: refused with OUT_OF_DOMAIN, nothing
charged; sanitized on request with the score for the caller alone, and that score written
nowhere else (not the ledger, the logs or the metrics).

The separation itself runs the service's own code path on the packaged model: held-out
synthetic faces (seed 23, never seen by the model or its threshold) against scikit-image's
real LFW faces and astronaut, as ``bench/domain.py`` reports it in the README.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import generate_latest

from bench.domain import prepared, real_sets, scores, synthetic
from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc, common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.imaging import encode_image
from services.inference.attributes import attribute_model
from services.inference.backend import InferenceSettings
from services.inference.domain import domain_model
from services.inference.local import LocalBackend
from services.kernels.domain import auc
from services.sanitizer.pipeline import FaceChoice, Pipeline
from tests.sanitizer.conftest import DATASET, TENANT_TOKEN
from tests.support.server import ServerThread, bearer


@pytest.fixture(scope="module")
def astronaut_png() -> bytes:
    from skimage import data

    return encode_image(data.astronaut())


def sanitize(png: bytes, **fields: object) -> pb.SanitizeRequest:
    values: dict[str, object] = {
        "dataset_id": DATASET,
        "subject_id": "alice",
        "image": common_pb2.Image(data=png),
        "delta": 1e-5,
        "epsilon": 1.0,
    }
    return pb.SanitizeRequest(**{**values, **fields})  # type: ignore[arg-type]


def error_info(exc: pytest.ExceptionInfo[grpc.RpcError]) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(exc.value)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR))
    return info


def charges(ledger: accountant_pb2_grpc.AccountantStub) -> int:
    """Events on the tenant's ledger."""
    events = ledger.ListEvents(apb.ListEventsRequest(), metadata=bearer(TENANT_TOKEN)).events
    return len(events)


def test_held_out_synthetic_faces_pass_and_real_faces_are_refused() -> None:
    """The service's path (prepare, encode, score) on 200 held-out synthetic faces and on
    scikit-image's 100 LFW faces (found in 4x upscales) and astronaut."""
    settings = InferenceSettings()
    backend = LocalBackend(settings)
    pipeline = Pipeline(lambda: backend, attribute_model(settings, "probes"))
    domain = domain_model(settings, None, "diffae")
    assert domain is not None

    async def measure() -> tuple[np.ndarray, dict[str, np.ndarray]]:
        try:
            faces = synthetic(200, 23, pipeline.model.resolution)
            inside = await scores(pipeline, domain, prepared(pipeline, faces, FaceChoice(True)))
            real = {
                name: await scores(pipeline, domain, prepared(pipeline, photos, face))
                for name, (photos, face) in real_sets().items()
            }
            return inside, real
        finally:
            await backend.close()

    inside, real = asyncio.run(measure())
    assert np.mean(inside > domain.threshold) <= 0.02  # the threshold: 0.005 held out
    for name, outside in real.items():
        assert np.all(outside > domain.threshold), name
    assert auc(inside, real["LFW faces"]) > 0.99 and auc(inside, real["astronaut"]) == 1.0


def test_a_real_photo_is_out_of_domain_and_charged_nothing(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    astronaut_png: bytes,
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.Sanitize(sanitize(astronaut_png), metadata=bearer(TENANT_TOKEN))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    info = error_info(exc)
    assert info.reason == "OUT_OF_DOMAIN"
    assert float(info.metadata["score"]) > float(info.metadata["threshold"]) > 0
    assert info.metadata["method"] == "mahalanobis"
    assert charges(ledger) == 0
    with pytest.raises(grpc.RpcError) as exc:  # a preview alike: nothing drawn, nothing kept
        stub.CreatePreview(
            pb.CreatePreviewRequest(
                dataset_id=DATASET,
                subject_id="alice",
                image=common_pb2.Image(data=astronaut_png),
                delta=1e-5,
                strengths=[1.0],
            ),
            metadata=bearer(TENANT_TOKEN),
        )
    assert error_info(exc).reason == "OUT_OF_DOMAIN"


def test_allowed_it_is_sanitized_with_its_score_for_the_caller(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    astronaut_png: bytes,
    face_png: bytes,
) -> None:
    out = stub.Sanitize(
        sanitize(astronaut_png, allow_out_of_domain=True, idempotency_key="k"),
        metadata=bearer(TENANT_TOKEN),
    )
    assert out.HasField("domain") and not out.domain.in_domain
    assert out.domain.score > out.domain.threshold and out.domain.method == "mahalanobis"
    assert charges(ledger) == 1
    again = stub.Sanitize(
        sanitize(astronaut_png, allow_out_of_domain=True, idempotency_key="k"),
        metadata=bearer(TENANT_TOKEN),
    )
    assert again.replayed and again.domain == out.domain and charges(ledger) == 1
    # An in-domain face: no score unless asked for; asked for, in the domain.
    plain = stub.Sanitize(
        sanitize(face_png, face=pb.FaceSelection(whole_image=True)), metadata=bearer(TENANT_TOKEN)
    )
    assert not plain.HasField("domain")
    asked = stub.Sanitize(
        sanitize(face_png, face=pb.FaceSelection(whole_image=True), allow_out_of_domain=True),
        metadata=bearer(TENANT_TOKEN),
    )
    assert asked.domain.in_domain and asked.domain.score <= asked.domain.threshold


def test_a_preview_allowed_out_of_domain_carries_the_score_to_its_release(
    stub: sanitizer_pb2_grpc.SanitizerStub, astronaut_png: bytes
) -> None:
    preview = stub.CreatePreview(
        pb.CreatePreviewRequest(
            dataset_id=DATASET,
            subject_id="alice",
            image=common_pb2.Image(data=astronaut_png),
            delta=1e-5,
            strengths=[1.0, 2.0],
            allow_out_of_domain=True,
        ),
        metadata=bearer(TENANT_TOKEN),
    )
    assert not preview.domain.in_domain
    released = stub.Release(
        pb.ReleaseRequest(session_id=preview.session_id, epsilon=1.0),
        metadata=bearer(TENANT_TOKEN),
    )
    assert released.domain == preview.domain


def test_a_batch_screens_its_items_together_and_refuses_only_the_one_outside(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    astronaut_png: bytes,
    face_png: bytes,
) -> None:
    whole = pb.FaceSelection(whole_image=True)
    items = [
        ("photo", sanitize(astronaut_png, subject_id="p", idempotency_key="p")),
        ("allowed", sanitize(astronaut_png, subject_id="a", allow_out_of_domain=True)),
        ("face", sanitize(face_png, subject_id="f", face=whole)),
    ]
    answers = list(
        stub.SanitizeBatch(
            iter(pb.SanitizeBatchRequest(item_id=i, request=r) for i, r in items),
            metadata=bearer(TENANT_TOKEN),
        )
    )
    by_id = {a.item_id: a for a in answers}
    refused = by_id["photo"].error
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert refused.reason == "OUT_OF_DOMAIN"
    assert float(refused.metadata["score"]) > float(refused.metadata["threshold"])
    assert not by_id["allowed"].result.domain.in_domain and by_id["allowed"].result.spend_id
    assert by_id["face"].result.spend_id and not by_id["face"].result.HasField("domain")
    assert charges(ledger) == 2 and answers[-1].failed == 1
    # The refused item's key was given back (nothing was charged under it): the same key,
    # now with the face allowed, goes through instead of ALREADY_EXISTS.
    again = stub.Sanitize(
        sanitize(astronaut_png, subject_id="p", idempotency_key="p", allow_out_of_domain=True),
        metadata=bearer(TENANT_TOKEN),
    )
    assert again.spend_id and charges(ledger) == 3


def _renderings(score: float) -> set[str]:
    """The ways a float would be written down: repr, and 2 to 6 decimals."""
    return {repr(score), *(f"{score:.{d}f}" for d in range(2, 7))}


def test_the_score_reaches_no_log_metric_or_ledger(
    sanitizer: ServerThread,
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    astronaut_png: bytes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused and allowed, at DEBUG: the score the caller got appears in no log record,
    no metric of the sanitizer's registry, no ledger event and no byte of the ledger's
    database file."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Sanitize(sanitize(astronaut_png), metadata=bearer(TENANT_TOKEN))
    refused = float(error_info(exc).metadata["score"])
    out = stub.Sanitize(
        sanitize(astronaut_png, allow_out_of_domain=True), metadata=bearer(TENANT_TOKEN)
    )
    assert out.domain.score == pytest.approx(refused, abs=1e-4)
    secrets = _renderings(out.domain.score) | {error_info(exc).metadata["score"]}
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    metrics = generate_latest(sanitizer.server.app.registry).decode()
    events = ledger.ListEvents(apb.ListEventsRequest(), metadata=bearer(TENANT_TOKEN))
    database = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.sqlite*"))
    assert events.events and database and logged
    for text in secrets:
        assert text not in logged
        assert text not in metrics
        assert text not in str(events)
        assert text.encode() not in database
    assert re.search(r'refusals_total\{reason="out_of_domain"\} 1\.0', metrics)
