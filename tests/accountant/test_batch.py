"""``ChargeBatch``: many charges in one transaction under one key, each accepted or refused
on its own — on a real server, SQLite and PostgreSQL."""

from __future__ import annotations

import math

import grpc
import pytest

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import accountant_pb2_grpc
from services.cli.registry import SERVICES
from tests.support.server import bearer, test_settings

AUTH = bearer()


@pytest.fixture
def stub(serve_app, channel_to, db_url):
    settings = SERVICES["accountant"].settings(**test_settings().model_dump(), database_url=db_url)
    stub = accountant_pb2_grpc.AccountantStub(
        channel_to(serve_app(SERVICES["accountant"].build(settings)))
    )
    default = pb.SubjectDefault(epsilon=3.0, delta=1e-6)
    for dataset, epsilon in (("", 1000.0), ("faces", 500.0)):
        budget = pb.Budget(
            scope=pb.BudgetScope(dataset_id=dataset),
            epsilon=epsilon,
            delta=1e-5,
            subject_default=default if dataset else None,
        )
        stub.PutBudget(pb.PutBudgetRequest(budget=budget), metadata=AUTH)
    return stub


def item(subject: str, sigma: float = 5.0, dataset: str = "faces") -> pb.Charge:
    return pb.Charge(
        dataset_id=dataset,
        subject_ids=[subject] if subject else [],
        event=pb.PrivacyEvent(gaussian=pb.GaussianMechanism(noise_multiplier=sigma)),
    )


def batch(stub, key: str, items: list[pb.Charge]) -> pb.ChargeBatchResponse:
    request = pb.ChargeBatchRequest(idempotency_key=key, charges=items)
    return stub.ChargeBatch(request, metadata=AUTH)


def subject(stub, name: str) -> pb.BudgetStatus:
    scope = pb.BudgetScope(dataset_id="faces", subject_id=name)
    return stub.GetBudget(pb.GetBudgetRequest(scope=scope), metadata=AUTH)


def test_each_item_is_decided_on_its_own(stub):
    items = [
        item("s0"),
        item("s1", sigma=0.3),  # far over the subject default ε = 3: refused alone
        item("s2"),
        item("s0"),  # sees s0's first item: still room
        item("ghost", dataset="nowhere"),  # no such dataset budget: NOT_FOUND alone
    ]
    items.append(pb.Charge(dataset_id="faces"))  # no event: INVALID_ARGUMENT alone
    out = batch(stub, "b1", items)
    assert (out.accepted, out.refused) == (3, 3)
    codes = [r.error.code if r.HasField("error") else 0 for r in out.results]
    assert codes == [
        0,
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        0,
        0,
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
    ]
    assert out.results[1].error.reason == "BUDGET_EXHAUSTED"
    assert float(out.results[1].error.details["remaining_epsilon"]) == pytest.approx(3.0)
    assert subject(stub, "s0").event_count == 2 and subject(stub, "s2").event_count == 1
    with pytest.raises(grpc.RpcError) as err:
        subject(stub, "s1")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, "a refused item wrote its subject"
    receipt = out.results[3].receipt
    assert receipt.after[-1].event_count == 2 and receipt.spend_id
    for status in receipt.after:
        assert not math.isnan(status.epsilon_spent_tight) and status.epsilon_spent > 0
        assert status.epsilon_spent <= status.epsilon_spent_rdp


def test_a_retry_replays_accepted_items_and_decides_refused_ones_again(stub):
    first = batch(stub, "b2", [item("r0"), item("r1", sigma=0.3)])
    assert (first.accepted, first.refused) == (1, 1)
    again = batch(stub, "b2", [item("r0"), item("r1", sigma=0.3)])
    assert again.results[0].receipt.replayed
    assert again.results[0].receipt.spend_id == first.results[0].receipt.spend_id
    assert again.results[1].HasField("error")
    assert subject(stub, "r0").event_count == 1


def test_item_keys_and_foreign_tenants_are_refused_per_item(stub):
    keyed = item("k0")
    keyed.idempotency_key = "mine"
    foreign = item("k1")
    foreign.tenant_id = "globex"
    out = batch(stub, "b3", [keyed, foreign, item("k2")])
    assert [r.HasField("error") for r in out.results] == [True, True, False]
    assert out.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_a_batch_whose_items_are_all_refused_writes_nothing(stub):
    keyed = item("z0")
    keyed.idempotency_key = "mine"
    out = batch(stub, "b5", [keyed, pb.Charge(dataset_id="faces")])
    assert (out.accepted, out.refused) == (0, 2)
    assert batch(stub, "b6", []).results == []


def test_the_batch_itself_is_checked(stub):
    with pytest.raises(grpc.RpcError) as err:
        batch(stub, "", [item("x")])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        batch(stub, "big", [item(f"x{i}", sigma=50.0) for i in range(1001)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_batch_of_100_is_one_transaction_and_composes_like_single_spends(stub):
    out = batch(stub, "b4", [item(f"p{i % 10}", sigma=20.0) for i in range(100)])
    assert out.accepted == 100
    singles = [
        stub.Spend(
            pb.SpendRequest(charge=_keyed(item(f"q{i % 10}", sigma=20.0), f"q{i}")), metadata=AUTH
        )
        for i in range(100)
    ]
    assert subject(stub, "p3").epsilon_spent_rdp == pytest.approx(
        subject(stub, "q3").epsilon_spent_rdp
    )
    assert len({r.spend_id for r in singles}) == 100
    tenant = stub.GetBudget(pb.GetBudgetRequest(scope=pb.BudgetScope()), metadata=AUTH)
    assert tenant.event_count == 200


def _keyed(charge: pb.Charge, key: str) -> pb.Charge:
    charge.idempotency_key = key
    return charge
