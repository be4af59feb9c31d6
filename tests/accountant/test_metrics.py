"""Metrics land on the registry passed in, with bounded labels."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry

from services.accountant.events import Budget, Charge, Gaussian, Scope
from services.accountant.ledger import Ledger
from services.accountant.metrics import AccountantMetrics
from services.accountant.policy import Policy
from services.common.errors import BudgetExhausted, FailedPrecondition
from tests.support.accountant import FakeClock


def test_spend_and_refusal_metrics(tmp_path: object) -> None:
    registry = CollectorRegistry()
    metrics = AccountantMetrics(registry, low_cardinality_datasets=["faces"])
    led = Ledger(
        f"sqlite:///{tmp_path}/m.sqlite", metrics=metrics, policy=Policy(enforce_with="rdp")
    )
    led.create_schema()
    for scope in (Scope("t"), Scope("t", "faces"), Scope("t", "misc")):
        led.budgets.put("t", Budget(scope, 3.0, 1e-5))
    led.spend("t", Charge(Gaussian(5.0), "t", "faces", "k1"))
    led.spend("t", Charge(Gaussian(5.0), "t", "misc", "k2"))
    with contextlib.suppress(BudgetExhausted):
        led.spend("t", Charge(Gaussian(0.1), "t", "misc", "k3"))
    get = registry.get_sample_value
    assert get("veil_accountant_spends_total", {"kind": "spend"}) == 2
    assert get("veil_accountant_refusals_total", {"reason": "budget_exhausted"}) == 1
    assert get("veil_accountant_dataset_epsilon_spent", {"dataset": "faces"}) > 0
    assert get("veil_accountant_dataset_epsilon_spent", {"dataset": "other"}) > 0
    assert get("veil_accountant_dataset_epsilon_spent_epsilon", {"dataset": "faces"}) is None
    assert get("veil_accountant_spend_duration_seconds_count") == 2
    led.close()


def test_open_reservations_are_counted_at_scrape_time(tmp_path: object) -> None:
    """Read from the ledger when scraped: reservations taken by another replica count too."""
    registry = CollectorRegistry()
    url = f"sqlite:///{tmp_path}/r.sqlite"
    led = Ledger(url, metrics=AccountantMetrics(registry), policy=Policy(enforce_with="rdp"))
    led.create_schema()
    other = Ledger(url, policy=Policy(enforce_with="rdp"))  # another replica, no metrics
    for scope in (Scope("t"), Scope("t", "d")):
        led.budgets.put("t", Budget(scope, 3.0, 1e-5))
    gauge = "veil_accountant_reservations_outstanding"
    assert registry.get_sample_value(gauge) == 0
    held = other.reservations.reserve("t", Charge(Gaussian(50.0), "t", "d", "r1"))
    assert registry.get_sample_value(gauge) == 1
    other.reservations.release("t", held.reservation_id)
    assert registry.get_sample_value(gauge) == 0
    other.close()
    led.close()


def test_counters_start_at_zero_and_the_epsilon_gauge_only_rises(tmp_path: object) -> None:
    """Every spend path and refusal reason is a series before the first spend (a rate of
    them is defined from the start); the dataset gauge is a high-water mark, the figure
    ``max`` across replicas is right for: an unlisted dataset spent less does not lower
    "other"."""
    registry = CollectorRegistry()
    get = registry.get_sample_value
    metrics = AccountantMetrics(registry)
    for kind in ("spend", "commit", "batch"):
        assert get("veil_accountant_spends_total", {"kind": kind}) == 0
    assert get("veil_accountant_refusals_total", {"reason": "budget_exhausted"}) == 0
    assert get("veil_accountant_reservations_expired_total") == 0
    metrics.spent("spend", "a", 2.0, 0.01)
    metrics.spent("spend", "b", 0.5, 0.01)
    assert get("veil_accountant_dataset_epsilon_spent", {"dataset": "other"}) == 2.0


def test_a_reservation_that_lapses_is_counted_once_however_it_is_found(tmp_path: object) -> None:
    """Expired by a Commit, by a Release or by the tenant's next Reserve: each is counted
    when the ledger marks it, and only then."""
    registry = CollectorRegistry()
    clock = FakeClock()
    led = Ledger(
        f"sqlite:///{tmp_path}/x.sqlite",
        metrics=AccountantMetrics(registry),
        policy=Policy(enforce_with="rdp"),
        clock=clock,
    )
    led.create_schema()
    for scope in (Scope("t"), Scope("t", "d")):
        led.budgets.put("t", Budget(scope, 30.0, 1e-5))

    def reserve(key: str) -> str:
        charge = Charge(Gaussian(50.0), "t", "d", key)
        return led.reservations.reserve("t", charge, lease_s=10).reservation_id

    expired = "veil_accountant_reservations_expired_total"
    committed, released, swept = reserve("c"), reserve("r"), reserve("s")
    clock.advance(11)
    with contextlib.suppress(FailedPrecondition):
        led.reservations.commit("t", committed)
    assert registry.get_sample_value(expired) == 1
    assert led.reservations.release("t", released) is False
    assert registry.get_sample_value(expired) == 2
    reserve("next")  # sweeps the tenant's lapsed reservation "s"
    assert registry.get_sample_value(expired) == 3
    assert led.reservations.release("t", swept) is False  # already marked: not again
    assert registry.get_sample_value(expired) == 3
    led.close()
