"""Contract suite: every accountant × every ledger backend must pass all of these."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable

import pytest

from services.accountant.events import (
    Budget,
    Charge,
    Gaussian,
    Laplace,
    PureEpsilon,
    Scope,
    SubsampledGaussian,
)
from services.accountant.ledger import Ledger
from services.common.errors import (
    AlreadyExists,
    BudgetExhausted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from tests.support.accountant import ACCOUNTANTS, FakeClock

T, D, S = "acme", "faces", "alice"
TENANT, DATASET, SUBJECT = Scope(T), Scope(T, D), Scope(T, D, S)
_keys = itertools.count()


@pytest.fixture(params=ACCOUNTANTS)
def ledger(request: pytest.FixtureRequest, make_ledger: Callable[..., Ledger]) -> Ledger:
    led = make_ledger(enforce_with=request.param, tight="prv" if request.param == "prv" else "pld")
    led.budgets.put(T, Budget(TENANT, 50.0, 1e-5))
    led.budgets.put(T, Budget(DATASET, 20.0, 1e-5))
    led.budgets.put(T, Budget(SUBJECT, 5.0, 1e-5))
    return led


def charge(sigma: float = 5.0, key: str | None = None, **kw: object) -> Charge:
    args: dict[str, object] = {
        "mechanism": Gaussian(sigma),
        "tenant_id": T,
        "dataset_id": D,
        "subject_ids": (S,),
        "idempotency_key": key or f"k{next(_keys)}",
    }
    args.update(kw)
    return Charge(**args)  # type: ignore[arg-type]


def versions(led: Ledger) -> list[int]:
    return [led.budgets.remaining(T, s).version for s in (TENANT, DATASET, SUBJECT)]


def test_spend_updates_every_budget(ledger: Ledger) -> None:
    receipt = ledger.spend(T, charge())
    assert not receipt.replayed and len(receipt.statuses) == 3
    for scope in (TENANT, DATASET, SUBJECT):
        st = ledger.budgets.remaining(T, scope)
        assert st.epsilon_rdp > 0 and st.epsilon_tight is not None and st.version == 1
        assert 0 < st.epsilon_enforced <= st.epsilon_rdp
        assert ledger.audit.verify(T, scope).ok


def test_check_writes_nothing(ledger: Ledger) -> None:
    statuses = ledger.check(T, charge(), tight=ledger.policy.enforce_with != "pld")
    assert {s.scope for s in statuses} == {TENANT, DATASET, SUBJECT}
    assert not any(s.exceeds for s in statuses)
    assert ledger.check(T, charge(sigma=0.1))[-1].exceeds
    assert versions(ledger) == [0, 0, 0]


def test_exceeding_one_budget_leaves_all_untouched(ledger: Ledger) -> None:
    with pytest.raises(BudgetExhausted) as info:
        ledger.spend(T, charge(sigma=0.5))
    assert info.value.details["scope"] == "subject"
    assert float(info.value.details["remaining_epsilon"]) == pytest.approx(5.0)
    assert versions(ledger) == [0, 0, 0]
    assert ledger.history(T, TENANT).events == ()


def test_idempotent_retry_and_conflict(ledger: Ledger) -> None:
    first = ledger.spend(T, charge(key="req-1", request_id="a"))
    again = ledger.spend(T, charge(key="req-1", request_id="b"))
    assert again.replayed and again.spend_id == first.spend_id
    assert again.committed_at == first.committed_at
    assert versions(ledger) == [1, 1, 1]
    with pytest.raises(AlreadyExists):
        ledger.spend(T, charge(sigma=7.0, key="req-1"))


def test_unknown_budget_and_foreign_tenant(ledger: Ledger) -> None:
    with pytest.raises(NotFound):
        ledger.spend(T, charge(subject_ids=("bob",)))
    with pytest.raises(PermissionDenied):
        ledger.spend("other", charge())
    with pytest.raises(PermissionDenied):
        ledger.budgets.remaining("other", SUBJECT)
    assert versions(ledger) == [0, 0, 0]


def test_reservations_count_commit_release_and_expire(ledger: Ledger, clock: FakeClock) -> None:
    big = charge(sigma=1.2)  # most of the subject's ε=5
    res = ledger.reservations.reserve(T, big, lease_s=10)
    with pytest.raises(BudgetExhausted):
        ledger.spend(T, charge(sigma=1.2))  # the live reservation counts
    assert ledger.reservations.release(T, res.reservation_id) is True
    assert ledger.reservations.release(T, res.reservation_id) is False  # idempotent: a no-op
    res2 = ledger.reservations.reserve(T, charge(sigma=1.2, key="r2"), lease_s=10)
    receipt = ledger.reservations.commit(T, res2.reservation_id)
    assert ledger.reservations.commit(T, res2.reservation_id).spend_id == receipt.spend_id
    with pytest.raises(FailedPrecondition):
        ledger.reservations.release(T, res2.reservation_id)
    assert versions(ledger) == [1, 1, 1]
    ledger.budgets.put(T, Budget(SUBJECT, 50.0, 1e-5))
    res3 = ledger.reservations.reserve(T, charge(sigma=1.2), lease_s=10)
    clock.advance(11)
    with pytest.raises(FailedPrecondition):
        ledger.reservations.commit(T, res3.reservation_id)
    with pytest.raises(NotFound):
        ledger.reservations.commit("other", res3.reservation_id)
    # The contract: a lease above the server maximum is clamped to it, not refused.
    clamped = ledger.reservations.reserve(T, charge(key="r4"), lease_s=10_000)
    assert clamped.expires_at == pytest.approx(clock.now + ledger.reservations.max_lease_s)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument):
            ledger.reservations.reserve(T, charge(key="r5"), lease_s=bad)


def test_expired_reservation_stops_counting(ledger: Ledger, clock: FakeClock) -> None:
    ledger.reservations.reserve(T, charge(sigma=1.2), lease_s=5)
    clock.advance(6)
    ledger.spend(T, charge(sigma=1.2))


MIXED = [
    Gaussian(8.0),
    SubsampledGaussian(1.5, 0.02, steps=20),
    Laplace(40.0, sensitivity=2.0),
    PureEpsilon(0.01),
]


def spend_mixed(led: Ledger, n: int) -> None:
    for i in range(n):
        subjects = (S,) if i % 2 == 0 else ()
        led.spend(T, charge(mechanism=MIXED[i % len(MIXED)], subject_ids=subjects, count=1 + i % 3))


def test_running_state_equals_full_recomputation(ledger: Ledger) -> None:
    spend_mixed(ledger, 8)
    for scope in (TENANT, DATASET, SUBJECT):
        report = ledger.audit.verify(T, scope)
        assert report.ok, report
    assert ledger.audit.verify(T, SUBJECT).event_count == 4
    assert ledger.audit.verify(T, DATASET).event_count == 8


def test_running_state_after_many_mixed_events(make_ledger: Callable[..., Ledger]) -> None:
    """Default policy (min): the tight figure is skipped while RDP fits, so this is fast."""
    led = make_ledger()
    for scope in (TENANT, DATASET, SUBJECT):
        led.budgets.put(T, Budget(scope, 1e6, 1e-5))
    spend_mixed(led, 100)
    assert all(led.audit.verify(T, scope).ok for scope in (TENANT, DATASET, SUBJECT))
    assert led.audit.verify(T, DATASET).event_count == 100


def test_audit_export_replays_to_same_state(
    ledger: Ledger, make_ledger: Callable[..., Ledger], tmp_path: object
) -> None:
    spend_mixed(ledger, 10)
    lines = list(ledger.audit.export(T))
    other = make_ledger(url=f"sqlite:///{tmp_path}/replayed.sqlite", enforce_with="rdp")
    assert other.audit.replay(lines) == 10
    for scope in (TENANT, DATASET, SUBJECT):
        a, b = ledger.budgets.remaining(T, scope), other.budgets.remaining(T, scope)
        assert (a.epsilon_rdp, a.epsilon_tight) == pytest.approx((b.epsilon_rdp, b.epsilon_tight))
        assert other.audit.verify(T, scope).ok
    assert list(other.audit.export(T)) == lines


def test_audit_export_since_keeps_later_events_and_every_budget(
    ledger: Ledger, clock: FakeClock
) -> None:
    spend_mixed(ledger, 3)
    clock.advance(10)
    cut = clock()
    spend_mixed(ledger, 2)
    items = [json.loads(line) for line in ledger.audit.export(T, since=cut)]
    kinds = [item["type"] for item in items]
    assert kinds.count("event") == 2 and kinds.count("budget") == 3
    assert all(item["committed_at"] >= cut for item in items if item["type"] == "event")


def test_history_pages_both_orders(ledger: Ledger) -> None:
    ids = [ledger.spend(T, charge(sigma=20.0)).spend_id for _ in range(7)]
    for newest_first, expected in ((True, ids[::-1]), (False, ids)):
        seen, token = [], ""
        while True:
            page = ledger.history(
                T, SUBJECT, page_size=3, page_token=token, newest_first=newest_first
            )
            seen += [e.spend_id for e in page.events]
            token = page.next_page_token
            if not token:
                break
        assert seen == expected
    token = ledger.history(T, SUBJECT, page_size=3).next_page_token  # oldest first
    with pytest.raises(InvalidArgument):
        ledger.history(T, SUBJECT, page_token=token, newest_first=True)
    forged = [
        "!!",
        base64.urlsafe_b64encode(b'{"after": 1e999, "desc": false}').decode(),
        base64.urlsafe_b64encode(f'{{"after": {2**70}, "desc": false}}'.encode()).decode(),
        base64.urlsafe_b64encode(b'{"after": -1, "desc": false}').decode(),
        base64.urlsafe_b64encode(b'{"after": true, "desc": false}').decode(),
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),
        "A" * 10_000,
    ]
    for bad in forged:
        with pytest.raises(InvalidArgument):
            ledger.history(T, SUBJECT, page_token=bad)
        with pytest.raises(InvalidArgument):
            ledger.budgets.page(T, T, page_token=bad)
