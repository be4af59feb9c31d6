"""Rényi DP of each elementary mechanism, and RDP → (ε, δ) conversion.

Pure functions over the fixed orders :data:`ORDERS` (stored curves are indexed by them):
the curve of one atom (Gaussian, subsampled Gaussian, Laplace, pure ε) composed ``n``
times, cached per distinct atom and count, and the conversion of a composed curve to an
ε at δ — Balle et al. 2020's (enforced) and Mironov 2017's (the seed's, kept for
comparison) — for one curve or many rows at once. RDP adds over composition (Mironov 2017,
Prop. 1), so a budget's running curve is the sum of its atoms' curves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from services.accountant.dplib import dp_event, rdp_lib
from services.accountant.tight import Atom, check_atom, check_delta

#: RDP orders (opacus' and prv_accountant's defaults); stored curves are indexed by them.
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
_ALPHAS = np.array(ORDERS)


def laplace_rdp(b: float, alphas: np.ndarray) -> np.ndarray:
    """RDP of the Laplace mechanism with scale b per unit L1 sensitivity.

    Mironov 2017, "Rényi Differential Privacy", Prop. 6 (α > 1):
    ε(α) = 1/(α−1) · log(α/(2α−1)·e^{(α−1)/b} + (α−1)/(2α−1)·e^{−α/b}),
    computed in log space so that large α/b does not overflow.
    """
    a = alphas
    with np.errstate(over="ignore"):
        t1 = np.log(a / (2 * a - 1)) + (a - 1) / b
        t2 = np.log((a - 1) / (2 * a - 1)) - a / b
        return np.logaddexp(t1, t2) / (a - 1)


def pure_rdp(eps: float, alphas: np.ndarray) -> np.ndarray:
    """ε-DP ⇒ (α, min(ε, αε²/2))-RDP (Mironov 2017 Prop. 3; Bun & Steinke 2016 Prop. 3.3)."""
    with np.errstate(over="ignore"):
        return np.minimum(eps, alphas * eps * eps / 2)


@functools.lru_cache(maxsize=1024)
def gaussian_rdp(sigma: float, q: float = 1.0) -> np.ndarray:
    """RDP curve over :data:`ORDERS` of one Gaussian step Poisson-subsampled at rate q.

    α/(2σ²) for q = 1 (Mironov 2017, Prop. 7); for q < 1 dp_accounting's series (Mironov,
    Talwar & Zhang 2019), whose Python floats raise for extreme σ: those orders become +∞,
    and the min with the plain Gaussian's curve (subsampling never hurts: Rényi divergence
    is jointly quasi-convex) keeps a finite bound where there is one. Read-only, cached.
    """
    with np.errstate(over="ignore"):
        curve = _ALPHAS / sigma / sigma / 2
    if q < 1:
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        try:
            with np.errstate(all="ignore"):
                sub = rdp_lib.RdpAccountant(list(ORDERS)).compose(event).rdp
        except (ArithmeticError, ValueError):
            sub = np.full(len(ORDERS), np.inf)
        curve = np.minimum(np.where(np.isnan(sub), np.inf, sub), curve)
    curve.setflags(write=False)
    return curve


@functools.lru_cache(maxsize=1024)
def _unit_rdp(atom: Atom) -> np.ndarray:
    """RDP curve of one atom over :data:`ORDERS` (read-only, cached per distinct atom)."""
    kind, p = atom[0], float(atom[1])
    if kind == "laplace":
        curve = laplace_rdp(p, _ALPHAS)
    elif kind == "pure_epsilon":
        curve = pure_rdp(p, _ALPHAS)
    else:
        return gaussian_rdp(p, float(atom[2]) if kind == "subsampled_gaussian" else 1.0)
    curve = np.where(np.isnan(curve), np.inf, curve)
    curve.setflags(write=False)
    return curve


def times(curve: np.ndarray, n: int) -> np.ndarray:
    """n·curve with n an exact int of any size: rounded up, 0·∞ = 0 (no NaN)."""
    nf = float(n) if n.bit_length() < 1024 else math.inf
    if nf < n:
        nf = math.nextafter(nf, math.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(curve == 0, 0.0, curve * nf)


def atom_rdp(atom: Atom, count: int) -> np.ndarray:
    """RDP curve over :data:`ORDERS` of ``count`` compositions of one atom (read-only)."""
    if type(count) is not int:  # never cached: a bool or float count is refused below
        return times(_unit_rdp(atom), check_atom(atom, count))
    return _atom_rdp(atom, count)


@functools.lru_cache(maxsize=4096)
def _atom_rdp(atom: Atom, count: int) -> np.ndarray:
    """Cached: spends repeat a few mechanisms and counts (only valid ones are cached)."""
    curve = times(_unit_rdp(atom), check_atom(atom, count))
    curve.setflags(write=False)
    return curve


def eps_from_rdp(curve: np.ndarray, delta: float) -> float:
    """RDP → (ε, δ) by Balle et al. 2020, Thm. 21 (= Canonne, Kamath & Steinke 2020,
    Prop. 12), minimised over :data:`ORDERS`: dp_accounting's ``compute_epsilon``, evaluated
    over the whole curve at once (the library's loop over 150 orders was the largest CPU
    cost of a spend; tests/accountant/test_accounting.py pins the two together).

    The library's branches, in its order: a negative order's value (numerical noise) gives
    ε = 0; δ² + expm1(−r) > 0 (the KL bound already meets δ) gives 0, and as expm1(−r)
    falls with r, some order meets it exactly when the least r does; else, for α > 1.01,
    ε(α) = r + log1p(−1/α) − log(δα)/(α−1), with the same two per-order terms and the same
    order of operations as the library, so every float is the library's; else +∞.
    """
    delta = check_delta(delta)
    if not np.any(curve):
        return 0.0
    curve = np.where(np.isnan(curve), np.inf, curve)
    least = float(curve.min())
    if least < 0 or delta**2 + math.expm1(-least) > 0:
        return 0.0
    log1p_terms, log_terms = _conversion_terms(delta)
    with np.errstate(invalid="ignore"):  # ∞ − ∞ cannot occur: the terms are finite
        eps = (curve + log1p_terms) - log_terms
    return max(0.0, float(eps.min()))


def eps_from_rdp_rows(curves: np.ndarray, deltas: Sequence[float]) -> list[float]:
    """:func:`eps_from_rdp` of each row of ``curves`` at its δ (already checked), computed
    together: the same per-order operations on the same floats, and a row's minimum is
    exact in any order, so every figure is the one-curve function's, float for float (pinned
    in tests/accountant/test_accounting.py). One spend's three budgets, or a batch's items,
    pay numpy's per-call overhead once instead of per budget."""
    out = [0.0] * len(deltas)
    if not len(deltas):
        return out
    nonzero = curves.any(axis=1).tolist()
    clean = np.where(np.isnan(curves), np.inf, curves)
    least = clean.min(axis=1).tolist()
    todo = [
        i
        for i, (d, low, some) in enumerate(zip(deltas, least, nonzero, strict=True))
        if some and not (low < 0 or d**2 + math.expm1(-low) > 0)
    ]
    if not todo:
        return out
    if len(set(deltas)) == 1:  # the usual case: one δ, its terms broadcast over the rows
        first, second = _conversion_terms(deltas[0])
    else:
        first = np.stack([_conversion_terms(deltas[i])[0] for i in todo])
        second = np.stack([_conversion_terms(deltas[i])[1] for i in todo])
    with np.errstate(invalid="ignore"):
        eps = ((clean[todo] + first) - second).min(axis=1).tolist()
    for i, e in zip(todo, eps, strict=True):
        out[i] = max(0.0, e)
    return out


def eps_from_rdp_classic_rows(curves: np.ndarray, deltas: Sequence[float]) -> list[float]:
    """:func:`eps_from_rdp_classic` of each row of ``curves`` at its δ (already checked),
    computed together (the same floats, as :func:`eps_from_rdp_rows`)."""
    if not len(deltas):
        return []
    if len(set(deltas)) == 1:
        terms = _classic_terms(deltas[0])
    else:
        terms = np.stack([_classic_terms(d) for d in deltas])
    mins = (curves + terms).min(axis=1).tolist()
    nonzero = curves.any(axis=1).tolist()
    return [m if some else 0.0 for m, some in zip(mins, nonzero, strict=True)]


@functools.lru_cache(maxsize=256)
def _conversion_terms(delta: float) -> tuple[np.ndarray, np.ndarray]:
    """log1p(−1/α) and log(δα)/(α−1) per order, by ``math`` as dp_accounting computes them
    (+∞ and 0 for α ≤ 1.01, where the library gives ε = +∞); read-only, cached per δ."""
    first = np.array([math.log1p(-1 / a) if a > 1.01 else math.inf for a in ORDERS])
    second = np.array([math.log(delta * a) / (a - 1) if a > 1.01 else 0.0 for a in ORDERS])
    first.setflags(write=False)
    second.setflags(write=False)
    return first, second


def eps_from_rdp_classic(curve: np.ndarray, delta: float) -> float:
    """The seed's Lemma 1 (Mironov 2017 Prop. 3): min_α ε(α) + log(1/δ)/(α−1)."""
    delta = check_delta(delta)
    if not np.any(curve):
        return 0.0
    return float(np.min(curve + _classic_terms(delta)))


@functools.lru_cache(maxsize=256)
def _classic_terms(delta: float) -> np.ndarray:
    terms = math.log(1 / delta) / (_ALPHAS - 1)
    terms.setflags(write=False)
    return terms
