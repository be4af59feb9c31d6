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

Here: the atoms of a charge, the :class:`Composition`, basic composition, the figures and
the accountant registry. Each mechanism's RDP curve and the RDP → (ε, δ) conversions are
:mod:`services.accountant.rdp`'s, the PRV figure :mod:`services.accountant.prv`'s and the
PLD one :mod:`services.accountant.tight`'s; their public names are importable from here too.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Protocol

import numpy as np

from services.accountant.events import Charge, Gaussian, Laplace, Mechanism, SubsampledGaussian
from services.accountant.prv import prv_epsilon
from services.accountant.rdp import (
    ORDERS,
    atom_rdp,
    eps_from_rdp,
    eps_from_rdp_classic,
    eps_from_rdp_classic_rows,
    eps_from_rdp_rows,
    gaussian_rdp,
    laplace_rdp,
    pure_rdp,
)
from services.accountant.tight import Atom, check_atom, check_delta, pld_epsilon
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
    "gaussian_rdp",
    "get_accountant",
    "laplace_rdp",
    "pld_epsilon",
    "prv_epsilon",
    "pure_rdp",
]

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
