"""The PRV accountant's tight figure (Gopi et al. 2021) over an atom multiset.

``prv_accountant`` composes (subsampled) Gaussians on a mesh whose size we cap (its points
are long doubles): the domain is sized from RDP here, the ε error widened to fit the cap,
and whatever does not fit — or a Laplace or pure-ε atom — gets the PLD figure instead
(:func:`services.accountant.tight.pld_epsilon`, a tight bound too).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np

from services.accountant.dplib import rdp_lib
from services.accountant.rdp import ORDERS, gaussian_rdp, times
from services.accountant.tight import (
    MAX_SELF_COMPOSITIONS,
    PLD_MAX_LOSS,
    Atom,
    check_delta,
    gaussian_epsilon,
    pld_epsilon,
    split_gaussians,
)

PRV_MAX_POINTS = 800_000
"""Cap on the PRV mesh over all atoms (prv_accountant holds long doubles: ~170 B a point);
the golden DP-SGD case (q=0.01, σ=1, 10⁴ steps) needs 776 726 at ε error 0.01."""
PRV_MAX_EPS_ERROR = 0.1
"""Largest ε error the PRV may be widened to, to fit its mesh, before PLD is used instead."""
PRV_MAX_ATOMS = 4


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
    total = sum(times(c, n) for n, c in zip(counts, curves, strict=True))
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
