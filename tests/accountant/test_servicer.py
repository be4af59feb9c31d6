"""``veil.v1.Accountant`` on a real server (SQLite and PostgreSQL): the RPCs, their
statuses for bad input, and that a refused or invalid request writes nothing."""

from __future__ import annotations

import json
import math
import urllib.request

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import accountant_pb2_grpc
from services.accountant.ledger import Ledger
from services.cli.registry import SERVICES
from tests.support.server import OTHER_TOKEN, bearer, test_settings

AUTH = bearer()


@pytest.fixture
def running(serve_app, db_url):
    settings = SERVICES["accountant"].settings(
        **test_settings().model_dump(), database_url=db_url, enforce_with="rdp"
    )
    return serve_app(SERVICES["accountant"].build(settings))


@pytest.fixture
def stub(running, channel_to):
    return accountant_pb2_grpc.AccountantStub(channel_to(running))


def scope(dataset: str = "", subject: str = "") -> pb.BudgetScope:
    return pb.BudgetScope(dataset_id=dataset, subject_id=subject)


def put(stub, sc: pb.BudgetScope, epsilon: float = 10.0, delta: float = 1e-5):
    return stub.PutBudget(
        pb.PutBudgetRequest(budget=pb.Budget(scope=sc, epsilon=epsilon, delta=delta)),
        metadata=AUTH,
    )


def gaussian_charge(key: str, sigma: float = 2.0, subjects=("alice",), count: int = 1):
    return pb.Charge(
        dataset_id="faces",
        subject_ids=list(subjects),
        event=pb.PrivacyEvent(gaussian=pb.GaussianMechanism(noise_multiplier=sigma), count=count),
        service="sanitizer",
        request_id="req-1",
        idempotency_key=key,
    )


@pytest.fixture
def budgets(stub):
    put(stub, scope(), 100.0)
    put(stub, scope("faces"), 50.0)
    put(stub, scope("faces", "alice"), 5.0)
    put(stub, scope("faces", "bob"), 5.0)


def code_and_info(err: grpc.RpcError):
    status = rpc_status.from_call(err)
    info = error_details_pb2.ErrorInfo()
    if status is not None and status.details:
        status.details[0].Unpack(info)
    return err.code(), info


def rpc_error(call, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as err:
        call(*args, metadata=AUTH, **kwargs)
    return code_and_info(err.value)


def subject_events(stub, subject: str = "alice") -> int:
    return stub.GetBudget(
        pb.GetBudgetRequest(scope=scope("faces", subject)), metadata=AUTH
    ).event_count


def test_budgets_put_get_list(stub, budgets):
    status = stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces", "alice")), metadata=AUTH)
    assert status.scope.tenant_id == "acme" and status.epsilon_limit == 5.0
    assert status.epsilon_spent_rdp == 0.0 and status.epsilon_remaining == 5.0
    assert status.tight_accountant == "pld" and status.event_count == 0
    page = stub.ListBudgets(pb.ListBudgetsRequest(page={"page_size": 3}), metadata=AUTH)
    assert len(page.budgets) == 3 and page.page.next_page_token
    rest = stub.ListBudgets(
        pb.ListBudgetsRequest(page={"page_token": page.page.next_page_token}), metadata=AUTH
    )
    assert len(rest.budgets) == 1 and not rest.page.next_page_token
    subjects = stub.ListBudgets(pb.ListBudgetsRequest(dataset_id="faces"), metadata=AUTH)
    assert {b.scope.subject_id for b in subjects.budgets} == {"", "alice", "bob"}


def test_spend_check_and_idempotent_replay(stub, budgets):
    check = stub.Check(pb.CheckRequest(charge=gaussian_charge("")), metadata=AUTH)
    assert check.allowed and len(check.projected) == 3 and check.cost.epsilon > 0
    assert subject_events(stub) == 0, "a dry run wrote something"
    receipt = stub.Spend(pb.SpendRequest(charge=gaussian_charge("k1")), metadata=AUTH)
    assert receipt.spend_id and not receipt.replayed and len(receipt.after) == 3
    assert all(s.event_count == 1 for s in receipt.after)
    assert receipt.cost.epsilon == pytest.approx(check.cost.epsilon)
    again = stub.Spend(pb.SpendRequest(charge=gaussian_charge("k1")), metadata=AUTH)
    assert again.replayed and again.spend_id == receipt.spend_id
    assert subject_events(stub) == 1
    code, _ = rpc_error(stub.Spend, pb.SpendRequest(charge=gaussian_charge("k1", sigma=3.0)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert subject_events(stub) == 1


def test_exhausted_budget_is_resource_exhausted_with_remaining(stub, budgets):
    stub.Spend(pb.SpendRequest(charge=gaussian_charge("a", sigma=4.0, count=2)), metadata=AUTH)
    before = subject_events(stub)
    big = gaussian_charge("b", sigma=1.0, count=3)  # ε ≈ 10: over alice's 5, not the rest
    check = stub.Check(pb.CheckRequest(charge=big), metadata=AUTH)
    assert not check.allowed and [s.subject_id for s in check.exceeded] == ["alice"]
    code, info = rpc_error(stub.Spend, pb.SpendRequest(charge=big))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.reason == "BUDGET_EXHAUSTED"
    assert info.metadata["subject_id"] == "alice"
    remaining = float(info.metadata["remaining_epsilon"])
    assert 0 < remaining < 5.0
    assert subject_events(stub) == before
    tenant = stub.GetBudget(pb.GetBudgetRequest(scope=scope()), metadata=AUTH)
    assert tenant.event_count == before, "an exhausted subject budget charged the tenant"


def _mechanism(**fields) -> pb.PrivacyEvent:
    return pb.PrivacyEvent(**fields)


@pytest.mark.parametrize(
    ("charge", "code"),
    [
        (gaussian_charge("x", sigma=math.nan), grpc.StatusCode.INVALID_ARGUMENT),
        (gaussian_charge("x", sigma=-1), grpc.StatusCode.INVALID_ARGUMENT),
        (gaussian_charge("x", sigma=math.inf), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.Charge(dataset_id="faces", idempotency_key="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (gaussian_charge(""), grpc.StatusCode.INVALID_ARGUMENT),
        (gaussian_charge("x", subjects=("carol",)), grpc.StatusCode.NOT_FOUND),
        (gaussian_charge("x", subjects=("alice", "alice")), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.Charge(
                dataset_id="faces",
                idempotency_key="x",
                event=_mechanism(
                    subsampled_gaussian=pb.SubsampledGaussianMechanism(
                        noise_multiplier=1.0, sampling_rate=1.5, steps=10
                    )
                ),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.Charge(
                tenant_id="globex",
                dataset_id="faces",
                idempotency_key="x",
                event=_mechanism(pure_epsilon=pb.PureEpsilon(epsilon=0.1)),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ],
    ids=[
        "nan",
        "negative",
        "inf",
        "no-mechanism",
        "no-key",
        "unknown-subject",
        "duplicate-subject",
        "rate>1",
        "other-tenant",
    ],
)
def test_bad_charges_are_refused_and_write_nothing(stub, budgets, charge, code):
    got, _ = rpc_error(stub.Spend, pb.SpendRequest(charge=charge))
    assert got == code
    assert subject_events(stub) == 0


@pytest.mark.parametrize(
    ("epsilon", "delta"), [(1.0, 1.5), (1.0, 0.0), (-1.0, 1e-5), (math.nan, 1e-5)]
)
def test_bad_budgets_are_invalid_argument(stub, epsilon, delta):
    code, _ = rpc_error(
        stub.PutBudget,
        pb.PutBudgetRequest(budget=pb.Budget(scope=scope("faces"), epsilon=epsilon, delta=delta)),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = rpc_error(stub.GetBudget, pb.GetBudgetRequest(scope=scope("faces")))
    assert code == grpc.StatusCode.NOT_FOUND


def test_subject_without_dataset_and_other_tenant_scope(stub):
    code, _ = rpc_error(stub.GetBudget, pb.GetBudgetRequest(scope=scope("", "alice")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = rpc_error(
        stub.GetBudget, pb.GetBudgetRequest(scope=pb.BudgetScope(tenant_id="globex"))
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_scope_of_the_token_is_enforced(stub, budgets):
    with pytest.raises(grpc.RpcError) as err:
        stub.Spend(pb.SpendRequest(charge=gaussian_charge("k")), metadata=bearer(OTHER_TOKEN))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # globex may read its own budgets only: acme's are invisible (it has none of its own)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces")), metadata=bearer(OTHER_TOKEN))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reserve_commit_release(stub, budgets):
    lease = Duration(seconds=60)
    held = stub.Reserve(pb.ReserveRequest(charge=gaussian_charge("r1"), lease=lease), metadata=AUTH)
    assert held.reservation_id and held.cost.epsilon > 0
    status = stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces", "alice")), metadata=AUTH)
    assert status.event_count == 0 and status.epsilon_reserved > 0
    receipt = stub.Commit(pb.CommitRequest(reservation_id=held.reservation_id), metadata=AUTH)
    assert receipt.reservation_id == held.reservation_id and not receipt.replayed
    again = stub.Commit(pb.CommitRequest(reservation_id=held.reservation_id), metadata=AUTH)
    assert again.replayed and again.spend_id == receipt.spend_id
    assert subject_events(stub) == 1
    other = stub.Reserve(pb.ReserveRequest(charge=gaussian_charge("r2")), metadata=AUTH)
    released = stub.Release(
        pb.ReleaseReservationRequest(reservation_id=other.reservation_id), metadata=AUTH
    )
    assert released.released
    code, _ = rpc_error(stub.Commit, pb.CommitRequest(reservation_id=other.reservation_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, _ = rpc_error(stub.Commit, pb.CommitRequest(reservation_id="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = rpc_error(
        stub.Reserve, pb.ReserveRequest(charge=gaussian_charge("r3"), lease=Duration(seconds=-1))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert subject_events(stub) == 1


def test_events_pages_and_audit_export_replays(stub, budgets, tmp_path):
    for i in range(5):
        stub.Spend(pb.SpendRequest(charge=gaussian_charge(f"k{i}", sigma=20.0)), metadata=AUTH)
    first = stub.ListEvents(
        pb.ListEventsRequest(scope=scope("faces", "alice"), page={"page_size": 2}), metadata=AUTH
    )
    assert len(first.events) == 2 and first.page.next_page_token
    assert first.events[0].charge.idempotency_key == "k4"  # newest first
    seen = [e.spend_id for e in first.events]
    token = first.page.next_page_token
    while token:
        page = stub.ListEvents(
            pb.ListEventsRequest(scope=scope("faces", "alice"), page={"page_token": token}),
            metadata=AUTH,
        )
        seen += [e.spend_id for e in page.events]
        token = page.page.next_page_token
    assert len(set(seen)) == 5
    code, _ = rpc_error(
        stub.ListEvents, pb.ListEventsRequest(scope=scope("faces"), page={"page_token": "???"})
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    lines = b"".join(c.jsonl for c in stub.ExportAudit(pb.ExportAuditRequest(), metadata=AUTH))
    records = [json.loads(line) for line in lines.decode().splitlines()]
    assert sum(r["type"] == "budget" for r in records) == 4
    assert sum(r["type"] == "event" for r in records) == 5
    fresh = Ledger(f"sqlite:///{tmp_path / 'replayed.sqlite'}")
    fresh.create_schema()
    assert fresh.replay(lines.decode().splitlines()) == 5
    original = stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces", "alice")), metadata=AUTH)
    from services.accountant.events import Scope

    replayed = fresh.remaining("acme", Scope("acme", "faces", "alice"))
    assert replayed.epsilon_rdp == pytest.approx(original.epsilon_spent_rdp)
    assert fresh.verify("acme", Scope("acme", "faces", "alice")).ok
    fresh.close()


def test_metrics_count_spends_and_refusals(running, stub, budgets):
    stub.Spend(pb.SpendRequest(charge=gaussian_charge("m1")), metadata=AUTH)
    with pytest.raises(grpc.RpcError):
        stub.Spend(pb.SpendRequest(charge=gaussian_charge("m2", sigma=0.1)), metadata=AUTH)
    url = f"http://127.0.0.1:{running.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'veil_accountant_spends_total{kind="spend"} 1.0' in text
    assert 'veil_accountant_refusals_total{reason="budget_exhausted"} 1.0' in text
    assert 'grpc_code="RESOURCE_EXHAUSTED",grpc_method="Spend"' in text
    assert "alice" not in text, "a subject id leaked into a metric label"
