"""The figures computed for many budgets at once, and the batch decided ahead with them,
are exactly the one-at-a-time ones: float for float, field for field, receipt for receipt;
the stored RDP text reads back bit for bit, and a row written the old way still loads."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from services.accountant import batch
from services.accountant.accounting import (
    ORDERS,
    Composition,
    basic_epsilon,
    basic_epsilon_of,
    eps_from_rdp,
    eps_from_rdp_classic,
    eps_from_rdp_classic_rows,
    eps_from_rdp_rows,
)
from services.accountant.events import (
    Budget,
    Charge,
    Gaussian,
    Laplace,
    PureEpsilon,
    Receipt,
    Scope,
    SubjectDefault,
    SubsampledGaussian,
)
from services.accountant.ledger import Ledger
from services.accountant.policy import Policy, TightNeeded
from services.accountant.rows import composition, curve_text, dumps
from services.accountant.schema import budgets, event_budgets, events
from services.common.errors import VeilError
from tests.support.accountant import FakeClock

D = "faces"
DELTAS = (1e-5, 1e-5, 1e-7, 0.3, 1e-12)


def _curves(rng: np.random.Generator) -> np.ndarray:
    """Curves of every kind the conversions branch on: zero, tiny (the KL branch), NaN and
    +∞ entries, a negative one (numerical noise), subnormal and huge values."""
    n = len(ORDERS)
    rows = [
        np.zeros(n),
        np.full(n, 1e-300),
        rng.random(n) * 1e-9,
        rng.random(n) * 3,
        np.cumsum(rng.random(n)) * 50,
        np.where(rng.random(n) < 0.2, np.inf, rng.random(n)),
        np.where(rng.random(n) < 0.2, np.nan, rng.random(n) * 10),
        np.r_[-1e-3, rng.random(n - 1)],
        np.full(n, 5e-324),
        rng.random(n) * 1e300,
        Composition().add({("gaussian", 0.8): 7, ("laplace", 2.0): 3}).rdp,
        Composition().add({("subsampled_gaussian", 1.1, 0.01): 10_000}).rdp,
    ]
    return np.stack(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rdp_conversions_of_many_curves_are_the_one_curve_floats(seed: int) -> None:
    rng = np.random.default_rng(seed)
    curves = _curves(rng)
    for deltas in ([1e-5] * len(curves), [DELTAS[i % len(DELTAS)] for i in range(len(curves))]):
        together = eps_from_rdp_rows(curves, deltas)
        alone = [eps_from_rdp(c, d) for c, d in zip(curves, deltas, strict=True)]
        assert [_bits(x) for x in together] == [_bits(x) for x in alone]
        together = eps_from_rdp_classic_rows(curves, deltas)
        alone = [eps_from_rdp_classic(c, d) for c, d in zip(curves, deltas, strict=True)]
        assert [_bits(x) for x in together] == [_bits(x) for x in alone]
    assert eps_from_rdp_rows(curves[:0], []) == [] == eps_from_rdp_classic_rows(curves[:0], [])


def _bits(x: float) -> Any:
    return "nan" if math.isnan(x) else x.hex()


def _compositions() -> list[Composition]:
    c = Composition()
    return [
        c,
        c.add({("gaussian", 8.0): 1}),
        c.add({("gaussian", 8.0): 40}),  # over a small limit under RDP: the tight figure
        c.add({("pure_epsilon", 0.25): 3}),  # basic composition is the least
        c.add({("pure_epsilon", 0.25): 3, ("laplace", 4.0): 2}),
        c.add({("subsampled_gaussian", 1.0, 0.01): 1000}),
        c.add({("gaussian", 1e-3): 1}),  # RDP far over any limit
    ]


@pytest.mark.parametrize("enforce_with", ["min", "rdp", "pld"])
def test_statuses_together_are_each_status_field_for_field(enforce_with: str) -> None:
    policy = Policy(enforce_with=enforce_with)
    comps = _compositions()
    answered = 0
    for limit in (0.5, 2.0, 1e6):
        budgets_ = [
            Budget(Scope("t", D, f"s{i}"), limit, DELTAS[i % len(DELTAS)])
            for i in range(len(comps))
        ]
        versions = list(range(3, 3 + len(comps)))
        counts = list(range(10, 10 + len(comps)))
        together = policy.statuses(budgets_, comps, versions, counts)
        for b, comp, v, n, got in zip(budgets_, comps, versions, counts, together, strict=True):
            if got is None and comp.atoms:  # the caller asks status(): it needs the tight figure
                with pytest.raises(TightNeeded):
                    policy.status(b, comp, v, event_count=n, allow_tight=False)
                continue
            if got is None:  # nothing composed: the tight figure is 0 (status() says so)
                assert enforce_with == "pld"
                continue
            answered += 1
            assert got == policy.status(b, comp, v, event_count=n, allow_tight=False)
    assert answered == 0 if enforce_with == "pld" else answered >= 12
    assert policy.statuses([], [], [], []) == []


@pytest.mark.parametrize(
    "atoms",
    [
        {},
        {("gaussian", 8.0): 3},
        {("pure_epsilon", 0.25): 3, ("gaussian", 8.0): 1, ("laplace", 2.0): 2},
        {("pure_epsilon", 0.25): 3, ("laplace", 2.0): 2},
        {("gaussian", 8.0): 0, ("pure_epsilon", 0.5): 1},  # a Gaussian counted 0 times
        {("subsampled_gaussian", 1.0, 0.01): 10**30},
        {("pure_epsilon", 1e308): 10},  # past the float range: +∞, rounded up
        {("gaussian", -1.0): 1},  # invalid: the same error
        {("pure_epsilon", 0.5): 1, ("gaussian", 8.0, 2.0): 1},  # invalid after a valid one
        {("gaussian", 8.0): -1},
        {("gaussian", 8.0): True},
    ],
)
def test_basic_composition_of_a_multiset_is_the_one_by_one_sum(atoms: dict[Any, Any]) -> None:
    def answer(fn: Callable[[], float]) -> Any:
        try:
            return fn()
        except VeilError as exc:
            return type(exc), str(exc)

    counter = Counter(atoms)
    got = answer(lambda: basic_epsilon_of(counter, 1e-5))
    assert got == answer(lambda: basic_epsilon(counter.items(), 1e-5))


def test_a_curve_text_reads_back_bit_for_bit_as_json() -> None:
    rng = np.random.default_rng(7)
    for curve in [*_curves(rng), rng.standard_normal(len(ORDERS)) * 1e-310]:
        text = curve_text(curve)
        back = np.array(json.loads(text), dtype=float)
        assert back.tobytes() == curve.tobytes(), text  # NaN, ∞ and −0 included
        assert np.array_equal(composition(text, "[]").rdp, curve, equal_nan=True)
    assert curve_text(np.array([0.1, 1 / 3, 2.0**-1074])) == (
        "[0.10000000000000001,0.33333333333333331,4.9406564584124654e-324]"
    )


def _budgets(led: Ledger, t: str) -> None:
    led.budgets.put(t, Budget(Scope(t), 1e4, 1e-5))
    led.budgets.put(t, Budget(Scope(t, D), 1e4, 1e-6, SubjectDefault(3.0, 1e-5)))
    led.budgets.put(t, Budget(Scope(t, D, "alice"), 1.6, 1e-5))
    led.budgets.put(t, Budget(Scope(t, D, "bob"), 40.0, 1e-7))
    led.budgets.put(t, Budget(Scope(t, D, "pure"), 2.0, 1e-5))


def _items(t: str) -> list[Charge]:
    """Long accepted runs (the look-ahead window grows), refusals in the middle of them, a
    subject created from the default, a missing dataset, pure-ε and Laplace items decided by
    basic composition, a subsampled Gaussian, mixed δ across one charge's budgets."""

    def c(mech: Any, *subjects: str, dataset: str = D) -> Charge:
        return Charge(mech, t, dataset, "item", subjects)

    items = [c(Gaussian(40.0), "bob") for _ in range(30)]
    items += [c(Gaussian(8.0), "alice") for _ in range(6)]  # alice runs out part-way
    items += [c(PureEpsilon(0.5), "pure") for _ in range(5)]  # the fifth is refused
    items += [c(Laplace(1.0, 4.0), "pure", "bob"), c(Gaussian(2.0), "carol")]
    items += [c(Gaussian(30.0), "nobody", dataset="nope")]
    items += [c(SubsampledGaussian(1.0, 0.01, 50), "bob", "carol") for _ in range(40)]
    items += [c(Gaussian(0.1), "bob"), c(Gaussian(40.0), "bob")]
    return items


def _receipt(outcome: Any) -> Any:
    if isinstance(outcome, VeilError):
        details = {k: v for k, v in outcome.details.items() if k != "tenant_id"}
        return type(outcome).__name__, str(outcome), details
    assert isinstance(outcome, Receipt)
    statuses = [
        (s.scope.dataset_id, s.scope.subject_id, *[v for k, v in vars(s).items() if k != "scope"])
        for s in outcome.statuses
    ]
    return outcome.replayed, outcome.charge.idempotency_key, outcome.committed_at, statuses


def _stored(led: Ledger, t: str) -> Any:
    with led._tx(readonly=True) as conn:
        rows = conn.execute(select(budgets).where(budgets.c.tenant_id == t)).all()
        evs = conn.execute(select(events).where(events.c.tenant_id == t)).all()
        ids = {e.id for e in evs}
        links = [link for link in conn.execute(select(event_budgets)).all() if link.event_id in ids]
    scope_of = {r.id: (r.dataset_id, r.subject_id) for r in rows}
    key_of = {e.id: e.idempotency_key for e in evs}
    return (
        sorted(
            (r.dataset_id, r.subject_id, r.version, r.event_count, r.rdp, r.atoms) for r in rows
        ),
        sorted((e.idempotency_key, e.cost_epsilon, e.committed_at) for e in evs),
        sorted((key_of[link.event_id], scope_of[link.budget_id]) for link in links),
    )


@pytest.mark.parametrize("enforce_with", ["min", "rdp"])
def test_a_batch_decided_ahead_is_the_batch_decided_item_by_item(
    make_ledger: Callable[..., Ledger],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    enforce_with: str,
) -> None:
    led = make_ledger(enforce_with=enforce_with)
    outcomes, stored = {}, {}
    for t, ahead in (("alone", False), ("ahead", True)):
        if not ahead:
            monkeypatch.setattr(batch, "look_ahead", lambda *a, **k: [])
        else:
            monkeypatch.undo()
        _budgets(led, t)
        start = clock.now
        # a live reservation on bob counts against every item that touches him
        reservation = led.reservations.reserve(t, Charge(Gaussian(20.0), t, D, "r", ("bob",)), 60.0)
        first = led.charge_batch(t, "b", _items(t))
        again = led.charge_batch(t, "b", _items(t))  # the retry: replays, refusals again
        led.reservations.release(t, reservation.reservation_id)
        clock.advance(1.0)
        last = led.charge_batch(t, "c", _items(t)[::-1])
        outcomes[t] = [_receipt(o) for o in [*first, *again, *last]]
        stored[t] = _stored(led, t)
        clock.now = start
    assert outcomes["ahead"] == outcomes["alone"]
    assert stored["ahead"] == stored["alone"]
    kinds = Counter(o[0] if isinstance(o[0], str) else "receipt" for o in outcomes["ahead"])
    assert kinds["BudgetExhausted"] >= 3 and kinds["NotFound"] >= 2 and kinds["receipt"] > 100
    assert any(o[0] is True for o in outcomes["ahead"])  # the retry replayed items


def test_a_budget_stored_by_the_old_writer_loads_and_spends_the_same(
    make_ledger: Callable[..., Ledger],
) -> None:
    """A row whose RDP text ``json.dumps`` wrote (the code before :func:`curve_text`) is read
    as the same curve, and the next spend stores and answers exactly as on a new row."""
    led = make_ledger()
    receipts = {}
    for t in ("old", "new"):
        _budgets(led, t)
        led.spend(t, Charge(SubsampledGaussian(1.0, 0.01, 300), t, D, "k0", ("bob",)))
    with led._tx() as conn:
        row = conn.execute(
            select(budgets).where(budgets.c.tenant_id == "old", budgets.c.subject_id == "bob")
        ).one()
        curve = np.array(json.loads(row.rdp), dtype=float)
        old_text = dumps(curve.tolist())  # as the old writer stored it
        assert old_text != row.rdp and json.loads(old_text) == json.loads(row.rdp)
        conn.execute(update(budgets).where(budgets.c.id == row.id).values(rdp=old_text))
    for t in ("old", "new"):
        receipts[t] = _receipt(led.spend(t, Charge(Gaussian(30.0), t, D, "k1", ("bob",))))[1:]
    assert receipts["old"] == receipts["new"]
    assert _stored(led, "old") == _stored(led, "new")
    assert led.audit.verify("old", Scope("old", D, "bob")).ok
