"""Composition math: basic, RDP and tight (PLD/PRV) figures for a multiset of mechanisms.

Pure functions, no storage, no torch. A budget's composed state is a :class:`Composition`:
a running RDP curve over the fixed :data:`ORDERS` and a multiset *atom → total count*, where
an atom is one elementary mechanism (a single Gaussian step, one Laplace release, …). RDP
adds over composition (Mironov 2017, Prop. 1), so the curve is updated in O(|ORDERS|) per
spend; the tight figures compose the multiset (:mod:`services.accountant.tight`), at a cost
that depends on the distinct atoms, not on the number of past events, and is capped.

Every figure is an *upper bound* on the true ε at δ: basic composition (pure-ε atoms only),
RDP with Balle et al. 2020's conversion, and the tight PLD/PRV ones. Their minimum is one
too, so :func:`best_epsilon` reports and enforces the least of them: a figure that one
method gets badly wrong (RDP's bounded orders for 10⁸ tiny-ε events, a PLD whose grid had to
be coarsened) is never what a budget is charged. CLT/GDP estimates are never used.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Protocol

import numpy as np

from services.accountant.dplib import dp_event, rdp_lib
from services.accountant.events import Charge, Gaussian, Laplace, Mechanism, SubsampledGaussian
from services.accountant.tight import (
    MAX_SELF_COMPOSITIONS,
    PLD_MAX_LOSS,
    Atom,
    check_atom,
    check_delta,
    gaussian_epsilon,
    pld_epsilon,
    split_gaussians,
)
from services.common.errors import InvalidArgument

__all__ = [
    "ACCOUNTANTS",
    "ORDERS",
    "Accountant",
    "Atom",
    "Composition",
    "Figures",
    "atom_rdp",
    "atoms_of",
    "basic_epsilon",
    "basic_epsilon_of",
    "best_epsilon",
    "charge_epsilon",
    "eps_from_rdp",
    "eps_from_rdp_classic",
    "eps_from_rdp_classic_rows",
    "eps_from_rdp_rows",
    "get_accountant",
    "laplace_rdp",
    "pld_epsilon",
    "prv_epsilon",
    "pure_rdp",
]

#: RDP orders (opacus' and prv_accountant's defaults); stored curves are indexed by them.
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
PRV_MAX_POINTS = 800_000
"""Cap on the PRV mesh over all atoms (prv_accountant holds long doubles: ~170 B a point);
the golden DP-SGD case (q=0.01, σ=1, 10⁴ steps) needs 776 726 at ε error 0.01."""
PRV_MAX_EPS_ERROR = 0.1
"""Largest ε error the PRV may be widened to, to fit its mesh, before PLD is used instead."""
PRV_MAX_ATOMS = 4
_ALPHAS = np.array(ORDERS)
_MAX_FLOAT = float(np.finfo(float).max)
_MIN_FLOAT = float(np.finfo(float).smallest_subnormal)


def atoms_of(charge: Charge) -> Counter[Atom]:
    """Elementary mechanisms of a charge with their multiplicities (exact Python ints)."""
    m: Mechanism = charge.mechanism
    if isinstance(m, SubsampledGaussian):
        atom: Atom = ("subsampled_gaussian", m.noise_multiplier, m.sampling_rate)
        return _one(atom, m.steps * charge.count)
    if isinstance(m, Gaussian):
        return _one(("gaussian", m.noise_multiplier), charge.count)
    if isinstance(m, Laplace):
        # scale/sensitivity may leave the float range: clamp (a larger b only where the true
        # ε = 1/b is below the smallest float, a smaller one only where ε is infinite anyway).
        b = min(max(m.scale / m.sensitivity, _MIN_FLOAT), _MAX_FLOAT)
        return _one(("laplace", b), charge.count)
    return _one(("pure_epsilon", m.epsilon), charge.count)


def _one(atom: Atom, count: int) -> Counter[Atom]:
    """``Counter({atom: count})`` without the Mapping ABC check of its constructor."""
    out = _empty()
    dict.__setitem__(out, atom, count)
    return out


def _empty() -> Counter[Atom]:
    """An empty Counter, without running ``Counter.__init__`` (which only calls ``update``
    with nothing): a spend builds a few per budget."""
    return Counter.__new__(Counter)


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


def _times(curve: np.ndarray, n: int) -> np.ndarray:
    """n·curve with n an exact int of any size: rounded up, 0·∞ = 0 (no NaN)."""
    nf = float(n) if n.bit_length() < 1024 else math.inf
    if nf < n:
        nf = math.nextafter(nf, math.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(curve == 0, 0.0, curve * nf)


def atom_rdp(atom: Atom, count: int) -> np.ndarray:
    """RDP curve over :data:`ORDERS` of ``count`` compositions of one atom (read-only)."""
    if type(count) is not int:  # never cached: a bool or float count is refused below
        return _times(_unit_rdp(atom), check_atom(atom, count))
    return _atom_rdp(atom, count)


@functools.lru_cache(maxsize=4096)
def _atom_rdp(atom: Atom, count: int) -> np.ndarray:
    """Cached: spends repeat a few mechanisms and counts (only valid ones are cached)."""
    curve = _times(_unit_rdp(atom), check_atom(atom, count))
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


def basic_epsilon_of(atoms: Mapping[Atom, int], delta: float) -> float:
    """:func:`basic_epsilon` of a multiset, answering +∞ at once where it holds a Gaussian
    and every entry is valid (then :func:`basic_epsilon` reaches that Gaussian and answers
    +∞ too, whatever comes before it); else :func:`basic_epsilon` itself."""
    valid = all(type(n) is int and n >= 0 and _valid_atom(a) for a, n in atoms.items())
    if valid and any(n and a[0] in _GAUSSIANS for a, n in atoms.items()):
        return math.inf
    return basic_epsilon(atoms.items(), delta)


_GAUSSIANS = frozenset({"gaussian", "subsampled_gaussian"})


@functools.lru_cache(maxsize=1024)
def _valid_atom(atom: Atom) -> bool:
    try:
        check_atom(atom, 0)
    except InvalidArgument:
        return False
    return True


def basic_epsilon(atoms: Iterable[tuple[Atom, int]], delta: float) -> float:
    """Basic composition (Dwork & Roth 2014, Thm. 3.16): Σ n·ε over pure atoms.

    Laplace with scale b per unit sensitivity is (1/b)-DP. The sum holds at every δ ≥ 0
    and is computed exactly (rationals), then rounded up to a float; a multiset holding a
    Gaussian has no pure bound: +∞.
    """
    check_delta(delta)
    total = Fraction(0)
    for atom, n in atoms:
        if not check_atom(atom, n):
            continue
        if atom[0] == "pure_epsilon":
            total += n * Fraction(float(atom[1]))
        elif atom[0] == "laplace":
            total += n / Fraction(float(atom[1]))
        else:
            return math.inf
    try:
        up = float(total)
    except OverflowError:
        return math.inf
    return math.nextafter(up, math.inf) if Fraction(up) < total else up


def prv_epsilon(
    atoms: Iterable[tuple[Atom, int]],
    delta: float,
    eps_error: float = 0.01,
    max_points: int = PRV_MAX_POINTS,
) -> float | None:
    """PRV accountant's ``eps_upper`` (Gopi et al. 2021) via ``prv_accountant``.

    For (subsampled) Gaussians, with δ_error = δ/1000 and the mesh of its Thm. 5.5; when the
    mesh would exceed ``max_points``, ``eps_error`` is widened to fit (the bound stays valid)
    up to :data:`PRV_MAX_EPS_ERROR`. Plain Gaussians alone are answered exactly; a Laplace or
    pure-ε atom, or a mesh that does not fit, gets :func:`pld_epsilon` (a tight bound too).
    """
    delta = check_delta(delta)
    items = list(atoms)
    precision, rest = split_gaussians(items)
    if not rest:
        return gaussian_epsilon(precision, delta)
    eps = None
    if all(a[0] == "subsampled_gaussian" for a, _ in rest):
        if precision > 0:
            rest.append((("gaussian", 1 / math.sqrt(precision)), 1))
        if len(rest) <= PRV_MAX_ATOMS and max(n for _, n in rest) <= MAX_SELF_COMPOSITIONS:
            eps = _prv(rest, delta, eps_error, max_points)
    return eps if eps is not None else pld_epsilon(items, delta)


def _fit_eps_error(eps_error: float, l_rdp: float, spread: float, cap: int) -> float | None:
    """The least ε error ≥ ``eps_error`` whose mesh, 2·(max(L, e) + 3)·spread/e points,
    fits ``cap``; ``None`` past :data:`PRV_MAX_EPS_ERROR`."""
    room = 0.98 * cap  # create_aligned may add a point or two at each end
    e = max(eps_error, 2 * (max(l_rdp, 0.0) + 3) * spread / room)
    if e > l_rdp:  # then the half-width is e + 3 itself
        e = max(e, 6 * spread / (room - 2 * spread)) if room > 2 * spread else math.inf
    return e if e <= PRV_MAX_EPS_ERROR else None


def _prv(rest: list[tuple[Atom, int]], delta: float, eps_error: float, cap: int) -> float | None:
    """prv_accountant on at most ``cap`` mesh points in all (one discretised PRV per atom),
    its domain sized from RDP here (Gopi et al. 2021, Remark 5.6): the library's own RDP
    series does not terminate for extreme σ. Losses below 1e-6 (nothing for a mesh to
    resolve) or above PLD_MAX_LOSS are left to the PLD."""
    counts = [n for _, n in rest]
    delta_error = delta / 1000
    spread = math.sqrt(sum(counts) / 2 * math.log(12 / delta_error))  # mesh = eps_error/spread
    curves = [gaussian_rdp(float(a[1]), float(a[2]) if len(a) > 2 else 1.0) for a, _ in rest]
    total = sum(_times(c, n) for n, c in zip(counts, curves, strict=True))
    l_rdp = max(
        rdp_lib.compute_epsilon(ORDERS, total, delta_error / 4)[0],
        *(rdp_lib.compute_epsilon(ORDERS, c, delta_error / 8 / sum(counts))[0] for c in curves),
    )
    if not 1e-6 < l_rdp <= PLD_MAX_LOSS:
        return None
    error = _fit_eps_error(eps_error, l_rdp, spread, cap // len(rest))
    if error is None:
        return None
    from prv_accountant import GaussianMechanism, PoissonSubsampledGaussianMechanism
    from prv_accountant.accountant import PRVAccountant

    prvs = [
        GaussianMechanism(float(a[1]))
        if a[0] == "gaussian"
        else PoissonSubsampledGaussianMechanism(float(a[2]), float(a[1]))
        for a, _ in rest
    ]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            half = max(l_rdp, error) + 3
            acc = PRVAccountant(prvs, error, delta_error, counts, eps_max=half)
            upper = acc.compute_epsilon(delta, counts)[2]
    except (ArithmeticError, ValueError, RuntimeError):
        return None  # the library's own refusals (mesh too fine for δ, mean mismatch, …)
    return max(0.0, float(upper)) if math.isfinite(upper) else None


@dataclass
class Composition:
    """Composed state of one budget: running RDP curve plus the atom multiset."""

    rdp: np.ndarray = field(default_factory=lambda: np.zeros(len(ORDERS)))
    atoms: Counter[Atom] = field(default_factory=Counter)

    def add(self, atoms: Mapping[Atom, int]) -> Composition:
        """A new composition with ``atoms`` composed in (self is left unchanged)."""
        curve = self.rdp.copy()
        for atom, n in atoms.items():
            curve = curve + atom_rdp(atom, n)
        # Counter(self.atoms).update(atoms), without the Mapping ABC checks that were most
        # of its cost: the same entries in the same order.
        merged = _empty()
        dict.update(merged, self.atoms)
        if merged:
            for atom, n in atoms.items():
                merged[atom] = n + merged.get(atom, 0)
        else:
            dict.update(merged, atoms)
        return Composition(curve, merged)

    def key(self) -> tuple[tuple[Atom, int], ...]:
        """Hashable, order-independent form of the multiset (for caches)."""
        return tuple(sorted(self.atoms.items(), key=repr))


@dataclass(frozen=True)
class Figures:
    """Every upper bound on ε at ``delta`` for one composition, and the least of them.

    ``basic`` is +∞ unless every atom is pure (ε-DP); ``tight`` is the PLD or PRV figure,
    ``None`` where it was not asked for or did not fit its budget. ``enforced`` names the
    least (``"basic"``, ``"rdp"``, ``"pld"`` or ``"prv"``) and ``epsilon`` is its value: the
    figure reported and compared with a limit.
    """

    delta: float
    basic: float
    rdp: float
    tight: float | None
    enforced: str
    epsilon: float


def best_epsilon(composition: Composition, delta: float, tight: str | None = "pld") -> Figures:
    """All figures of ``composition`` at ``delta``; the tight one from ``tight`` (``"pld"``,
    ``"prv"``, or ``None`` to skip it: RDP and basic cost microseconds, tight ones up to
    about a second, and are memoised on the multiset's content)."""
    delta = check_delta(delta)
    if tight not in (None, "pld", "prv"):
        raise InvalidArgument(f"unknown tight accountant {tight!r}", details={"field": "tight"})
    basic = basic_epsilon(composition.atoms.items(), delta)
    rdp = eps_from_rdp(composition.rdp, delta)
    name, value = min([("rdp", rdp), ("basic", basic)], key=lambda o: o[1])
    cheap = Figures(delta, basic, rdp, None, name, float(value))
    if tight is None:
        return cheap
    return with_tight(cheap, tight, _tight_cached(tight, composition.key(), delta))


def with_tight(cheap: Figures, name: str, tight: float | None) -> Figures:
    """``cheap`` (basic and RDP) with the tight figure ``tight`` of accountant ``name``
    added: the least valid bound wins, the tight one on a tie; None = not computed."""
    if tight is None or tight > cheap.epsilon:
        return replace(cheap, tight=tight)
    return replace(cheap, tight=tight, enforced=name, epsilon=float(tight))


@functools.lru_cache(maxsize=4096)
def _tight_cached(name: str, key: tuple[tuple[Atom, int], ...], delta: float) -> float | None:
    """A budget's multiset only changes with its version, so content-keyed memoisation is
    the per-version cache: unchanged budgets and repeated checks cost nothing."""
    return pld_epsilon(key, delta) if name == "pld" else prv_epsilon(key, delta)


def charge_epsilon(charge: Charge, delta: float) -> float:
    """The ε of one charge on its own at ``delta``: its cost, the least of RDP and basic."""
    return best_epsilon(Composition().add(atoms_of(charge)), delta, tight=None).epsilon


class Accountant(Protocol):
    """Turns a composition into one ε at a target δ (an upper bound on the true ε)."""

    @property
    def name(self) -> str: ...

    def epsilon(self, composition: Composition, delta: float) -> float: ...


@dataclass(frozen=True)
class RdpAccountant:
    """RDP with Balle et al. 2020's conversion, O(|ORDERS|) from the running curve."""

    name: str = "rdp"

    def epsilon(self, composition: Composition, delta: float) -> float:
        return eps_from_rdp(composition.rdp, delta)


@dataclass(frozen=True)
class TightAccountant:
    """PLD or PRV over the atom multiset, reported as the least valid bound: the tight
    figure where it was computed, never above RDP or basic composition."""

    name: str

    def epsilon(self, composition: Composition, delta: float) -> float:
        return best_epsilon(composition, delta, tight=self.name).epsilon


ACCOUNTANTS: dict[str, Accountant] = {
    "rdp": RdpAccountant(),
    "pld": TightAccountant("pld"),
    "prv": TightAccountant("prv"),
}


def get_accountant(name: str) -> Accountant:
    """Registry lookup: ``rdp``, ``pld`` or ``prv``."""
    try:
        return ACCOUNTANTS[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown accountant {name!r}", details={"known": ",".join(ACCOUNTANTS)}
        ) from None
