"""Composition math: RDP curves, PLD and PRV figures for a multiset of mechanisms.

Pure functions, no storage. A budget's composed state is a :class:`Composition`: a running
RDP curve over the fixed :data:`ORDERS` and a multiset *atom → total count*, where an atom
is one elementary mechanism (a single Gaussian step, one Laplace release, …). RDP adds
over composition (Mironov 2017, Prop. 1), so the curve is updated in O(|ORDERS|) per spend;
PLD/PRV compose the multiset with FFTs, whose cost depends on the number of distinct atoms,
not on the number of past events.

Enforcement compares an *upper bound* with the limit: RDP, PLD's pessimistic estimate
and PRV's ``eps_upper`` all are; the CLT/GDP estimates are never used.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from dp_accounting.pld import common as dp_common
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld.privacy_loss_distribution import PrivacyLossDistribution as PLD
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    compute_safe_domain_size,
    discretize,
)

from services.accountant.events import (
    Charge,
    Gaussian,
    Laplace,
    Mechanism,
    SubsampledGaussian,
)
from services.common.errors import InvalidArgument

#: RDP orders, opacus' defaults (so the RDP golden values match opacus exactly).
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
_ALPHAS = np.array(ORDERS)
_PLD_INTERVAL = 1e-4  # PLDAccountant's default value_discretization_interval

#: An atom: (kind, *params) of one elementary mechanism; hashable and JSON-friendly.
Atom = tuple[str | float, ...]


def atoms_of(charge: Charge) -> Counter[Atom]:
    """Elementary mechanisms of a charge with their multiplicities."""
    m: Mechanism = charge.mechanism
    if isinstance(m, SubsampledGaussian):
        return Counter(
            {("subsampled_gaussian", m.noise_multiplier, m.sampling_rate): m.steps * charge.count}
        )
    if isinstance(m, Gaussian):
        return Counter({("gaussian", m.noise_multiplier): charge.count})
    if isinstance(m, Laplace):
        return Counter({("laplace", m.scale / m.sensitivity): charge.count})
    return Counter({("pure_epsilon", m.epsilon): charge.count})


def laplace_rdp(b: float, alphas: np.ndarray) -> np.ndarray:
    """RDP of the Laplace mechanism with scale b per unit L1 sensitivity.

    Mironov 2017, "Rényi Differential Privacy", Prop. 6 (α > 1):
    ε(α) = 1/(α−1) · log(α/(2α−1)·e^{(α−1)/b} + (α−1)/(2α−1)·e^{−α/b}),
    computed in log space so that large α/b does not overflow.
    """
    a = alphas
    t1 = np.log(a / (2 * a - 1)) + (a - 1) / b
    t2 = np.log((a - 1) / (2 * a - 1)) - a / b
    return np.logaddexp(t1, t2) / (a - 1)


def pure_rdp(eps: float, alphas: np.ndarray) -> np.ndarray:
    """ε-DP ⇒ (α, min(ε, αε²/2))-RDP (Mironov 2017 Prop. 3; Bun & Steinke 2016 Prop. 3.3)."""
    return np.minimum(eps, alphas * eps * eps / 2)


def atom_rdp(atom: Atom, count: int) -> np.ndarray:
    """RDP curve over :data:`ORDERS` of ``count`` compositions of one atom."""
    kind = atom[0]
    if kind == "gaussian":
        q, sigma = 1.0, float(atom[1])
    elif kind == "subsampled_gaussian":
        q, sigma = float(atom[2]), float(atom[1])
    elif kind == "laplace":
        return laplace_rdp(float(atom[1]), _ALPHAS) * count
    elif kind == "pure_epsilon":
        return pure_rdp(float(atom[1]), _ALPHAS) * count
    else:
        raise ValueError(f"unknown atom {atom!r}")
    curve = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=count, orders=list(ORDERS))
    return np.asarray(curve, dtype=float)


def eps_from_rdp(curve: np.ndarray, delta: float) -> float:
    """Tighter conversion (Balle et al. 2020, Thm. 21) via opacus' ``get_privacy_spent``."""
    if not np.any(curve):
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(ORDERS), rdp=curve, delta=delta)
    return max(0.0, float(eps))


def eps_from_rdp_classic(curve: np.ndarray, delta: float) -> float:
    """The seed's Lemma 1 (Mironov 2017 Prop. 3): min_α ε(α) + log(1/δ)/(α−1)."""
    if not np.any(curve):
        return 0.0
    return float(np.min(curve + math.log(1 / delta) / (_ALPHAS - 1)))


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
        merged = Counter(self.atoms)
        merged.update(atoms)
        return Composition(curve, merged)

    def key(self) -> tuple[tuple[Atom, int], ...]:
        """Hashable, order-independent form of the multiset (for caches)."""
        return tuple(sorted(self.atoms.items(), key=repr))


def charge_epsilon(charge: Charge, delta: float) -> float:
    """The ε of one charge on its own at ``delta`` (RDP, opacus' conversion): its cost."""
    return eps_from_rdp(Composition().add(atoms_of(charge)).rdp, delta)


def _atom_pld(atom: Atom, count: int) -> PLD:
    """Pessimistic PLD of ``count`` compositions of one atom (as PLDAccountant builds it)."""
    kind, p = atom[0], float(atom[1])
    if kind == "gaussian":
        # k Gaussians with multiplier σ compose exactly to one with σ/√k.
        return pld_lib.from_gaussian_mechanism(
            p / math.sqrt(count), value_discretization_interval=_PLD_INTERVAL
        )
    if kind == "subsampled_gaussian":
        one = pld_lib.from_gaussian_mechanism(
            p, value_discretization_interval=_PLD_INTERVAL, sampling_prob=float(atom[2])
        )
    elif kind == "laplace":
        one = pld_lib.from_laplace_mechanism(p, value_discretization_interval=_PLD_INTERVAL)
    else:
        # Pessimistic PLD of any ε-DP mechanism (Koskela et al.; dp_accounting docs §3.5):
        # the dominating pair of pure ε-DP is binary randomized response.
        params = dp_common.DifferentialPrivacyParameters(p, 0.0)
        one = pld_lib.from_privacy_parameters(params, value_discretization_interval=_PLD_INTERVAL)
    return one.self_compose(count)


def pld_epsilon(atoms: Iterable[tuple[Atom, int]], delta: float) -> float:
    """PLD accountant (Koskela et al. 2020; Google dp_accounting), pessimistic estimate.

    Built from dp_accounting's PLD constructors with PLDAccountant's defaults (so the
    figures equal PLDAccountant's), because PLDAccountant has no pure-ε event under
    add/remove neighbouring.
    """
    total: PLD | None = None
    for atom, n in atoms:
        if n:
            part = _atom_pld(atom, n)
            total = part if total is None else total.compose(part)
    return 0.0 if total is None else max(0.0, float(total.get_epsilon_for_delta(delta)))


def prv_epsilon(atoms: Iterable[tuple[Atom, int]], delta: float, eps_error: float = 0.01) -> float:
    """PRV accountant (Gopi et al. 2021) upper bound, via opacus' PRV analysis.

    opacus only has the (subsampled) Gaussian PRV. A multiset holding any Laplace or
    pure-ε atom falls back to :func:`pld_epsilon` (also a tight upper bound), so the
    ``prv`` figure is always a valid bound; Gaussian is the subsampled PRV with q = 1.
    """
    items = [(a, n) for a, n in atoms if n]
    if not items:
        return 0.0
    if any(a[0] not in ("gaussian", "subsampled_gaussian") for a, _ in items):
        return pld_epsilon(items, delta)
    delta_error = delta / 1000
    prvs = [
        PoissonSubsampledGaussianPRV(1.0 if a[0] == "gaussian" else float(a[2]), float(a[1]))
        for a, _ in items
    ]
    counts = [n for _, n in items]
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        size = compute_safe_domain_size(
            prvs=prvs, max_self_compositions=counts, eps_error=eps_error, delta_error=delta_error
        )
        mesh = eps_error / math.sqrt(sum(counts) * math.log(12 / delta_error) / 2)
        domain = Domain.create_aligned(-size, size, mesh)
        dprvs = [
            discretize(TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max), domain)
            for p in prvs
        ]
        composed = compose_heterogeneous(dprvs=dprvs, num_self_compositions=counts)
        _, _, upper = composed.compute_epsilon(delta, delta_error, eps_error)
    return max(0.0, float(upper))


class Accountant(Protocol):
    """Turns a composition into one ε at a target δ (an upper bound on the true ε)."""

    @property
    def name(self) -> str: ...

    def epsilon(self, composition: Composition, delta: float) -> float: ...


@dataclass(frozen=True)
class RdpAccountant:
    """RDP with opacus' conversion (Balle et al. 2020), O(|ORDERS|) from the running curve."""

    name: str = "rdp"

    def epsilon(self, composition: Composition, delta: float) -> float:
        return eps_from_rdp(composition.rdp, delta)


@dataclass(frozen=True)
class TightAccountant:
    """PLD or PRV over the atom multiset; memoised on the multiset's content."""

    name: str

    def epsilon(self, composition: Composition, delta: float) -> float:
        return _tight_cached(self.name, composition.key(), delta)


@functools.lru_cache(maxsize=4096)
def _tight_cached(name: str, key: tuple[tuple[Atom, int], ...], delta: float) -> float:
    """A budget's multiset only changes with its version, so content-keyed memoisation is
    the per-version cache: unchanged budgets and repeated checks cost nothing."""
    return pld_epsilon(key, delta) if name == "pld" else prv_epsilon(key, delta)


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
