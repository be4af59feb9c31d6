"""Tight ε of an atom multiset at a bounded cost: the PLD figure, by Google's dp_accounting.

An atom is one elementary mechanism: ``("gaussian", σ)``, ``("subsampled_gaussian", σ, q)``,
``("laplace", b)`` (scale per unit L1 sensitivity) or ``("pure_epsilon", ε)``. Every figure is
an *upper bound* on ε at δ, or ``None`` where it would not fit its budget (RDP and basic stay).

The DP math is dp_accounting's: plain Gaussians merge (Σ n/σ² adds) into one exact ε,
``get_epsilon_gaussian`` (Balle & Wang 2018, Thm. 8); other atoms get privacy loss
distributions (Koskela et al. 2020) by pessimistic connect-the-dots (Doroshenko et al. 2022,
Alg. 1): ``from_gaussian_mechanism``, ``from_laplace_mechanism``, and for pure ε₀
``create_pmf_pessimistic_connect_dots_fixed_gap`` on randomized response (which dominates
ε₀-DP); then ``self_compose``, ``compose`` and ``get_epsilon_for_delta``.

What this module adds is the *plan*, bounding the cost before anything is composed: the grid
step starts at 1e-4 (finer for small pure atoms) and is coarsened until the single-atom PMFs
fit :data:`PLD_MAX_ATOM_POINTS` (sized from the library's loss bounds) and the
self-compositions :data:`PLD_MAX_POINTS` (sized by ``compute_self_convolve_bounds``, the call
``self_compose`` makes); large counts compose in two stages. A coarser grid loosens the bound,
never invalidates it. Refused (``None``): over :data:`MAX_SELF_COMPOSITIONS` of one atom (FFT
rounding grows with n) or :data:`MAX_DISTINCT_ATOMS` atoms, an atom whose loss spans over
:data:`PLD_MAX_LOSS` or that dp_accounting cannot bound, or no fit up to :data:`_MAX_STEP`.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from services.accountant import dplib  # noqa: F401 (installs the lazy package)
from services.common.errors import InvalidArgument

if TYPE_CHECKING:
    from dp_accounting.gaussian_mechanism import get_epsilon_gaussian
    from dp_accounting.pld import common, pld_pmf
    from dp_accounting.pld import privacy_loss_distribution as pld_lib
    from dp_accounting.pld import privacy_loss_mechanism as plm
    from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution as Pld
    from scipy import special


def load() -> None:
    """Import the PLD libraries (dp_accounting.pld, scipy.stats via get_epsilon_gaussian:
    ~50 MB, ~0.5 s) on the first tight figure, not at import: the server process computes
    none (its :class:`~services.accountant.tightpool.TightPool` workers do, and import them
    when the pool starts)."""
    global common, pld_pmf, pld_lib, plm, Pld, special, get_epsilon_gaussian
    if "plm" in globals():
        return
    from dp_accounting.gaussian_mechanism import get_epsilon_gaussian
    from dp_accounting.pld import common, pld_pmf
    from dp_accounting.pld import privacy_loss_distribution as pld_lib
    from dp_accounting.pld import privacy_loss_mechanism as plm
    from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution as Pld
    from scipy import special


#: An atom: (kind, *params) of one elementary mechanism; hashable and JSON-friendly.
Atom = tuple[str | float, ...]

PLD_INTERVAL = 1e-4  # finest grid step for continuous atoms (PLDAccountant's default)
PLD_MAX_POINTS = 1 << 18
"""Cap on the composed PMFs' points, both adjacencies: ~50 B a point at the peak of the complex
FFT power, and ~1 µs a point where ``get_epsilon_for_delta`` walks them in Python."""
PLD_MAX_ATOM_POINTS = 1 << 15
"""Cap on all single-atom PMFs' points: dp_accounting inverts the privacy loss point by point
in Python (~8 µs a point for a subsampled Gaussian)."""
PLD_MAX_LOSS = 1e4  # largest span of one atom's privacy loss that is put on a grid
MAX_SELF_COMPOSITIONS = 10**8
MAX_DISTINCT_ATOMS = 16
TAIL_MASS = 1e-15  # mass a truncation may move to +∞ (dp_accounting's default)
_TOL = 1e-12  # get_epsilon_gaussian's root tolerance
_MAX_STEP = 1.0  # coarser than this, a grid is not worth its cost
_SPLIT = 10**4  # self-compositions past this run in two stages
_FIELDS = {
    "gaussian": ("noise_multiplier",),
    "subsampled_gaussian": ("noise_multiplier", "sampling_rate"),
    "laplace": ("scale",),
    "pure_epsilon": ("epsilon",),
}


def _bad(name: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{name} {why}", details={"field": name})


def _positive(name: str, value: object) -> float:
    if type(value) is float and 0 < value < math.inf:  # the common case, without the ABCs
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(name, "must be a number")
    if not math.isfinite(float(value)) or value <= 0:
        raise _bad(name, "must be finite and > 0")
    return float(value)


def check_atom(atom: Atom, count: object) -> int:
    """Validate one (atom, count) pair, naming the bad field; returns the count (int ≥ 0)."""
    if type(count) is not int and (
        isinstance(count, bool) or not isinstance(count, numbers.Integral)
    ):
        raise _bad("count", "must be an integer >= 0")
    if count < 0:
        raise _bad("count", "must be an integer >= 0")
    names = _FIELDS.get(str(atom[0])) if atom else None
    if names is None or len(atom) != 1 + len(names):
        raise InvalidArgument(f"unknown atom {atom!r}", details={"field": "atom"})
    for name, value in zip(names, atom[1:], strict=True):
        _positive(name, value)
    if atom[0] == "subsampled_gaussian" and float(atom[2]) > 1:
        raise _bad("sampling_rate", "must be in (0, 1]")
    return int(count)


def check_delta(delta: object) -> float:
    """The target δ as a float in (0, 1), else InvalidArgument naming ``delta``."""
    value = _positive("delta", delta)
    if value >= 1:
        raise _bad("delta", "must be in (0, 1)")
    return value


def split_gaussians(atoms: Iterable[tuple[Atom, int]]) -> tuple[float, list[tuple[Atom, int]]]:
    """Validated non-empty items as (Σ n/σ² over plain Gaussians, the other atoms)."""
    terms, rest = [], []
    for atom, n in atoms:
        if not check_atom(atom, n):
            continue
        if atom[0] == "gaussian" or (atom[0] == "subsampled_gaussian" and atom[2] == 1.0):
            with np.errstate(over="ignore"):
                terms.append(float(np.float64(n) / float(atom[1]) / float(atom[1])))
        else:
            rest.append((atom, n))
    # Relative slack over the float rounding: a larger Σ n/σ² only means a larger ε.
    return math.fsum(terms) * (1 + 1e-14), rest


def gaussian_epsilon(precision: float, delta: float) -> float:
    """ε at δ of one Gaussian with (Δ/σ)² = ``precision`` (= Σ n/σ²): dp_accounting's exact
    ``get_epsilon_gaussian`` (Balle & Wang 2018, Thm. 8), raised by its root finder's
    tolerance (brentq: |ε − ε*| ≤ tol + 4·2⁻⁵²·ε*) so that it is an upper bound."""
    load()
    if not 0 < precision < math.inf:
        return 0.0 if precision == 0 else math.inf
    with np.errstate(all="ignore"):
        eps = float(get_epsilon_gaussian(1 / math.sqrt(precision), delta, tol=_TOL))
    return eps + _TOL + 1e-15 * eps if eps > 0 else 0.0


def _rate(atom: Atom) -> float:
    return float(atom[2]) if atom[0] == "subsampled_gaussian" else 1.0


def _loss_range(atom: Atom, add: bool) -> tuple[float, float]:
    """The privacy losses dp_accounting lays on the grid: its connect-the-dots bounds (the
    Gaussian's truncated at mass e⁻⁵⁰), ±ε₀ for pure atoms; (−∞, ∞) where it fails."""
    load()
    kind, p = atom[0], float(atom[1])
    if kind == "pure_epsilon":
        return -p, p
    side = plm.AdjacencyType.ADD if add else plm.AdjacencyType.REMOVE
    loss = plm.LaplacePrivacyLoss if kind == "laplace" else plm.GaussianPrivacyLoss
    try:
        with np.errstate(all="ignore"):
            b = loss(p, sampling_prob=_rate(atom), adjacency_type=side).connect_dots_bounds()
    except (ArithmeticError, ValueError):
        return -math.inf, math.inf
    return b.epsilon_lower, b.epsilon_upper


def _pmfs(pld: Pld) -> list[pld_pmf.PLDPmf]:
    """The REMOVE PMF, and the ADD one where it differs (dp_accounting has no accessor)."""
    load()
    return [pld._pmf_remove] if pld._symmetric else [pld._pmf_remove, pld._pmf_add]


@functools.lru_cache(maxsize=16)
def _atom_pld(atom: Atom, step: float) -> Pld:
    """One atom's pessimistic connect-the-dots PLD at ``step``, dense (a sparse one's
    ``self_compose`` computes size**n first). Cached: a budget's atoms recur as counts grow.

    Pure ε₀-DP is dominated by randomized response (losses ±ε₀, masses expit(±ε₀)): its exact
    hockey-stick curve δ(ε) = Σ_L p_L·(1 − e^{ε−L})₊ is connected on the grid. Unlike
    ``from_privacy_parameters``, which rounds ±ε₀ up to the grid, it stays tight for ε₀ ≪ Δ."""
    load()
    kind, p = atom[0], float(atom[1])
    make = pld_lib.from_laplace_mechanism if kind == "laplace" else pld_lib.from_gaussian_mechanism
    options = {"sampling_prob": _rate(atom), "value_discretization_interval": step}
    with np.errstate(all="ignore"):
        if kind == "pure_epsilon":
            lo, hi = math.floor(-p / step), math.ceil(p / step)
            gaps = np.arange(lo, hi + 1)[:, None] * step - np.array([p, -p])  # ε − L
            deltas = np.clip(-np.expm1(np.minimum(gaps, 0.0)) @ special.expit([p, -p]), 0, 1)
            pld = Pld(pld_pmf.create_pmf_pessimistic_connect_dots_fixed_gap(step, lo, hi, deltas))
        else:
            pld = make(p, **options, pessimistic_estimate=True, use_connect_dots=True)
    return Pld(*(pmf.to_dense_pmf() for pmf in _pmfs(pld)))


def _points(pld: Pld, n: int) -> int:
    """Points ``pld.self_compose(n)`` will hold: the windows of dp_accounting's own Chernoff
    bounds (``self_compose`` makes the same call), or the FFT length where that is longer."""
    load()
    if n == 1:
        return sum(pmf.size for pmf in _pmfs(pld))
    with np.errstate(all="ignore"):  # log 0 of an empty grid point; orders it skips
        bounds = [common.compute_self_convolve_bounds(m._probs, n, TAIL_MASS) for m in _pmfs(pld)]
    return sum(max(hi - lo + 1, m.size) for (lo, hi), m in zip(bounds, _pmfs(pld), strict=True))


def _composed(rest: list[tuple[Atom, int]], step: float, cap: int) -> tuple[list, int]:
    """The self-compositions at ``step``, as (PLD, count), and the points they will hold (no
    tasks and an estimate, past ``cap``). Past :data:`_SPLIT`, n = m·k + r (m = ⌊√n⌋) runs as
    (PLD^m)^k · PLD^r, where the library's windows are tight; stage 1 runs here, if it fits."""
    tasks: list[tuple[Pld, int]] = []
    held = 0  # points of the stage-1 results
    for atom, n in rest:
        pld = _atom_pld(atom, step)
        if n > _SPLIT:
            m = math.isqrt(n)
            if (held := held + _points(pld, m)) > cap:
                return [], held * math.isqrt(n // m)  # k stages widen it about √k-fold
            tasks.append((pld.self_compose(m, TAIL_MASS), n // m))
            n %= m
        tasks += [(pld, n)] if n else []
    return tasks, sum(_points(pld, n) for pld, n in tasks)


def _plan(rest: list[tuple[Atom, int]], cap: int) -> list[tuple[Pld, int]] | None:
    """The self-compositions (:func:`_composed`) at the finest step, from 1e-4 (or the least
    ε₀ if all are pure), whose atoms fit :data:`PLD_MAX_ATOM_POINTS` and compositions ``cap``."""
    load()
    if len(rest) > MAX_DISTINCT_ATOMS or any(n > MAX_SELF_COMPOSITIONS for _, n in rest):
        return None
    sides = {"subsampled_gaussian": (False, True)}  # ADD too where the PLD is asymmetric
    ranges = [_loss_range(a, add) for a, _ in rest for add in sides.get(str(a[0]), (False,))]
    if not all(hi - lo <= PLD_MAX_LOSS for lo, hi in ranges):  # also False for NaN
        return None
    step, span = PLD_INTERVAL, sum(hi - lo for lo, hi in ranges)
    if all(a[0] == "pure_epsilon" for a, _ in rest):
        step = max(min(step, *(float(a[1]) for a, _ in rest)), 1e-300)
    # dp_accounting's grids hold < span/step + 3 points a range: fit them before building.
    step = max(step, span / max(min(cap, PLD_MAX_ATOM_POINTS) - 3 * len(ranges), 1))
    # A cheap probe (~1000 grid points) sizes the windows: in grid points they scale as 1/step
    # (the library's Chernoff orders are fixed in loss units). Then build, check, coarsen.
    probe = max(step, span / 1000)
    step = max(step, probe * _composed(rest, probe, cap)[1] / cap)
    while step <= _MAX_STEP:
        tasks, need = _composed(rest, step, cap)
        if need <= cap:
            return tasks
        step *= max(1.25, 1.05 * need / cap)
    return None


def pld_epsilon(
    atoms: Iterable[tuple[Atom, int]], delta: float, max_points: int = PLD_MAX_POINTS
) -> float | None:
    """PLD upper bound on ε at δ, or ``None`` when it does not fit ``max_points``: plain
    Gaussians alone exactly; else dp_accounting's PLDs at the planned step, composed, read at δ
    (REMOVE and ADD adjacencies apart, the larger ε reported)."""
    load()
    delta = check_delta(delta)
    precision, rest = split_gaussians(atoms)
    if not rest:
        return gaussian_epsilon(precision, delta)
    if precision > 0:
        rest.append((("gaussian", 1 / math.sqrt(precision)), 1))
    tasks = _plan(rest, max_points)
    if tasks is None:
        return None
    with np.errstate(all="ignore"):
        parts = [pld.self_compose(n, TAIL_MASS) if n > 1 else pld for pld, n in tasks]
        composed = functools.reduce(lambda a, b: a.compose(b, TAIL_MASS), parts)
        if composed.get_delta_for_epsilon(0.0) <= delta:  # vectorised; the walk below is not
            return 0.0
        return float(composed.get_epsilon_for_delta(delta))
