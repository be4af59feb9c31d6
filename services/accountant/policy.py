"""Turning a budget's composition into figures and a verdict (no storage, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from services.accountant.accounting import (
    Composition,
    eps_from_rdp,
    eps_from_rdp_classic,
    get_accountant,
)
from services.accountant.events import Budget, BudgetStatus
from services.common.errors import InvalidArgument

ENFORCE_CHOICES = ("min", "rdp", "pld", "prv")


@dataclass(frozen=True)
class Policy:
    """Which accountant is reported as tight and which figure is enforced.

    ``enforce_with="min"`` enforces min(RDP, tight): each is an upper bound on the true ε,
    so the minimum is one too. The tight figure is only computed when RDP alone exceeds
    the limit (or when asked), because PLD/PRV cost milliseconds to seconds while RDP
    costs microseconds; the reported ``epsilon_enforced`` is then the RDP figure.
    """

    tight: str = "pld"
    enforce_with: str = "min"

    def __post_init__(self) -> None:
        if self.tight not in ("pld", "prv"):
            raise InvalidArgument("tight accountant must be pld or prv")
        if self.enforce_with not in ENFORCE_CHOICES:
            raise InvalidArgument(f"enforce_with must be one of {ENFORCE_CHOICES}")

    def status(
        self, budget: Budget, comp: Composition, version: int, *, want_tight: bool = False
    ) -> BudgetStatus:
        """Figures of ``comp`` against ``budget`` (``exceeds`` if the enforced ε > limit)."""
        delta, limit = budget.delta, budget.epsilon
        rdp = eps_from_rdp(comp.rdp, delta)
        tight: float | None = None
        if self.enforce_with == "rdp":
            enforced = rdp
        elif self.enforce_with in ("pld", "prv"):
            enforced = get_accountant(self.enforce_with).epsilon(comp, delta)
            tight = enforced if self.enforce_with == self.tight else None
        elif rdp <= limit and not want_tight:
            enforced = rdp
        else:
            tight = get_accountant(self.tight).epsilon(comp, delta)
            enforced = min(rdp, tight)
        if want_tight and tight is None:
            tight = get_accountant(self.tight).epsilon(comp, delta)
        return BudgetStatus(
            scope=budget.scope,
            limit_epsilon=limit,
            delta=delta,
            epsilon_rdp=rdp,
            epsilon_rdp_classic=eps_from_rdp_classic(comp.rdp, delta),
            epsilon_tight=tight,
            epsilon_enforced=enforced,
            version=version,
            exceeds=enforced > limit * (1 + 1e-12),
        )
