"""``veil.v1.Accountant`` on a real server (SQLite and PostgreSQL): the RPCs, their
statuses for bad input, and that a refused or invalid request writes nothing."""

from __future__ import annotations

import json
import math
import time
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
    assert first.events[0].charge.idempotency_key == "k0"  # oldest first (the contract)
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
    assert fresh.audit.replay(lines.decode().splitlines()) == 5
    original = stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces", "alice")), metadata=AUTH)
    from services.accountant.events import Scope

    replayed = fresh.budgets.remaining("acme", Scope("acme", "faces", "alice"))
    assert replayed.epsilon_rdp == pytest.approx(original.epsilon_spent_rdp)
    assert fresh.audit.verify("acme", Scope("acme", "faces", "alice")).ok
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


# -- the contract as accountant.proto states it (issue: code and proto must agree) ---------


def bad_request(err: grpc.RpcError) -> error_details_pb2.BadRequest:
    """The ``google.rpc.BadRequest`` detail of an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            found = error_details_pb2.BadRequest()
            detail.Unpack(found)
            return found
    raise AssertionError("no google.rpc.BadRequest in the status")


def test_empty_dataset_charges_the_tenant_budget_alone(stub, budgets):
    charge = gaussian_charge("tenant-only", subjects=())
    charge.dataset_id = ""
    receipt = stub.Spend(pb.SpendRequest(charge=charge), metadata=AUTH)
    assert [s.scope.dataset_id for s in receipt.after] == [""]
    tenant = stub.GetBudget(pb.GetBudgetRequest(scope=scope()), metadata=AUTH)
    dataset = stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces")), metadata=AUTH)
    assert tenant.event_count == 1 and dataset.event_count == 0
    charge.subject_ids.append("alice")  # subjects without a dataset: refused, nothing written
    with pytest.raises(grpc.RpcError) as err:
        stub.Spend(pb.SpendRequest(charge=charge), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(err.value).field_violations[0].field == "charge.subject_ids"
    assert subject_events(stub) == 0


def test_an_empty_idempotency_key_is_not_idempotent(stub, budgets):
    first = stub.Spend(pb.SpendRequest(charge=gaussian_charge("", sigma=20.0)), metadata=AUTH)
    again = stub.Spend(pb.SpendRequest(charge=gaussian_charge("", sigma=20.0)), metadata=AUTH)
    assert not first.replayed and not again.replayed and first.spend_id != again.spend_id
    assert subject_events(stub) == 2


def test_lease_zero_is_the_default_and_a_long_one_is_clamped(stub, budgets):
    for seconds, expected in ((0, 30.0), (3600, 600.0)):  # settings: default 30 s, max 600 s
        held = stub.Reserve(
            pb.ReserveRequest(
                charge=gaussian_charge(f"l{seconds}"), lease=Duration(seconds=seconds)
            ),
            metadata=AUTH,
        )
        now = held.expires_at.ToSeconds() - expected
        assert abs(now - time.time()) < 30, (seconds, held.expires_at)


def test_second_release_reports_released_false(stub, budgets):
    held = stub.Reserve(pb.ReserveRequest(charge=gaussian_charge("rel")), metadata=AUTH)
    request = pb.ReleaseReservationRequest(reservation_id=held.reservation_id)
    assert stub.Release(request, metadata=AUTH).released is True
    assert stub.Release(request, metadata=AUTH).released is False


def test_laplace_sensitivity_zero_is_refused_not_read_as_one(stub, budgets):
    charge = gaussian_charge("lap")
    charge.event.laplace.scale = 10.0  # sensitivity left 0
    with pytest.raises(grpc.RpcError) as err:
        stub.Spend(pb.SpendRequest(charge=charge), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sensitivity" in bad_request(err.value).field_violations[0].field
    assert subject_events(stub) == 0


def test_labels_are_kept_in_events_and_the_audit_export(stub, budgets):
    charge = gaussian_charge("labelled", sigma=20.0)
    charge.labels["release"] = "r-17"
    charge.labels["model"] = "diffae@1"
    stub.Spend(pb.SpendRequest(charge=charge), metadata=AUTH)
    events = stub.ListEvents(pb.ListEventsRequest(scope=scope("faces", "alice")), metadata=AUTH)
    assert dict(events.events[0].charge.labels) == {"release": "r-17", "model": "diffae@1"}
    lines = b"".join(c.jsonl for c in stub.ExportAudit(pb.ExportAuditRequest(), metadata=AUTH))
    event = next(json.loads(x) for x in lines.splitlines() if b'"event"' in x)
    assert event["charge"]["labels"] == {"release": "r-17", "model": "diffae@1"}
    # A retry that differs only in labels is the same charge: replayed, not a conflict.
    charge.labels["release"] = "r-18"
    assert stub.Spend(pb.SpendRequest(charge=charge), metadata=AUTH).replayed


def _with(**changes):
    charge = gaussian_charge("capped")
    for name, value in changes.items():
        if name == "subjects":
            del charge.subject_ids[:]
            charge.subject_ids.extend(value)
        elif name == "labels":
            charge.labels.update(value)
        elif name == "count":
            charge.event.count = value
        else:
            setattr(charge, name, value)
    return charge


@pytest.mark.parametrize(
    ("charge", "field"),
    [
        (_with(idempotency_key="k" * 256), "charge.idempotency_key"),
        (_with(idempotency_key="k\x00"), "charge.idempotency_key"),
        (_with(idempotency_key="é" * 128), "charge.idempotency_key"),  # 256 bytes in UTF-8
        (_with(dataset_id="d" * 256), "charge.dataset_id"),
        (_with(subjects=["s" * 256]), "charge.subject_ids"),
        (_with(subjects=["a\x00b"]), "charge.subject_ids"),
        (_with(subjects=[f"s{i}" for i in range(1001)]), "charge.subject_ids"),
        (_with(count=2**62), "charge.event.count"),
        (_with(request_id="r" * 10_000), "charge.request_id"),
        (_with(labels={f"k{i}": "v" for i in range(33)}), "charge.labels"),
    ],
    ids=[
        "key-long",
        "key-nul",
        "key-utf8",
        "dataset",
        "subject",
        "subject-nul",
        "subjects",
        "count",
        "request-id",
        "labels",
    ],
)
def test_caps_are_invalid_argument_naming_the_field(stub, budgets, charge, field):
    for call, request in ((stub.Spend, pb.SpendRequest), (stub.Check, pb.CheckRequest)):
        with pytest.raises(grpc.RpcError) as err:
            call(request(charge=charge), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert bad_request(err.value).field_violations[0].field == field
    assert subject_events(stub) == 0


def test_ids_are_capped_on_every_read(stub, budgets):
    for request_scope in (scope("d" * 256), scope("faces", "a\x00"), scope("faces", "x" * 10_000)):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetBudget(pb.GetBudgetRequest(scope=request_scope), metadata=AUTH)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.Commit(pb.CommitRequest(reservation_id="r" * 10_000), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_many_unknown_subjects_are_not_found_quickly(stub, budgets):
    """1000 subjects (the cap) that have no budget: NOT_FOUND on both databases, not an
    SQL expression limit surfacing as INTERNAL."""
    charge = _with(subjects=[f"ghost-{i}" for i in range(1000)])
    with pytest.raises(grpc.RpcError) as err:
        stub.Spend(pb.SpendRequest(charge=charge), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_subject_default_over_grpc(stub, budgets):
    dataset = pb.Budget(
        scope=scope("faces"),
        epsilon=50.0,
        delta=1e-5,
        subject_default=pb.SubjectDefault(epsilon=2.0, delta=1e-6),
    )
    status = stub.PutBudget(pb.PutBudgetRequest(budget=dataset), metadata=AUTH)
    assert status.subject_default.epsilon == 2.0
    check = stub.Check(pb.CheckRequest(charge=gaussian_charge("", 5.0, ("newbie",))), metadata=AUTH)
    assert check.allowed and check.projected[-1].epsilon_limit == 2.0
    with pytest.raises(grpc.RpcError) as err:
        stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces", "newbie")), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, "a dry run created a budget"
    stub.Spend(pb.SpendRequest(charge=gaussian_charge("nb", 5.0, ("newbie",))), metadata=AUTH)
    created = stub.GetBudget(pb.GetBudgetRequest(scope=scope("faces", "newbie")), metadata=AUTH)
    assert (created.epsilon_limit, created.delta, created.event_count) == (2.0, 1e-6, 1)
    assert not created.HasField("subject_default")
    bad = pb.Budget(
        scope=scope("faces", "alice"),
        epsilon=5.0,
        delta=1e-5,
        subject_default=pb.SubjectDefault(epsilon=1.0, delta=1e-6),
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.PutBudget(pb.PutBudgetRequest(budget=bad), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(err.value).field_violations[0].field == "budget.subject_default"


def test_reserve_is_idempotent_by_key(stub, budgets):
    request = pb.ReserveRequest(charge=gaussian_charge("rk"), lease=Duration(seconds=60))
    held = stub.Reserve(request, metadata=AUTH)
    assert not held.replayed and not held.spend_id and len(held.projected) == 3
    again = stub.Reserve(request, metadata=AUTH)
    assert again.replayed and again.reservation_id == held.reservation_id
    # Its lease runs on from the retry (the retry needs its time), never shorter.
    assert again.expires_at.ToNanoseconds() >= held.expires_at.ToNanoseconds()
    assert not again.spend_id
    assert again.cost == held.cost  # set on a replay too
    assert list(again.projected) == list(held.projected)  # after the commit, held once
    receipt = stub.Commit(pb.CommitRequest(reservation_id=held.reservation_id), metadata=AUTH)
    done = stub.Reserve(request, metadata=AUTH)
    assert done.replayed and done.spend_id == receipt.spend_id
    assert done.reservation_id == held.reservation_id and done.cost == held.cost
    assert list(done.projected) == list(receipt.after)  # the budgets after its spend
    code, _ = rpc_error(stub.Reserve, pb.ReserveRequest(charge=gaussian_charge("rk", sigma=3.0)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    unkeyed = [stub.Reserve(pb.ReserveRequest(charge=gaussian_charge("")), metadata=AUTH)]
    unkeyed.append(stub.Reserve(pb.ReserveRequest(charge=gaussian_charge("")), metadata=AUTH))
    assert unkeyed[0].reservation_id != unkeyed[1].reservation_id
    assert not any(u.replayed for u in unkeyed)
    assert subject_events(stub) == 1


@pytest.mark.parametrize(
    ("default", "field", "given"),
    [(None, "budget.delta", "2e-05"), (1e-4, "budget.subject_default.delta", "0.0001")],
)
def test_a_delta_above_the_server_maximum_is_invalid_argument(stub, default, field, given):
    budget = pb.Budget(scope=scope("faces"), epsilon=5.0, delta=2e-5 if default is None else 1e-5)
    if default is not None:
        budget.subject_default.CopyFrom(pb.SubjectDefault(epsilon=1.0, delta=default))
    with pytest.raises(grpc.RpcError) as err:
        stub.PutBudget(pb.PutBudgetRequest(budget=budget), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = bad_request(err.value).field_violations[0]
    assert violation.field == field
    assert given in violation.description and "1e-05" in violation.description
    code, _ = rpc_error(stub.GetBudget, pb.GetBudgetRequest(scope=scope("faces")))
    assert code == grpc.StatusCode.NOT_FOUND  # nothing was written
