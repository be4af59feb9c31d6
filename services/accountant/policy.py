"""Turning a budget's composition into figures and a verdict: a pure function of (budget,
composition, policy) — no storage, no I/O.

Every figure is an upper bound on the true ε at the budget's δ: basic composition (pure
events only), RDP (Mironov 2017; Balle et al. 2020's conversion) and the tight accountant
(PLD or PRV, bounded in cost; ``None`` where it could not finish). The figure reported and
enforced is the least of those computed (``enforce_with="min"``, the default), or one named
accountant's. The cheap bounds come first: the tight figure is only computed when they
alone would refuse (or when a reader asks for it), so an affordable charge never pays for it
and a refusal is never decided by the expensive figure alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from services.accountant.accounting import (
    Atom,
    Composition,
    Figures,
    atoms_of,
    basic_epsilon_of,
    best_epsilon,
    eps_from_rdp_classic,
    eps_from_rdp_classic_rows,
    eps_from_rdp_rows,
    with_tight,
)
from services.accountant.events import Budget, BudgetStatus, Charge
from services.accountant.tight import check_delta
from services.common.errors import InvalidArgument

ENFORCE_CHOICES = ("min", "rdp", "pld", "prv")

COMPUTED, NOT_COMPUTED, INFEASIBLE = "computed", "not_computed", "infeasible"
"""Tight states: computed for this state; skipped (the cheap bounds decided); or it could
not finish within its bounded grid, so the other bounds stand."""


class TightNeeded(Exception):
    """The decision needs the tight figure, and the caller said not now (it holds a write
    lock): it computes the figure outside the lock, where it is memoised, and retries."""


@dataclass(frozen=True)
class Policy:
    """Which accountant is reported as tight and which figure is enforced."""

    tight: str = "pld"
    enforce_with: str = "min"
    tight_fn: Callable[[str, tuple[tuple[Atom, int], ...], float], float | None] | None = field(
        default=None, compare=False
    )
    """Where tight figures are computed (``TightPool.figure``: another process); None = here."""

    def __post_init__(self) -> None:
        if self.tight not in ("pld", "prv"):
            raise InvalidArgument("tight accountant must be pld or prv")
        if self.enforce_with not in ENFORCE_CHOICES:
            raise InvalidArgument(f"enforce_with must be one of {ENFORCE_CHOICES}")

    @property
    def reported_tight(self) -> str:
        """The accountant whose figure a reader gets as the tight one."""
        return self.enforce_with if self.enforce_with in ("pld", "prv") else self.tight

    def status(
        self,
        budget: Budget,
        comp: Composition,
        version: int,
        *,
        want_tight: bool = False,
        allow_tight: bool = True,
        known_tight: tuple[float | None] | None = None,
        event_count: int = 0,
    ) -> BudgetStatus:
        """Figures of ``comp`` against ``budget`` (``exceeds`` if the enforced ε > limit).

        ``allow_tight=False``: raise :class:`TightNeeded` instead of computing the tight
        figure when the decision needs it. ``known_tight``: the tight figure of ``comp``
        computed before (``(None,)``: it could not be), used instead of computing it.
        ``event_count``: the events the status counts (the caller knows them).
        """
        delta, limit = budget.delta, budget.epsilon
        cheap = best_epsilon(comp, delta, tight=None)
        name = self.reported_tight
        need = want_tight or self.enforce_with in ("pld", "prv")
        if self.enforce_with == "min" and _over(cheap.epsilon, limit):
            need = True
        figures, state = cheap, NOT_COMPUTED
        if need and comp.atoms and not allow_tight and known_tight is None:
            raise TightNeeded
        if need and comp.atoms:
            figures = self._with_tight(comp, cheap, name, known_tight)
            state = COMPUTED if figures.tight is not None else INFEASIBLE
        elif need:
            state = COMPUTED  # nothing composed: every figure is 0
        if self.enforce_with == "rdp":
            enforced, enforced_by = figures.rdp, "rdp"
        else:
            enforced, enforced_by = figures.epsilon, figures.enforced
        tight = figures.tight if state == COMPUTED and comp.atoms else None
        if state == COMPUTED and not comp.atoms:
            tight = 0.0
        return BudgetStatus(
            scope=budget.scope,
            limit_epsilon=limit,
            delta=delta,
            epsilon_rdp=figures.rdp,
            epsilon_rdp_classic=eps_from_rdp_classic(comp.rdp, delta),
            epsilon_tight=tight,
            epsilon_enforced=enforced,
            version=version,
            exceeds=_over(enforced, limit),
            epsilon_basic=figures.basic,
            enforced_by=enforced_by,
            tight_state=state,
            event_count=event_count,
        )

    def statuses(
        self,
        budgets: Sequence[Budget],
        comps: Sequence[Composition],
        versions: Sequence[int],
        event_counts: Sequence[int],
    ) -> list[BudgetStatus | None]:
        """:meth:`status` of each (budget, composition) pair, the RDP figures of all computed
        together (:func:`eps_from_rdp_rows`); None where :meth:`status` needs the tight
        figure or raises (the caller asks :meth:`status` itself there, in its own order).
        Each status returned equals :meth:`status`'s, field for field."""
        out: list[BudgetStatus | None] = [None] * len(budgets)
        if self.enforce_with in ("pld", "prv") or not budgets:
            return out  # every status needs the tight figure
        try:
            deltas = [check_delta(b.delta) for b in budgets]
        except InvalidArgument:
            return out
        curves = np.stack([c.rdp for c in comps])
        rdps = eps_from_rdp_rows(curves, deltas)
        classics = eps_from_rdp_classic_rows(curves, deltas)
        for i, (budget, comp) in enumerate(zip(budgets, comps, strict=True)):
            try:
                basic = basic_epsilon_of(comp.atoms, deltas[i])
            except InvalidArgument:
                continue
            rdp, limit = rdps[i], budget.epsilon
            cheap, name = (basic, "basic") if basic < rdp else (rdp, "rdp")  # best_epsilon's
            if self.enforce_with == "min" and _over(cheap, limit):
                continue  # the tight figure may decide
            enforced, by = (rdp, "rdp") if self.enforce_with == "rdp" else (float(cheap), name)
            out[i] = BudgetStatus(
                scope=budget.scope,
                limit_epsilon=limit,
                delta=budget.delta,
                epsilon_rdp=rdp,
                epsilon_rdp_classic=classics[i],
                epsilon_tight=None,
                epsilon_enforced=enforced,
                version=versions[i],
                exceeds=_over(enforced, limit),
                epsilon_basic=basic,
                enforced_by=by,
                tight_state=NOT_COMPUTED,
                event_count=event_counts[i],
            )
        return out

    def _with_tight(
        self, comp: Composition, cheap: Figures, name: str, known: tuple[float | None] | None
    ) -> Figures:
        if known is not None:
            return with_tight(cheap, name, known[0])
        if self.tight_fn is None:
            return best_epsilon(comp, cheap.delta, tight=name)
        return with_tight(cheap, name, self.tight_fn(name, comp.key(), cheap.delta))


def _over(epsilon: float, limit: float) -> bool:
    return epsilon > limit * (1 + 1e-12)


def charge_cost(charge: Charge, delta: float) -> Figures:
    """One charge's own ε at ``delta``: the least of its cheap bounds (basic, RDP); the
    receipt names which (``Figures.enforced``). Memoised: releases repeat a few mechanisms."""
    items = tuple(atoms_of(charge).items())  # one atom, always: nothing to sort
    return _cost(items if len(items) < 2 else tuple(sorted(items, key=repr)), delta)


@functools.lru_cache(maxsize=1024)
def _cost(atoms: tuple[tuple[Atom, int], ...], delta: float) -> Figures:
    return best_epsilon(Composition().add(dict(atoms)), delta, tight=None)
