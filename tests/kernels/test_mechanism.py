"""The weighted mechanism's math, pinned against libraries that no one here wrote:
dp_accounting (PLD and RDP), opacus's RDP accountant, and the ledger's own figure."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant

from services.accountant.accounting import Composition, atoms_of, best_epsilon
from services.accountant.events import Charge, Gaussian
from services.common.errors import FailedPrecondition, InvalidArgument
from services.kernels.mechanism import (
    AttributeSpace,
    calibrate,
    calibrate_mu,
    composition,
    fresh_noise,
    gaussian_delta,
    gaussian_epsilon,
    preview_rngs,
    privatize,
    release_rng,
)

CASES = [
    (0.5, 1e-5, {}),
    (1.0, 1e-5, {"male": 2.0}),
    (2.0, 1e-6, {"old": 0.5, "smiling": 3.0}),
    (4.0, 1e-5, {"dark_skin": 10.0}),
    (8.0, 1e-3, {}),
]


def space(seed: int = 0, d: int = 16) -> AttributeSpace:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 5)))
    return AttributeSpace(
        names=("male", "old", "dark_skin", "glasses", "smiling"),
        directions=q,
        clip_bounds=np.array([5.2, 4.1, 4.9, 5.0, 4.9]),
    )


def pld_epsilon(noise_multiplier: float, delta: float) -> float:
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("epsilon,delta,weights", CASES)
def test_calibration_meets_the_target_exactly(
    epsilon: float, delta: float, weights: dict[str, float]
) -> None:
    s = space()
    c = calibrate(s, epsilon, delta, weights)
    # The whole mechanism: one Gaussian with m = σ / ‖(Δ_a / w_a)‖₂.
    w = np.array(c.weights)
    m = c.sigma / np.linalg.norm(s.sensitivities / w)
    assert m == pytest.approx(c.noise_multiplier, rel=1e-12)
    assert pld_epsilon(m, delta) == pytest.approx(epsilon, abs=1e-3)
    # Not over-noised: 1% less noise breaks the target.
    assert pld_epsilon(0.99 * m, delta) > epsilon + 1e-3
    # Each attribute alone: m_a = σ·w_a / Δ_a.
    for a, name in enumerate(s.names):
        m_a = c.sigma * w[a] / s.sensitivities[a]
        assert pld_epsilon(m_a, delta) == pytest.approx(c.per_attribute[name], abs=1e-3)
        assert c.per_attribute[name] <= epsilon + 1e-9


@pytest.mark.parametrize("epsilon,delta,weights", CASES)
def test_the_ledger_composes_the_same_figure(
    epsilon: float, delta: float, weights: dict[str, float]
) -> None:
    c = calibrate(space(), epsilon, delta, weights)
    charge = Charge(Gaussian(c.noise_multiplier), "t", "d", "key", ("s",))
    composed = Composition().add(atoms_of(charge))
    figures = best_epsilon(composed, delta, "pld")
    assert figures.epsilon == pytest.approx(epsilon, abs=1e-3)


@pytest.mark.parametrize("epsilon,delta,weights", CASES)
def test_lemma_1_figure_is_the_rdp_conversion_minimised(
    epsilon: float, delta: float, weights: dict[str, float]
) -> None:
    c = calibrate(space(), epsilon, delta, weights)
    alphas = np.linspace(1.001, 400, 400_000)
    numeric = np.min(alphas * c.mu**2 / 2 + math.log(1 / delta) / (alphas - 1))
    assert c.rdp_epsilon == pytest.approx(numeric, rel=1e-5)
    assert c.rdp_epsilon > epsilon  # never used to claim less
    # dp_accounting's RDP accountant (a tighter conversion) lies between the two.
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(dp_accounting.GaussianDpEvent(c.noise_multiplier))
    assert epsilon - 1e-6 <= rdp.get_epsilon(delta) <= c.rdp_epsilon + 1e-9


def test_opacus_cross_check() -> None:
    from opacus.accountants import RDPAccountant

    c = calibrate(space(), 1.0, 1e-5, {})
    accountant = RDPAccountant()
    accountant.history = [(c.noise_multiplier, 1.0, 1)]
    opacus_eps = accountant.get_epsilon(1e-5)
    assert 1.0 <= opacus_eps <= c.rdp_epsilon


def test_profile_and_inverse_agree() -> None:
    for mu in (0.05, 0.3, 1.0, 3.0):
        for delta in (1e-3, 1e-6, 1e-10):
            eps = gaussian_epsilon(mu, delta)
            assert gaussian_delta(eps, mu) == pytest.approx(delta, rel=1e-6)
            assert calibrate_mu(eps, delta) == pytest.approx(mu, rel=1e-6) if eps > 0 else True


def test_composition_of_candidates() -> None:
    s = space()
    cs = [calibrate(s, e, 1e-5, {"male": 2.0}) for e in (0.5, 1.0, 2.0)]
    eps, per, rdp = composition(s, cs, 1e-5)
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for c in cs:
        accountant.compose(dp_accounting.GaussianDpEvent(c.noise_multiplier))
    assert accountant.get_epsilon(1e-5) == pytest.approx(eps, abs=2e-3)
    assert eps > 2.0 and rdp > eps
    assert per["male"] < per["old"] <= eps


def test_weights_move_noise_between_attributes() -> None:
    s = space()
    even = calibrate(s, 1.0, 1e-5, {})
    heavy = calibrate(s, 1.0, 1e-5, {"male": 5.0})
    assert heavy.per_attribute["male"] < even.per_attribute["male"]
    assert heavy.per_attribute["old"] > even.per_attribute["old"]
    assert heavy.epsilon == even.epsilon == 1.0


@pytest.mark.parametrize(
    "epsilon,delta,weights",
    [
        (0.0, 1e-5, {}),
        (-1.0, 1e-5, {}),
        (math.nan, 1e-5, {}),
        (math.inf, 1e-5, {}),
        (1e3, 1e-5, {}),
        (1.0, 0.0, {}),
        (1.0, 1.0, {}),
        (1.0, math.nan, {}),
        (1.0, 1e-5, {"hair": 1.0}),
        (1.0, 1e-5, {"male": 0.0}),
        (1.0, 1e-5, {"male": math.inf}),
        (1.0, 1e-5, {"male": -2.0}),
    ],
)
def test_bad_parameters_are_refused(epsilon: float, delta: float, weights: dict) -> None:
    with pytest.raises(InvalidArgument):
        calibrate(space(), epsilon, delta, weights)


def test_privatize_clips_noises_and_keeps_the_complement() -> None:
    s = space(d=16)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2000, 16)) * 4
    c = calibrate(s, 1.0, 1e-5, {"male": 2.0})
    out = privatize(z, s, c, np.random.default_rng(2), post_clip=False)
    u = s.directions
    # The complement passes through untouched.
    np.testing.assert_allclose(out - (out @ u) @ u.T, z - (z @ u) @ u.T, atol=1e-9)
    noise = out @ u - np.clip(z @ u, -s.clip_bounds, s.clip_bounds)
    assert np.std(noise, axis=0) == pytest.approx(c.noise_scales, rel=0.05)
    assert abs(np.mean(noise[:, 0])) < 0.1 * c.noise_scales[0]
    clipped = privatize(z, s, c, np.random.default_rng(2))
    assert np.all(np.abs(clipped @ u) <= s.clip_bounds + 1e-9)


def test_erase_uses_the_eraser_and_stays_out_of_the_attribute_subspace() -> None:
    base = space(d=16)
    rng = np.random.default_rng(3)
    matrix, bias = rng.standard_normal((16, 16)) * 0.1, rng.standard_normal(16)
    s = AttributeSpace(base.names, base.directions, base.clip_bounds, matrix, bias)
    z = rng.standard_normal((8, 16))
    c = calibrate(s, 1.0, 1e-5, {})
    kept = privatize(z, s, c, np.random.default_rng(5), "keep")
    erased = privatize(z, s, c, np.random.default_rng(5), "erase")
    u = s.directions
    np.testing.assert_allclose(kept @ u, erased @ u)  # same noisy coordinates
    rest = z - (z @ u) @ u.T
    expected = rest - (rest - bias) @ matrix
    expected -= (expected @ u) @ u.T
    np.testing.assert_allclose(erased - (erased @ u) @ u.T, expected, atol=1e-9)
    with pytest.raises(FailedPrecondition):
        privatize(z, base, c, np.random.default_rng(5), "erase")


def test_release_randomness_is_fresh_and_preview_seeds_reproduce() -> None:
    a, b = release_rng(), release_rng()
    assert not np.array_equal(fresh_noise(a, 1, 8), fresh_noise(b, 1, 8))
    first = [r.standard_normal(4) for r in preview_rngs(3, seed=42)]
    again = [r.standard_normal(4) for r in preview_rngs(3, seed=42)]
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], first[1])  # candidates draw independent streams
    unseeded = [r.standard_normal(4) for r in preview_rngs(2, seed=None)]
    assert not np.array_equal(unseeded[0], first[0])


def test_loaded_directions_are_orthonormal_in_float64() -> None:
    from services.inference.attributes import attribute_model
    from services.inference.backend import InferenceSettings

    s = attribute_model(InferenceSettings(), "probes").space
    gram = s.directions.T @ s.directions
    assert np.abs(gram - np.eye(len(s.names))).max() < 1e-14
    z = np.random.default_rng(0).standard_normal((4, s.z_dim))
    rest = z - (z @ s.directions) @ s.directions.T
    assert np.abs(rest @ s.directions).max() < 1e-13  # no trace of c in the complement
