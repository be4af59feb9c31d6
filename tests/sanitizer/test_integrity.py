"""Release integrity on real servers, tried as a hostile caller would (issue #23): truly
overlapping calls (threads released by a barrier, two sanitizer servers on one database),
a caller who picks every field, another tenant and another subject. On SQLite and on
PostgreSQL: one key → one charge and one image for every caller; one session → one release;
a batch over budget generates nothing past it; a seeded preview's candidate is never
released; the receipt, the ledger event and the budget agree on (ε, δ)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc, common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.imaging import encode_image
from services.kernels.data.synthfaces import SynthFaces
from services.kernels.mechanism import calibrate_mu, gaussian_epsilon
from tests.sanitizer.conftest import (
    DATASET,
    OTHER_SUBJECT_TOKEN,
    OTHER_TENANT_TOKEN,
    SUBJECT_TOKEN,
    TENANT_TOKEN,
    accountant_app,
    budget,
    sanitizer_settings,
)
from tests.support.overlap import together
from tests.support.server import ServerThread, bearer

OK = grpc.StatusCode.OK


@pytest.fixture(scope="module")
def face_png() -> bytes:
    return encode_image(SynthFaces(n=4, seed=7, resolution=48).pixels(0))


class Stack:
    """An accountant and two sanitizer servers sharing one session database."""

    def __init__(self, accountant: ServerThread, sanitizers: list[ServerThread]) -> None:
        self.accountant = accountant
        self.sanitizers = sanitizers
        self._channels = [grpc.insecure_channel(s.target) for s in sanitizers]
        self._ledger_channel = grpc.insecure_channel(accountant.target)
        self.stubs = [sanitizer_pb2_grpc.SanitizerStub(c) for c in self._channels]
        self.ledger = accountant_pb2_grpc.AccountantStub(self._ledger_channel)

    def events(self) -> list[Any]:
        request = apb.ListEventsRequest()
        return list(self.ledger.ListEvents(request, metadata=bearer(TENANT_TOKEN)).events)

    def subject(self, subject: str) -> apb.BudgetStatus:
        scope = apb.BudgetScope(tenant_id="acme", dataset_id=DATASET, subject_id=subject)
        return self.ledger.GetBudget(
            apb.GetBudgetRequest(scope=scope), metadata=bearer(TENANT_TOKEN)
        )

    def reserved(self) -> float:
        """ε held by open reservations on the dataset's budget (every release touches it)."""
        scope = apb.BudgetScope(tenant_id="acme", dataset_id=DATASET)
        status = self.ledger.GetBudget(
            apb.GetBudgetRequest(scope=scope), metadata=bearer(TENANT_TOKEN)
        )
        return float(status.epsilon_reserved)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return sum(
            s.server.app.registry.get_sample_value(name, labels or {}) or 0.0
            for s in self.sanitizers
        )

    def close(self) -> None:
        for c in (*self._channels, self._ledger_channel):
            c.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if request.param == "sqlite":
        ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        sessions_url = f"sqlite:///{tmp_path / 'sanitizer.sqlite'}"
    else:
        ledger_url = sessions_url = str(request.getfixturevalue("pg_url"))
    # A loaded CI machine may need more than the default 5 s for a first tight figure.
    accountant = ServerThread(accountant_app(ledger_url, tight_timeout_s=60.0))
    budget(accountant.target, epsilon=10.0)
    from services.sanitizer.app import build_app

    sanitizers = [
        ServerThread(
            build_app(
                sanitizer_settings(
                    tmp_path,
                    accountant.target,
                    database_url=sessions_url,
                    accountant_timeout_s=30.0,  # refusals near a limit need tight figures
                )
            )
        )
        for _ in range(2)
    ]
    running = Stack(accountant, sanitizers)
    try:
        yield running
    finally:
        running.close()
        for s in sanitizers:
            s.stop(grace=1.0)
        accountant.stop(grace=1.0)


def whole(face_png: bytes, subject: str = "alice", **fields: Any) -> dict[str, Any]:
    return {
        "dataset_id": DATASET,
        "subject_id": subject,
        "image": common_pb2.Image(data=face_png),
        "delta": 1e-5,
        "face": pb.FaceSelection(whole_image=True),
        **fields,
    }


def codes(answers: list[Any]) -> list[Any]:
    """Each answer's status code (an exception other than a gRPC error: itself)."""
    return [
        a.code() if isinstance(a, grpc.RpcError) else a if isinstance(a, Exception) else OK
        for a in answers
    ]


def charge_key(key: str) -> str:
    return "sanitizer/key/" + hashlib.sha256(key.encode()).hexdigest()


def test_one_key_is_one_charge_and_one_image_for_every_caller(
    stack: Stack, face_png: bytes
) -> None:
    request = pb.SanitizeRequest(**whole(face_png, epsilon=1.0, idempotency_key="k-race"))
    answers = together(
        8, lambda i: stack.stubs[i % 2].Sanitize(request, metadata=bearer(TENANT_TOKEN))
    )
    assert codes(answers) == [OK] * 8, answers
    assert len({a.image.data for a in answers}) == 1
    assert len({a.spend_id for a in answers}) == 1
    assert sum(not a.replayed for a in answers) == 1  # the others were not charged
    found = stack.events()
    assert [e.spend_id for e in found] == [answers[0].spend_id]
    assert found[0].charge.idempotency_key == charge_key("k-race")
    assert stack.metric("veil_sanitizer_generated_images_total") == 1
    # The same key with another request: refused, nothing charged, never the old image.
    other = pb.SanitizeRequest(**whole(face_png, epsilon=2.0, idempotency_key="k-race"))
    with pytest.raises(grpc.RpcError) as exc:
        stack.stubs[1].Sanitize(other, metadata=bearer(TENANT_TOKEN))
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len(stack.events()) == 1


def test_one_session_releases_one_image(stack: Stack, face_png: bytes) -> None:
    def preview() -> pb.CreatePreviewResponse:
        request = pb.CreatePreviewRequest(**whole(face_png, strengths=[1.0, 2.0]))
        return stack.stubs[0].CreatePreview(request, metadata=bearer(SUBJECT_TOKEN))

    first = preview()
    answers = together(
        6,
        lambda i: stack.stubs[i % 2].Release(
            pb.ReleaseRequest(session_id=first.session_id, epsilon=1.0),
            metadata=bearer(SUBJECT_TOKEN),
        ),
    )
    got = codes(answers)
    assert got.count(OK) == 1, got
    assert set(got) - {OK} <= {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
    assert len(stack.events()) == 1
    # With one key, every caller gets the one image, charged once.
    second = preview()
    keyed = together(
        6,
        lambda i: stack.stubs[i % 2].Release(
            pb.ReleaseRequest(session_id=second.session_id, candidate_index=1, idempotency_key="r"),
            metadata=bearer(SUBJECT_TOKEN),
        ),
    )
    assert codes(keyed) == [OK] * 6, keyed
    assert {a.image.data for a in keyed} == {second.candidates[1].image.data}
    assert len({a.spend_id for a in keyed}) == 1
    assert len(stack.events()) == 2
    # Released: a release without the key, or a cancel, changes nothing and charges nothing.
    with pytest.raises(grpc.RpcError) as exc:
        stack.stubs[0].Release(
            pb.ReleaseRequest(session_id=second.session_id, epsilon=1.0),
            metadata=bearer(SUBJECT_TOKEN),
        )
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(stack.events()) == 2


def test_a_seeded_preview_candidate_is_never_released(stack: Stack, face_png: bytes) -> None:
    request = pb.CreatePreviewRequest(**whole(face_png, strengths=[1.0, 2.0], seed=7))
    a = stack.stubs[0].CreatePreview(request, metadata=bearer(SUBJECT_TOKEN))
    b = stack.stubs[1].CreatePreview(request, metadata=bearer(SUBJECT_TOKEN))
    assert a.candidates[0].image.data == b.candidates[0].image.data  # seeded: reproducible
    with pytest.raises(grpc.RpcError) as exc:
        stack.stubs[0].Release(
            pb.ReleaseRequest(session_id=a.session_id, candidate_index=0),
            metadata=bearer(SUBJECT_TOKEN),
        )
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "seed" in (exc.value.details() or "")
    assert stack.events() == []
    assert stack.reserved() == 0
    # A fresh draw from either session is fine: OS randomness, not the seed.
    fresh = [
        stack.stubs[0].Release(
            pb.ReleaseRequest(session_id=s.session_id, epsilon=1.0), metadata=bearer(SUBJECT_TOKEN)
        )
        for s in (a, b)
    ]
    assert fresh[0].image.data != fresh[1].image.data
    assert {f.image.data for f in fresh}.isdisjoint({c.image.data for c in a.candidates})
    assert len(stack.events()) == 2


def test_delta_must_be_the_budgets_and_nothing_is_generated_otherwise(
    stack: Stack, face_png: bytes
) -> None:
    for delta in (0.99, 1e-6):
        request = pb.SanitizeRequest(**{**whole(face_png, epsilon=1.0), "delta": delta})
        with pytest.raises(grpc.RpcError) as exc:
            stack.stubs[0].Sanitize(request, metadata=bearer(TENANT_TOKEN))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"{delta:g}" in exc.value.details() and "1e-05" in exc.value.details()
    assert stack.events() == []
    assert stack.reserved() == 0
    assert stack.metric("veil_sanitizer_generated_images_total") == 0


def _agree(stack: Stack, out: pb.ReleaseResponse, subject: str) -> None:
    """The receipt, the ledger event and the subject's budget state one (ε, δ)."""
    event = next(e for e in stack.events() if e.spend_id == out.spend_id)
    status = stack.subject(subject)
    assert out.cost.delta == event.cost.delta == status.delta == 1e-5
    assert out.ledger_cost.delta == event.cost.delta
    assert out.ledger_cost.epsilon == pytest.approx(event.cost.epsilon, rel=1e-12)
    assert out.ledger_cost.accountant == event.cost.accountant == "rdp"
    assert out.ledger_cost.epsilon >= out.cost.epsilon
    # The budget's tight figure of this one event reproduces the receipt's exact ε, and its
    # RDP figure is the event's.
    assert status.event_count == 1, status
    assert status.tight_state == apb.TIGHT_STATE_COMPUTED, status
    assert status.epsilon_spent_tight == pytest.approx(out.cost.epsilon, abs=2e-3), status
    assert status.epsilon_spent_rdp == pytest.approx(event.cost.epsilon, rel=1e-9), status


def test_receipt_ledger_and_budget_agree_on_every_path(stack: Stack, face_png: bytes) -> None:
    stub = stack.stubs[0]
    one_shot = stub.Sanitize(
        pb.SanitizeRequest(**whole(face_png, "s-one", epsilon=1.0)), metadata=bearer(TENANT_TOKEN)
    )
    _agree(stack, one_shot, "s-one")
    for subject, choice in (("s-fresh", {"epsilon": 2.0}), ("s-cand", {"candidate_index": 0})):
        preview = stub.CreatePreview(
            pb.CreatePreviewRequest(**whole(face_png, subject, strengths=[1.0, 2.0])),
            metadata=bearer(TENANT_TOKEN),
        )
        out = stub.Release(
            pb.ReleaseRequest(session_id=preview.session_id, **choice),
            metadata=bearer(TENANT_TOKEN),
        )
        _agree(stack, out, subject)
    item = pb.SanitizeBatchRequest(
        item_id="i0", request=pb.SanitizeRequest(**whole(face_png, "s-batch", epsilon=1.0))
    )
    (answer,) = list(stub.SanitizeBatch(iter([item]), metadata=bearer(TENANT_TOKEN)))
    assert answer.HasField("result"), answer
    _agree(stack, answer.result, "s-batch")


def test_a_batch_over_budget_generates_nothing_past_it(stack: Stack, face_png: bytes) -> None:
    # Room for exactly two releases at ε = 1: Gaussians compose as one with μ = √k·μ_1.
    mu = calibrate_mu(1.0, 1e-5)
    limit = gaussian_epsilon(math.sqrt(2) * mu, 1e-5) + gaussian_epsilon(math.sqrt(3) * mu, 1e-5)
    scope = apb.BudgetScope(tenant_id="acme", dataset_id=DATASET, subject_id="poor")
    stack.ledger.PutBudget(
        apb.PutBudgetRequest(budget=apb.Budget(scope=scope, epsilon=limit / 2, delta=1e-5)),
        metadata=bearer(TENANT_TOKEN),
    )
    items = [
        pb.SanitizeBatchRequest(
            item_id=f"i{i}", request=pb.SanitizeRequest(**whole(face_png, "poor", epsilon=1.0))
        )
        for i in range(5)
    ]
    answers = list(stack.stubs[0].SanitizeBatch(iter(items), metadata=bearer(TENANT_TOKEN)))
    results = [a for a in answers if a.HasField("result")]
    refused = [a for a in answers if a.HasField("error")]
    assert len(results) == 2 and len(refused) == 3
    assert {a.error.code for a in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
    assert stack.metric("veil_sanitizer_generated_images_total") == 2  # none past the budget
    status = stack.subject("poor")
    assert status.epsilon_spent <= status.epsilon_limit and status.event_count == 2
    # Exhausted: a whole batch is refused without one image decoded.
    again = list(stack.stubs[1].SanitizeBatch(iter(items[:3]), metadata=bearer(TENANT_TOKEN)))
    assert all(a.HasField("error") for a in again)
    assert stack.metric("veil_sanitizer_generated_images_total") == 2


def test_another_tenant_or_subject_changes_nothing(stack: Stack, face_png: bytes) -> None:
    stub = stack.stubs[0]
    preview = stub.CreatePreview(
        pb.CreatePreviewRequest(**whole(face_png, strengths=[1.0])), metadata=bearer(SUBJECT_TOKEN)
    )
    for token in (OTHER_TENANT_TOKEN, OTHER_SUBJECT_TOKEN):
        for session_id in (preview.session_id, "no-such-session"):  # answered alike
            stub.CancelPreview(
                pb.CancelPreviewRequest(session_id=session_id), metadata=bearer(token)
            )
            with pytest.raises(grpc.RpcError) as exc:
                stub.Release(
                    pb.ReleaseRequest(session_id=session_id, candidate_index=0),
                    metadata=bearer(token),
                )
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert stack.events() == []
    out = stub.Release(
        pb.ReleaseRequest(session_id=preview.session_id, candidate_index=0),
        metadata=bearer(SUBJECT_TOKEN),
    )
    assert out.image.data == preview.candidates[0].image.data
    assert [e.spend_id for e in stack.events()] == [out.spend_id]


def test_a_backend_that_is_down_answers_unavailable_before_any_reservation(
    stack: Stack, face_png: bytes
) -> None:
    """The readiness probe's last verdict is what a call checks (the in-process backend
    cannot be made to fail its probe, so the verdict is set here)."""
    core = stack.sanitizers[0].server.app.mounts[0].servicer.core
    core.pipeline._backend_ready = lambda: False
    with pytest.raises(grpc.RpcError) as exc:
        stack.stubs[0].Sanitize(
            pb.SanitizeRequest(**whole(face_png, epsilon=1.0)), metadata=bearer(TENANT_TOKEN)
        )
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stack.events() == [] and stack.reserved() == 0
