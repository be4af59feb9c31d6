"""Pure math and domain validation: golden ε values and rejected inputs."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from services.accountant import accounting as acc
from services.accountant.events import (
    Budget,
    Charge,
    Gaussian,
    Laplace,
    PureEpsilon,
    Scope,
    SubsampledGaussian,
)
from services.common.errors import InvalidArgument

DPSGD = Counter({("subsampled_gaussian", 1.0, 0.01): 10_000})


def test_golden_dpsgd_epsilons() -> None:
    """q=0.01, σ=1, 10 000 steps, δ=1e-5 (the values opacus and dp_accounting publish)."""
    comp = acc.Composition().add(DPSGD)
    assert acc.eps_from_rdp(comp.rdp, 1e-5) == pytest.approx(6.713, abs=0.02)
    assert acc.eps_from_rdp_classic(comp.rdp, 1e-5) > acc.eps_from_rdp(comp.rdp, 1e-5)
    assert acc.get_accountant("pld").epsilon(comp, 1e-5) == pytest.approx(6.188, abs=0.02)
    assert acc.get_accountant("prv").epsilon(comp, 1e-5) == pytest.approx(6.198, abs=0.02)


def test_gaussian_rdp_is_closed_form() -> None:
    """Gaussian RDP is α/(2σ²) (Mironov 2017, Prop. 7)."""
    curve = acc.atom_rdp(("gaussian", 2.0), 3)
    assert np.allclose(curve, 3 * np.array(acc.ORDERS) / 8)


def test_laplace_rdp_is_between_zero_and_pure_bound() -> None:
    b = 2.0
    curve = acc.laplace_rdp(b, np.array(acc.ORDERS))
    assert np.all(curve > 0) and np.all(curve <= 1 / b + 1e-12)
    assert np.all(np.diff(curve) >= -1e-12)  # RDP is non-decreasing in α


def test_pure_epsilon_rdp_bound() -> None:
    curve = acc.pure_rdp(0.5, np.array(acc.ORDERS))
    assert np.all(curve <= 0.5) and curve[0] == pytest.approx(1.1 * 0.125)


def test_tight_accountants_handle_every_mechanism() -> None:
    comp = acc.Composition().add(Counter({("laplace", 10.0): 10, ("pure_epsilon", 0.1): 5}))
    pld = acc.get_accountant("pld").epsilon(comp, 1e-5)
    assert 0 < pld <= 1.5 + 1e-9  # never above basic composition
    assert acc.get_accountant("prv").epsilon(comp, 1e-5) == pld  # documented fallback
    assert pld <= acc.get_accountant("rdp").epsilon(comp, 1e-5)


def test_unknown_accountant() -> None:
    with pytest.raises(InvalidArgument):
        acc.get_accountant("gdp")


def _charge(**overrides: object) -> Charge:
    args: dict[str, object] = {
        "mechanism": Gaussian(1.0),
        "tenant_id": "t",
        "dataset_id": "d",
        "idempotency_key": "k",
    }
    args.update(overrides)
    return Charge(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Gaussian(-1.0),
        lambda: Gaussian(math.nan),
        lambda: Gaussian(math.inf),
        lambda: SubsampledGaussian(1.0, 0.0),
        lambda: SubsampledGaussian(1.0, 1.5),
        lambda: SubsampledGaussian(1.0, 0.1, steps=0),
        lambda: Laplace(0.0),
        lambda: Laplace(1.0, sensitivity=-1.0),
        lambda: PureEpsilon(math.inf),
        lambda: _charge(count=0),
        lambda: _charge(count=1.5),
        lambda: _charge(idempotency_key=""),
        lambda: _charge(subject_ids=("a", "a")),
        lambda: Budget(Scope("t"), 1.0, 0.0),
        lambda: Budget(Scope("t"), 1.0, 1.0),
        lambda: Budget(Scope("t"), math.nan, 1e-5),
        lambda: Scope("t", None, "s"),
    ],
)
def test_invalid_inputs_are_rejected(make: object) -> None:
    with pytest.raises(InvalidArgument):
        make()  # type: ignore[operator]


def test_charge_json_round_trip() -> None:
    c = _charge(mechanism=SubsampledGaussian(1.1, 0.01, steps=7), subject_ids=("b", "a"), count=2)
    assert Charge.from_json(c.to_json()) == Charge.from_json(c.to_json())
    assert Charge.from_json(c.to_json()).same_charge(c)
    assert [s.kind for s in c.scopes] == ["tenant", "dataset", "subject", "subject"]
