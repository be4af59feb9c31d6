"""Tight figures are computed once per budget version and stored: another replica (or a
restart) reads them instead of computing them again — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from services.accountant.accounting import pld_epsilon
from services.accountant.events import Budget, Charge, Gaussian, Laplace, Scope
from services.accountant.ledger import Ledger
from services.accountant.policy import Policy

T, D = "acme", "faces"


def counting(calls: list[tuple]) -> Callable:
    def figure(name, key, delta):
        calls.append(key)
        return pld_epsilon(key, delta)

    return figure


def ledger(url: str, calls: list[tuple]) -> Ledger:
    led = Ledger(url, policy=Policy(tight_fn=counting(calls)))
    led.create_schema()
    return led


def test_a_stored_figure_serves_every_reader_until_the_budget_changes(db_url: str) -> None:
    first_calls: list[tuple] = []
    first = ledger(db_url, first_calls)
    for scope in (Scope(T), Scope(T, D)):
        first.budgets.put(T, Budget(scope, 50.0, 1e-5))
    first.spend(T, Charge(Laplace(2.0), T, D, "a"))
    first.spend(T, Charge(Gaussian(3.0), T, D, "b"))  # a mix: no closed form
    computed = first.budgets.remaining(T, Scope(T, D))
    assert computed.tight_state == "computed" and len(first_calls) == 1

    other_calls: list[tuple] = []
    other = ledger(db_url, other_calls)
    again = other.budgets.remaining(T, Scope(T, D))
    assert other_calls == [], "a replica recomputed a stored figure"
    assert again.epsilon_tight == computed.epsilon_tight
    assert again.epsilon_enforced == computed.epsilon_enforced

    other.spend(T, Charge(Gaussian(3.0), T, D, "c"))  # a new version: the stored one is stale
    moved = other.budgets.remaining(T, Scope(T, D))
    assert len(other_calls) == 1 and moved.epsilon_tight > computed.epsilon_tight
    first_calls.clear()
    assert first.budgets.remaining(T, Scope(T, D)).epsilon_tight == moved.epsilon_tight
    assert first_calls == []
    page = first.budgets.page(T, T)
    assert {s.scope for s in page.budgets} == {Scope(T), Scope(T, D)}
    assert len(first_calls) == 1  # the tenant budget's figure was never asked before
    first.close()
    other.close()
