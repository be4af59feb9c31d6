"""The sanitizer over gRPC, on real servers: a sanitizer (in-process kernels, the committed
weights) charging a real accountant. Each release must show in the ledger exactly as its
receipt says; nothing may leave uncharged."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc, common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.imaging import decode_image, encode_image
from services.kernels.mechanism import calibrate_mu, composed_mu, gaussian_epsilon
from tests.sanitizer.conftest import (
    DATASET,
    OTHER_SUBJECT_TOKEN,
    OTHER_TENANT_TOKEN,
    SERVICE_TOKEN,
    SUBJECT_TOKEN,
    TENANT_TOKEN,
    TOKENS,
    budget,
)
from tests.support.server import ServerThread, bearer, free_port


def events(ledger: accountant_pb2_grpc.AccountantStub) -> list[Any]:
    return list(ledger.ListEvents(apb.ListEventsRequest(), metadata=bearer(TENANT_TOKEN)).events)


def subject_spent(ledger: accountant_pb2_grpc.AccountantStub, subject: str = "alice") -> float:
    scope = apb.BudgetScope(tenant_id="acme", dataset_id=DATASET, subject_id=subject)
    status = ledger.GetBudget(apb.GetBudgetRequest(scope=scope), metadata=bearer(TENANT_TOKEN))
    return status.epsilon_spent


def whole(face_png: bytes, **fields: Any) -> dict[str, Any]:
    return {
        "dataset_id": DATASET,
        "subject_id": "alice",
        "image": common_pb2.Image(data=face_png),
        "delta": 1e-5,
        "face": pb.FaceSelection(whole_image=True),
        **fields,
    }


def code_of(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined]


def test_list_attributes_names_the_model(stub: sanitizer_pb2_grpc.SanitizerStub) -> None:
    out = stub.ListAttributes(pb.ListAttributesRequest(), metadata=bearer(TENANT_TOKEN))
    names = [a.name for a in out.attributes]
    assert names == ["male", "old", "dark_skin", "glasses", "smiling"]
    assert all(a.clip_bound > 0 and a.description for a in out.attributes)
    assert out.model.resolution == 32 and "synthfaces" in out.model.training_data
    assert out.max_strengths == 8 and out.default_ddim_steps == 2


def test_sanitize_charges_exactly_the_receipt(
    sanitizer: ServerThread,
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
) -> None:
    out = stub.Sanitize(
        pb.SanitizeRequest(**whole(face_png, epsilon=1.0, idempotency_key="k1")),
        metadata=bearer(TENANT_TOKEN),
    )
    image = decode_image(out.image.data).pixels
    assert image.shape == (48, 48, 3)
    assert out.cost.epsilon == pytest.approx(1.0) and out.cost.delta == 1e-5
    assert {a.attribute for a in out.cost.per_attribute} == {
        "male", "old", "dark_skin", "glasses", "smiling"
    }  # fmt: skip
    assert all(0 < a.epsilon < 1.0 for a in out.cost.per_attribute)
    assert out.rdp_epsilon > out.cost.epsilon
    assert out.composed_draws == 1 and not out.replayed
    assert out.noise_multiplier == pytest.approx(1 / calibrate_mu(1.0, 1e-5))
    found = events(ledger)
    assert len(found) == 1
    event = found[0]
    assert event.spend_id == out.spend_id
    assert event.charge.subject_ids == ["alice"] and event.charge.dataset_id == DATASET
    assert event.charge.event.gaussian.noise_multiplier == pytest.approx(out.noise_multiplier)
    assert event.charge.service == "sanitizer"
    # The ledger's tight figure for this one event is the receipt's epsilon.
    assert subject_spent(ledger) == pytest.approx(1.0, abs=2e-3)
    registry = sanitizer.server.app.registry
    assert registry.get_sample_value("veil_sanitizer_releases_total", {"kind": "fresh"}) == 1
    assert registry.get_sample_value("veil_sanitizer_released_epsilon_count") == 1
    for stage in ("image", "encode", "decode", "charge", "store"):
        count = registry.get_sample_value(
            "veil_sanitizer_stage_duration_seconds_count", {"stage": stage}
        )
        assert count and count >= 1, stage


def test_a_retry_with_the_key_returns_the_same_image_and_charges_once(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
) -> None:
    request = pb.SanitizeRequest(**whole(face_png, epsilon=2.0, idempotency_key="same"))
    first = stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
    again = stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
    assert again.replayed and not first.replayed
    assert again.image.data == first.image.data and again.spend_id == first.spend_id
    assert len(events(ledger)) == 1
    other = pb.SanitizeRequest(**whole(face_png, epsilon=3.0, idempotency_key="same"))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Sanitize(other, metadata=bearer(TENANT_TOKEN))
    assert code_of(exc) == grpc.StatusCode.ALREADY_EXISTS
    # Without a key, each call is a fresh draw, charged.
    plain = pb.SanitizeRequest(**whole(face_png, epsilon=2.0))
    a = stub.Sanitize(plain, metadata=bearer(TENANT_TOKEN))
    b = stub.Sanitize(plain, metadata=bearer(TENANT_TOKEN))
    assert a.image.data != b.image.data and a.spend_id != b.spend_id
    assert len(events(ledger)) == 3


def test_preview_then_fresh_release(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
) -> None:
    preview = stub.CreatePreview(
        pb.CreatePreviewRequest(**whole(face_png, strengths=[0.5, 2.0, 8.0], seed=3)),
        metadata=bearer(SUBJECT_TOKEN),
    )
    assert [c.epsilon for c in preview.candidates] == [0.5, 2.0, 8.0]
    assert len({c.image.data for c in preview.candidates}) == 3
    composed = gaussian_epsilon(composed_mu([calibrate_mu(e, 1e-5) for e in (0.5, 2.0, 8.0)]), 1e-5)
    assert all(c.cost_if_released.epsilon == pytest.approx(composed) for c in preview.candidates)
    assert events(ledger) == []  # previews are free
    # The same seed draws the same candidates (previews only).
    again = stub.CreatePreview(
        pb.CreatePreviewRequest(**whole(face_png, strengths=[0.5], seed=3)),
        metadata=bearer(SUBJECT_TOKEN),
    )
    # Same noise and x_T; the decoder's float arithmetic may differ by batch size, so
    # compare pixels, not bytes.
    first = decode_image(preview.candidates[0].image.data).pixels.astype(int)
    repeat = decode_image(again.candidates[0].image.data).pixels.astype(int)
    assert np.abs(first - repeat).max() <= 2
    out = stub.Release(
        pb.ReleaseRequest(session_id=preview.session_id, epsilon=2.0, idempotency_key="r"),
        metadata=bearer(SUBJECT_TOKEN),
    )
    assert out.cost.epsilon == pytest.approx(2.0) and out.composed_draws == 1
    assert out.image.data not in {c.image.data for c in preview.candidates}
    assert [e.spend_id for e in events(ledger)] == [out.spend_id]
    # One release per session; the retry with its key answers it again.
    again_out = stub.Release(
        pb.ReleaseRequest(session_id=preview.session_id, epsilon=2.0, idempotency_key="r"),
        metadata=bearer(SUBJECT_TOKEN),
    )
    assert again_out.replayed and again_out.image.data == out.image.data
    with pytest.raises(grpc.RpcError) as exc:
        stub.Release(
            pb.ReleaseRequest(session_id=preview.session_id, epsilon=2.0),
            metadata=bearer(SUBJECT_TOKEN),
        )
    assert code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION
    assert len(events(ledger)) == 1


def test_releasing_a_candidate_charges_all_k(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
) -> None:
    preview = stub.CreatePreview(
        pb.CreatePreviewRequest(**whole(face_png, strengths=[1.0, 1.0, 1.0, 1.0])),
        metadata=bearer(TENANT_TOKEN),
    )
    out = stub.Release(
        pb.ReleaseRequest(session_id=preview.session_id, candidate_index=2),
        metadata=bearer(TENANT_TOKEN),
    )
    assert out.image.data == preview.candidates[2].image.data
    assert out.composed_draws == 4
    mu = calibrate_mu(1.0, 1e-5)
    assert out.noise_multiplier == pytest.approx(1 / (2 * mu))  # √4 · μ
    assert out.cost.epsilon == pytest.approx(gaussian_epsilon(2 * mu, 1e-5))
    assert out.cost.epsilon > 1.0
    (event,) = events(ledger)
    assert event.charge.event.gaussian.noise_multiplier == pytest.approx(out.noise_multiplier)
    assert event.charge.labels["draws"] == "4"
    assert subject_spent(ledger) == pytest.approx(out.cost.epsilon, abs=5e-3)


def test_over_budget_is_refused_and_returns_no_image(
    sanitizer: ServerThread,
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
) -> None:
    # alice's default budget is 10: two releases at 6 compose to 9.1 (tight), a third to 11.7.
    request = pb.SanitizeRequest(**whole(face_png, epsilon=6.0))
    for _ in range(2):
        stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
    assert code_of(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget" in exc.value.details().lower()  # type: ignore[attr-defined]
    assert len(events(ledger)) == 2
    # Another subject still has their own budget.
    out = stub.Sanitize(
        pb.SanitizeRequest(**whole(face_png, epsilon=4.0, subject_id="carol")),
        metadata=bearer(TENANT_TOKEN),
    )
    assert out.spend_id
    registry = sanitizer.server.app.registry
    assert registry.get_sample_value("veil_sanitizer_refusals_total", {"reason": "budget"}) == 1


def test_preview_is_for_the_subject_only(
    stub: sanitizer_pb2_grpc.SanitizerStub, face_png: bytes
) -> None:
    request = pb.CreatePreviewRequest(**whole(face_png, strengths=[1.0]))
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreatePreview(request, metadata=bearer(OTHER_SUBJECT_TOKEN))
    assert code_of(exc) == grpc.StatusCode.PERMISSION_DENIED
    preview = stub.CreatePreview(request, metadata=bearer(SUBJECT_TOKEN))
    # Another subject's or tenant's session is answered exactly as an unknown one.
    for token, session_id in (
        (OTHER_SUBJECT_TOKEN, preview.session_id),
        (OTHER_TENANT_TOKEN, preview.session_id),
        (SUBJECT_TOKEN, "no-such-session"),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Release(
                pb.ReleaseRequest(session_id=session_id, epsilon=1.0), metadata=bearer(token)
            )
        assert code_of(exc) == grpc.StatusCode.NOT_FOUND
    # A subject token cannot call the one-shot API (no scope), nor name another tenant.
    with pytest.raises(grpc.RpcError) as exc:
        stub.Sanitize(
            pb.SanitizeRequest(**whole(face_png, epsilon=1.0)), metadata=bearer(SUBJECT_TOKEN)
        )
    assert code_of(exc) == grpc.StatusCode.PERMISSION_DENIED
    stub.CancelPreview(
        pb.CancelPreviewRequest(session_id=preview.session_id), metadata=bearer(SUBJECT_TOKEN)
    )
    stub.CancelPreview(
        pb.CancelPreviewRequest(session_id=preview.session_id), metadata=bearer(SUBJECT_TOKEN)
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.Release(
            pb.ReleaseRequest(session_id=preview.session_id, epsilon=1.0),
            metadata=bearer(SUBJECT_TOKEN),
        )
    assert code_of(exc) == grpc.StatusCode.NOT_FOUND


def _png(pixels: np.ndarray) -> bytes:
    """Any PNG Pillow writes (grey+alpha included, which Veil's encoder refuses to make)."""
    import io

    from PIL import Image

    mode = {2: "LA", 3: "RGB"}[pixels.shape[2]]
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("epsilon 0", {"epsilon": 0.0}, "epsilon"),
    ("epsilon nan", {"epsilon": math.nan}, "epsilon"),
    ("epsilon inf", {"epsilon": math.inf}, "epsilon"),
    ("epsilon huge", {"epsilon": 1e9}, "epsilon"),
    ("delta 0", {"delta": 0.0}, "delta"),
    ("delta 1", {"delta": 1.0}, "delta"),
    ("delta nan", {"delta": math.nan}, "delta"),
    ("weight 0", {"weights": [pb.AttributeWeight(attribute="male", weight=0.0)]}, "weights"),
    ("weight nan", {"weights": [pb.AttributeWeight(attribute="male", weight=math.nan)]}, "weights"),
    ("unknown", {"weights": [pb.AttributeWeight(attribute="hair", weight=1.0)]}, "weights"),
    ("no dataset", {"dataset_id": ""}, "dataset_id"),
    ("long subject", {"subject_id": "x" * 300}, "subject_id"),
    ("steps", {"ddim_steps": 5000}, "ddim_steps"),
    ("not an image", {"image": common_pb2.Image(data=b"GIF89a nope")}, ""),
    ("grey+alpha", {"image": common_pb2.Image(data=_png(np.zeros((32, 32, 2), np.uint8)))}, ""),
    ("too wide", {"image": common_pb2.Image(data=_png(np.zeros((8, 9000, 3), np.uint8)))}, ""),
    ("no image", {"image": common_pb2.Image(data=b"")}, "image"),
    ("bad box", {"face": pb.FaceSelection(box=pb.Box(x=1, y=1, width=0, height=4))}, "face.box"),
]


@pytest.mark.parametrize("name,fields,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_invalid_argument_and_charges_nothing(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
    name: str,
    fields: dict[str, Any],
    field: str,
) -> None:
    values = whole(face_png, epsilon=1.0)
    values.update(fields)
    with pytest.raises(grpc.RpcError) as exc:
        stub.Sanitize(pb.SanitizeRequest(**values), metadata=bearer(TENANT_TOKEN))
    assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()  # type: ignore[attr-defined]
    if name == "unknown":
        assert "male" in exc.value.details()  # type: ignore[attr-defined]
    assert events(ledger) == []


def test_too_many_strengths(stub: sanitizer_pb2_grpc.SanitizerStub, face_png: bytes) -> None:
    for strengths in ([], [1.0] * 9, [1.0, -1.0]):
        with pytest.raises(grpc.RpcError) as exc:
            stub.CreatePreview(
                pb.CreatePreviewRequest(**whole(face_png, strengths=strengths)),
                metadata=bearer(TENANT_TOKEN),
            )
        assert code_of(exc) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def second_process(tmp_path: Path, accountant: ServerThread) -> Iterator[str]:
    """`veil serve sanitizer` in its own process, on the session database of the in-test
    sanitizer (the ``sanitizer`` fixture's file) and the same accountant."""
    port = free_port()
    env = dict(
        os.environ,
        VEIL_SANITIZER_PORT=str(port),
        VEIL_SANITIZER_METRICS_PORT=str(free_port()),
        VEIL_SANITIZER_TOKENS=json.dumps(
            {t: g.model_dump() for t, g in TOKENS.items() if not g.delegate}
        ),
        VEIL_SANITIZER_DATABASE_URL=f"sqlite:///{tmp_path / 'sanitizer.sqlite'}",
        VEIL_SANITIZER_ACCOUNTANT_URL=accountant.target,
        VEIL_SANITIZER_ACCOUNTANT_TOKEN=SERVICE_TOKEN,
        VEIL_SANITIZER_DEFAULT_DDIM_STEPS="2",
        VEIL_INFERENCE_BACKEND="local",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "sanitizer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    target = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service="readiness"))
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the second sanitizer never became ready"
                time.sleep(0.3)
        yield target
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_release_from_another_process(
    sanitizer: ServerThread,
    second_process: str,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
) -> None:
    """A Release lands on another sanitizer process than the one that made the preview:
    sessions live in the shared database, not in a process."""
    with grpc.insecure_channel(sanitizer.target) as a, grpc.insecure_channel(second_process) as b:
        preview = sanitizer_pb2_grpc.SanitizerStub(a).CreatePreview(
            pb.CreatePreviewRequest(**whole(face_png, strengths=[1.0, 4.0])),
            metadata=bearer(SUBJECT_TOKEN),
        )
        out = sanitizer_pb2_grpc.SanitizerStub(b).Release(
            pb.ReleaseRequest(session_id=preview.session_id, candidate_index=1),
            metadata=bearer(SUBJECT_TOKEN),
        )
    assert out.image.data == preview.candidates[1].image.data
    assert out.composed_draws == 2
    assert [e.spend_id for e in events(ledger)] == [out.spend_id]


def test_accountant_down_is_unavailable_and_returns_no_image(
    make_sanitizer: Callable[..., ServerThread], face_png: bytes
) -> None:
    running = make_sanitizer(accountant_url=f"127.0.0.1:{free_port()}")  # nothing listens
    with grpc.insecure_channel(running.target) as channel:
        stub = sanitizer_pb2_grpc.SanitizerStub(channel)
        with pytest.raises(grpc.RpcError) as exc:
            stub.Sanitize(
                pb.SanitizeRequest(**whole(face_png, epsilon=1.0)), metadata=bearer(TENANT_TOKEN)
            )
    assert code_of(exc) == grpc.StatusCode.UNAVAILABLE


def test_detects_the_face_in_a_photo(
    stub: sanitizer_pb2_grpc.SanitizerStub, face_png: bytes
) -> None:
    from skimage import data

    photo = data.astronaut()
    png = encode_image(photo)
    out = stub.Sanitize(
        pb.SanitizeRequest(
            dataset_id=DATASET,
            subject_id="astronaut",
            image=common_pb2.Image(data=png),
            delta=1e-5,
            epsilon=4.0,
            allow_out_of_domain=True,  # a real photo: outside the synthetic faces' domain
        ),
        metadata=bearer(TENANT_TOKEN),
    )
    assert not out.domain.in_domain
    result = decode_image(out.image.data).pixels
    assert result.shape == photo.shape
    box = out.face_box
    assert box.width > 40 and box.height > 40
    changed = np.any(result != photo, axis=2)
    ys, xs = np.nonzero(changed)
    # Only the face's neighbourhood changed; the rest of the photo is bit for bit the same.
    assert xs.min() >= box.x - box.width and xs.max() <= box.x + 2 * box.width
    assert ys.min() >= box.y - box.height and ys.max() <= box.y + 2 * box.height
    blank = encode_image(np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(grpc.RpcError) as exc:
        stub.Sanitize(
            pb.SanitizeRequest(
                dataset_id=DATASET,
                subject_id="astronaut",
                image=common_pb2.Image(data=blank),
                delta=1e-5,
                epsilon=4.0,
            ),
            metadata=bearer(TENANT_TOKEN),
        )
    assert code_of(exc) == grpc.StatusCode.FAILED_PRECONDITION


def test_sanitize_batch_answers_every_item(
    stub: sanitizer_pb2_grpc.SanitizerStub,
    ledger: accountant_pb2_grpc.AccountantStub,
    face_png: bytes,
) -> None:
    def items() -> Iterator[pb.SanitizeBatchRequest]:
        for i in range(5):
            yield pb.SanitizeBatchRequest(
                item_id=f"i{i}",
                request=pb.SanitizeRequest(**whole(face_png, epsilon=1.0, subject_id=f"s{i}")),
            )
        yield pb.SanitizeBatchRequest(
            item_id="bad", request=pb.SanitizeRequest(**whole(face_png, epsilon=-1.0))
        )
        yield pb.SanitizeBatchRequest(
            item_id="poor",
            request=pb.SanitizeRequest(**whole(face_png, epsilon=50.0, subject_id="s0")),
        )

    answers = list(stub.SanitizeBatch(items(), metadata=bearer(TENANT_TOKEN)))
    by_id = {a.item_id: a for a in answers}
    assert set(by_id) == {"i0", "i1", "i2", "i3", "i4", "bad", "poor"}
    assert answers[-1].done == 7 and answers[-1].failed == 2
    assert by_id["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id["poor"].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    ok = [by_id[f"i{i}"] for i in range(5)]
    assert all(a.result.spend_id and a.result.cost.epsilon == pytest.approx(1.0) for a in ok)
    assert sorted(e.spend_id for e in events(ledger)) == sorted(a.result.spend_id for a in ok)


def test_subject_budget_tracks_default(
    make_sanitizer: Callable[..., ServerThread], accountant: ServerThread, face_png: bytes
) -> None:
    budget(accountant.target, epsilon=1.2)  # 1.0, then 1.47 composed
    running = make_sanitizer()
    with grpc.insecure_channel(running.target) as channel:
        stub = sanitizer_pb2_grpc.SanitizerStub(channel)
        stub.Sanitize(
            pb.SanitizeRequest(**whole(face_png, epsilon=1.0, subject_id="dora")),
            metadata=bearer(TENANT_TOKEN),
        )
        with pytest.raises(grpc.RpcError) as exc:
            stub.Sanitize(
                pb.SanitizeRequest(**whole(face_png, epsilon=1.0, subject_id="dora")),
                metadata=bearer(TENANT_TOKEN),
            )
    assert code_of(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_batch_through_the_async_client(sanitizer: ServerThread, face_png: bytes) -> None:
    """The typed client signs streaming calls too (grpc.aio files an interceptor under one
    call kind only)."""
    import asyncio

    from services.runtime.client import VeilClient

    async def run() -> list[pb.SanitizeBatchResponse]:
        async with VeilClient(sanitizer.target, token=TENANT_TOKEN) as veil:

            async def items():  # type: ignore[no-untyped-def]
                for i in range(2):
                    yield pb.SanitizeBatchRequest(
                        item_id=str(i),
                        request=pb.SanitizeRequest(
                            **whole(face_png, epsilon=1.0, subject_id=f"async-{i}")
                        ),
                    )

            return [a async for a in veil.sanitizer.SanitizeBatch(items())]

    answers = asyncio.run(run())
    assert sorted(a.item_id for a in answers) == ["0", "1"]
    assert all(a.result.spend_id for a in answers)


def test_complement_erase(stub: sanitizer_pb2_grpc.SanitizerStub, face_png: bytes) -> None:
    request = pb.SanitizeRequest(
        **whole(face_png, epsilon=1.0, complement=pb.COMPLEMENT_KEEP, idempotency_key="e")
    )
    out = stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
    assert out.complement == pb.COMPLEMENT_KEEP
    default = stub.Sanitize(
        pb.SanitizeRequest(**whole(face_png, epsilon=1.0)), metadata=bearer(TENANT_TOKEN)
    )
    assert default.complement == pb.COMPLEMENT_ERASE  # the measured better trade-off
