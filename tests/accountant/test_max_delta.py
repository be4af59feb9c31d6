"""A budget's δ is at most the server's maximum (``max_delta``, default 1e-5) when it is put;
an audit replay restores budgets with the δ they were accepted with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from services.accountant.events import Budget, Charge, Gaussian, Scope, SubjectDefault
from services.accountant.ledger import Ledger
from services.accountant.settings import AccountantSettings
from services.common.errors import InvalidArgument

T, D = "acme", "faces"


def test_the_default_maximum_is_1e_5(make_ledger: Callable[..., Ledger]) -> None:
    led = make_ledger()
    assert led.budgets.max_delta == 1e-5 == AccountantSettings().max_delta
    assert led.budgets.put(T, Budget(Scope(T), 10.0, 1e-5)).delta == 1e-5  # the maximum itself
    with pytest.raises(InvalidArgument) as info:
        led.budgets.put(T, Budget(Scope(T), 10.0, 1.5e-5))
    assert info.value.details["field"] == "budget.delta"
    assert "1.5e-05" in info.value.message and "1e-05" in info.value.message
    assert led.budgets.remaining(T, Scope(T)).delta == 1e-5  # the refused put changed nothing


def test_a_subject_default_above_the_maximum_is_refused(make_ledger: Callable[..., Ledger]) -> None:
    led = make_ledger()
    led.budgets.put(T, Budget(Scope(T), 10.0, 1e-5))
    with pytest.raises(InvalidArgument) as info:
        led.budgets.put(T, Budget(Scope(T, D), 5.0, 1e-6, SubjectDefault(1.0, 1e-3)))
    assert info.value.details == {"field": "budget.subject_default.delta", "limit": "1e-05"}
    assert "0.001" in info.value.message
    assert [b.scope for b in led.budgets.page(T, T).budgets] == [Scope(T)]  # nothing written


def test_the_maximum_is_a_setting(
    make_ledger: Callable[..., Ledger], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VEIL_ACCOUNTANT_MAX_DELTA", "1e-3")
    settings = AccountantSettings(database_url=f"sqlite:///{tmp_path / 'l.sqlite'}")
    assert settings.max_delta == 1e-3
    led = Ledger.from_settings(settings)
    try:
        assert led.budgets.max_delta == 1e-3
    finally:
        led.close()
    loose = make_ledger(max_delta=1e-3)
    assert loose.budgets.put(T, Budget(Scope(T), 10.0, 1e-4)).delta == 1e-4
    monkeypatch.setenv("VEIL_ACCOUNTANT_MAX_DELTA", "1.5")
    with pytest.raises(ValueError, match="max_delta"):
        AccountantSettings()


def test_a_replay_keeps_a_delta_above_the_maximum(
    make_ledger: Callable[..., Ledger], tmp_path: Path
) -> None:
    """History accepted under a larger maximum (or before there was one) replays as it was."""
    loose = make_ledger(max_delta=1e-3)
    loose.budgets.put(T, Budget(Scope(T), 50.0, 1e-4))
    loose.budgets.put(T, Budget(Scope(T, D), 20.0, 1e-4, SubjectDefault(4.0, 1e-3)))
    loose.spend(T, Charge(Gaussian(5.0), T, D, "k", subject_ids=("alice",)))
    lines = list(loose.audit.export(T))
    strict = make_ledger(url=f"sqlite:///{tmp_path / 'replayed.sqlite'}")
    assert strict.budgets.max_delta == 1e-5
    assert strict.audit.replay(lines) == 1
    assert strict.budgets.remaining(T, Scope(T, D)).subject_default == SubjectDefault(4.0, 1e-3)
    assert strict.budgets.remaining(T, Scope(T, D, "alice")).delta == 1e-3
    assert list(strict.audit.export(T)) == lines
    with pytest.raises(InvalidArgument):  # a put is still checked
        strict.budgets.put(T, Budget(Scope(T), 60.0, 1e-4))
