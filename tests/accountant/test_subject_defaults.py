"""Default subject budgets: a dataset budget's ``subject_default`` creates a subject's budget
on its first charge, in the same transaction, once — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from services.accountant.events import Budget, Charge, Gaussian, Scope, SubjectDefault
from services.accountant.ledger import Ledger
from services.common.errors import BudgetExhausted, InvalidArgument, NotFound

T, D = "acme", "faces"
DEFAULT = SubjectDefault(4.0, 1e-6)


@pytest.fixture
def ledger(make_ledger: Callable[..., Ledger]) -> Ledger:
    led = make_ledger(enforce_with="rdp")
    led.budgets.put(T, Budget(Scope(T), 100.0, 1e-5))
    led.budgets.put(T, Budget(Scope(T, D), 50.0, 1e-5, DEFAULT))
    return led


def charge(*subjects: str, sigma: float = 5.0, key: str = "k") -> Charge:
    return Charge(Gaussian(sigma), T, D, key, subject_ids=subjects)


def test_first_charge_creates_the_subject_budget_from_the_default(ledger: Ledger) -> None:
    assert ledger.budgets.remaining(T, Scope(T, D)).subject_default == DEFAULT
    receipt = ledger.spend(T, charge("new-1", "new-2"))
    assert len(receipt.statuses) == 4
    for subject in ("new-1", "new-2"):
        status = ledger.budgets.remaining(T, Scope(T, D, subject))
        assert (status.limit_epsilon, status.delta) == (DEFAULT.epsilon, DEFAULT.delta)
        assert status.event_count == 1 and status.subject_default is None
        assert ledger.audit.verify(T, Scope(T, D, subject)).ok


def test_a_dry_run_projects_the_new_budget_and_writes_nothing(ledger: Ledger) -> None:
    statuses = ledger.check(T, charge("ghost"))
    assert statuses[-1].scope == Scope(T, D, "ghost")
    assert statuses[-1].limit_epsilon == DEFAULT.epsilon and not statuses[-1].exceeds
    assert ledger.check(T, charge("ghost", sigma=0.2))[-1].exceeds
    with pytest.raises(NotFound):
        ledger.budgets.remaining(T, Scope(T, D, "ghost"))


def test_a_refused_first_charge_creates_nothing(ledger: Ledger) -> None:
    with pytest.raises(BudgetExhausted):
        ledger.spend(T, charge("greedy", sigma=0.2))  # far over the default ε = 4
    with pytest.raises(NotFound):
        ledger.budgets.remaining(T, Scope(T, D, "greedy"))
    assert ledger.budgets.remaining(T, Scope(T, D)).event_count == 0


def test_without_a_default_an_unknown_subject_is_not_found(ledger: Ledger) -> None:
    ledger.budgets.put(T, Budget(Scope(T, D), 50.0, 1e-5))  # the update removes the default
    assert ledger.budgets.remaining(T, Scope(T, D)).subject_default is None
    with pytest.raises(NotFound):
        ledger.spend(T, charge("stranger"))
    with pytest.raises(NotFound):
        ledger.check(T, charge("stranger"))


def test_only_a_dataset_budget_carries_a_default() -> None:
    for scope in (Scope(T), Scope(T, D, "s")):
        with pytest.raises(InvalidArgument):
            Budget(scope, 1.0, 1e-5, DEFAULT)
    with pytest.raises(InvalidArgument):
        SubjectDefault(1.0, 1.0)


def test_concurrent_first_charges_create_one_budget(ledger: Ledger) -> None:
    errors: list[BaseException] = []

    def spend(i: int) -> None:
        try:
            ledger.spend(T, charge("racer", sigma=20.0, key=f"race-{i}"))
        except BaseException as exc:  # collected: the assertion below shows them
            errors.append(exc)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    status = ledger.budgets.remaining(T, Scope(T, D, "racer"))
    assert status.event_count == 8 and ledger.audit.verify(T, Scope(T, D, "racer")).ok
    page = ledger.budgets.page(T, T, dataset_id=D)
    assert [b.scope.subject_id for b in page.budgets].count("racer") == 1


def test_export_and_replay_keep_the_default(ledger: Ledger, make_ledger, tmp_path) -> None:
    ledger.spend(T, charge("a"))
    lines = list(ledger.audit.export(T))
    dataset_line = next(json.loads(x) for x in lines if '"dataset_id": "faces"' in x)
    assert dataset_line["subject_default"] == {"epsilon": 4.0, "delta": 1e-6}
    fresh = make_ledger(url=f"sqlite:///{tmp_path / 'replayed.sqlite'}")
    assert fresh.audit.replay(lines) == 1
    assert fresh.budgets.remaining(T, Scope(T, D)).subject_default == DEFAULT
    assert fresh.budgets.remaining(T, Scope(T, D, "a")).event_count == 1
