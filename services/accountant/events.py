"""Domain objects of the privacy ledger: scopes, budgets, mechanisms and charges.

Everything here is a frozen dataclass validated at construction, so an invalid charge can
never reach storage (the shape follows ``dp_accounting.dp_event``: events are plain data,
the math lives in :mod:`services.accountant.accounting`). Serialised forms (``to_json``)
are what the ledger stores and the audit export writes; they never change meaning.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from services.common.errors import InvalidArgument

ScopeKind = Literal["tenant", "dataset", "subject"]


def _finite_positive(name: str, value: float) -> None:
    """Reject NaN, inf, zero and negative values: any of them voids the guarantee."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number", details={"field": name})
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{name} must be finite and > 0", details={"field": name})


def _non_empty(name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name} must be a non-empty string", details={"field": name})


@dataclass(frozen=True)
class Scope:
    """Which budget: a tenant's, a dataset's (within a tenant) or a data subject's."""

    tenant_id: str
    dataset_id: str | None = None
    subject_id: str | None = None

    def __post_init__(self) -> None:
        _non_empty("tenant_id", self.tenant_id)
        if self.dataset_id is not None:
            _non_empty("dataset_id", self.dataset_id)
        if self.subject_id is not None:
            _non_empty("subject_id", self.subject_id)
            if self.dataset_id is None:
                raise InvalidArgument("a subject scope needs a dataset_id")

    @property
    def kind(self) -> ScopeKind:
        if self.subject_id is not None:
            return "subject"
        return "dataset" if self.dataset_id is not None else "tenant"

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "dataset_id": self.dataset_id,
            "subject_id": self.subject_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scope:
        return cls(data["tenant_id"], data.get("dataset_id"), data.get("subject_id"))


def _limits(field: str, epsilon: float, delta: float) -> None:
    _finite_positive(f"{field}epsilon", epsilon)
    _finite_positive(f"{field}delta", delta)
    if not 0 < delta < 1:
        raise InvalidArgument("delta must be in (0, 1)", details={"field": f"{field}delta"})


@dataclass(frozen=True)
class SubjectDefault:
    """The limits a dataset gives each subject budget created on the subject's first charge."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        _limits("budget.subject_default.", self.epsilon, self.delta)


@dataclass(frozen=True)
class Budget:
    """An (ε, δ) limit on one scope. δ is the target at which every ε is reported.

    A dataset budget may carry a :class:`SubjectDefault`: a charge naming a subject that has
    no budget yet creates one with those limits, in the charge's own transaction.
    """

    scope: Scope
    epsilon: float
    delta: float
    subject_default: SubjectDefault | None = None

    def __post_init__(self) -> None:
        _limits("", self.epsilon, self.delta)
        if self.subject_default is not None and self.scope.kind != "dataset":
            raise InvalidArgument(
                "only a dataset budget has a subject_default",
                details={"field": "budget.subject_default"},
            )


@dataclass(frozen=True)
class Gaussian:
    """Gaussian mechanism; ``noise_multiplier`` = σ / Δ₂ (noise std over L2 sensitivity)."""

    noise_multiplier: float
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        _finite_positive("noise_multiplier", self.noise_multiplier)


@dataclass(frozen=True)
class SubsampledGaussian:
    """Poisson-subsampled Gaussian run ``steps`` times (DP-SGD, Abadi et al. 2016)."""

    noise_multiplier: float
    sampling_rate: float
    steps: int = 1
    kind: ClassVar[str] = "subsampled_gaussian"

    def __post_init__(self) -> None:
        _finite_positive("noise_multiplier", self.noise_multiplier)
        _finite_positive("sampling_rate", self.sampling_rate)
        if self.sampling_rate > 1:
            raise InvalidArgument("sampling_rate must be in (0, 1]")
        _positive_int("steps", self.steps)


@dataclass(frozen=True)
class Laplace:
    """Laplace mechanism with noise ``scale`` b on a query of L1 ``sensitivity`` Δ₁."""

    scale: float
    sensitivity: float = 1.0
    kind: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        _finite_positive("scale", self.scale)
        _finite_positive("sensitivity", self.sensitivity)


@dataclass(frozen=True)
class PureEpsilon:
    """Any mechanism known only to be ε-DP (δ = 0)."""

    epsilon: float
    kind: ClassVar[str] = "pure_epsilon"

    def __post_init__(self) -> None:
        _finite_positive("epsilon", self.epsilon)


Mechanism = Gaussian | SubsampledGaussian | Laplace | PureEpsilon
MECHANISMS: dict[str, type[Mechanism]] = {
    m.kind: m for m in (Gaussian, SubsampledGaussian, Laplace, PureEpsilon)
}


def _positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be an integer >= 1", details={"field": name})


def mechanism_to_json(mechanism: Mechanism) -> dict[str, Any]:
    """Stable JSON form: ``{"kind": ..., <fields>}``."""
    return {"kind": mechanism.kind, **mechanism.__dict__}


def mechanism_from_json(data: dict[str, Any]) -> Mechanism:
    params = dict(data)
    cls = MECHANISMS.get(params.pop("kind", ""))
    if cls is None:
        raise InvalidArgument("unknown mechanism kind", details={"kind": data.get("kind")})
    try:
        return cls(**params)
    except TypeError as exc:
        raise InvalidArgument(f"bad mechanism parameters: {exc}") from exc


@dataclass(frozen=True)
class Charge:
    """One charged release: ``count`` self-compositions of ``mechanism``.

    It touches the tenant budget, the dataset budget and one budget per subject; all of
    them must exist (an empty ``dataset_id`` charges the tenant budget alone, and then no
    subject may be named). ``idempotency_key`` is unique per tenant: a retry with the same
    key and the same charge replays the original receipt. ``labels`` are audit metadata,
    like ``service`` and ``request_id``: kept with the event, not part of what is charged.
    """

    mechanism: Mechanism
    tenant_id: str
    dataset_id: str
    idempotency_key: str
    subject_ids: tuple[str, ...] = ()
    count: int = 1
    service: str = ""
    request_id: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    """Sorted (key, value) pairs."""

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, Gaussian | SubsampledGaussian | Laplace | PureEpsilon):
            raise InvalidArgument("mechanism must be one of " + ", ".join(MECHANISMS))
        _positive_int("count", self.count)
        _non_empty("tenant_id", self.tenant_id)
        if not isinstance(self.dataset_id, str):
            raise InvalidArgument("dataset_id must be a string", details={"field": "dataset_id"})
        if not self.dataset_id and self.subject_ids:
            raise InvalidArgument(
                "subject_ids need a dataset_id", details={"field": "charge.subject_ids"}
            )
        _non_empty("idempotency_key", self.idempotency_key)
        if not isinstance(self.subject_ids, tuple):
            raise InvalidArgument("subject_ids must be a tuple")
        for sid in self.subject_ids:
            _non_empty("subject_id", sid)
        if len(set(self.subject_ids)) != len(self.subject_ids):
            raise InvalidArgument("subject_ids must be distinct")

    @functools.cached_property
    def scopes(self) -> tuple[Scope, ...]:
        """Every budget this charge touches: tenant, dataset, then each subject (computed
        once per charge: the ledger asks several times)."""
        tenant, dataset = self.tenant_id, self.dataset_id
        if not dataset:
            return (Scope(tenant),)
        subjects = tuple(Scope(tenant, dataset, s) for s in sorted(self.subject_ids))
        return (Scope(tenant), Scope(tenant, dataset), *subjects)

    def to_json(self) -> dict[str, Any]:
        data = {
            "mechanism": mechanism_to_json(self.mechanism),
            "count": self.count,
            "tenant_id": self.tenant_id,
            "dataset_id": self.dataset_id,
            "subject_ids": sorted(self.subject_ids),
            "service": self.service,
            "request_id": self.request_id,
            "idempotency_key": self.idempotency_key,
        }
        if self.labels:  # absent when empty: events stored before labels keep their form
            data["labels"] = dict(self.labels)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Charge:
        return cls(
            mechanism=mechanism_from_json(data["mechanism"]),
            count=data["count"],
            tenant_id=data["tenant_id"],
            dataset_id=data["dataset_id"],
            subject_ids=tuple(data.get("subject_ids", ())),
            service=data.get("service", ""),
            request_id=data.get("request_id", ""),
            idempotency_key=data["idempotency_key"],
            labels=tuple(sorted(data.get("labels", {}).items())),
        )

    def same_charge(self, other: Charge) -> bool:
        """Equal up to the order of subjects and the request metadata (a retry may differ)."""
        mine, theirs = self.to_json(), other.to_json()
        for key in ("service", "request_id", "labels"):
            mine.pop(key, None), theirs.pop(key, None)
        return mine == theirs


@dataclass(frozen=True)
class BudgetStatus:
    """One budget's figures, committed or projected (after a candidate charge).

    ``epsilon_rdp`` uses Balle et al. 2020's RDP→DP conversion, and
    ``epsilon_rdp_classic`` the seed's Lemma 1 / Mironov 2017 Prop. 3 conversion;
    ``epsilon_tight`` is the PLD/PRV upper bound, ``None`` where it was not computed (see
    ``tight_state``); ``epsilon_enforced`` is what the limit is compared with: the least of
    the bounds computed (``enforced_by`` names it).
    """

    scope: Scope
    limit_epsilon: float
    delta: float
    epsilon_rdp: float
    epsilon_rdp_classic: float
    epsilon_tight: float | None
    epsilon_enforced: float
    version: int
    exceeds: bool = False
    event_count: int = 0
    """Events charged to the budget (projected statuses include the candidate charge)."""
    epsilon_reserved: float = 0.0
    """How much live reservations add to ``epsilon_enforced`` (queries only; else 0)."""
    subject_default: SubjectDefault | None = None
    """Dataset budgets: the limits of subject budgets created on first charge."""
    epsilon_basic: float = float("inf")
    """Basic composition (sum of pure ε); +∞ when an event is not pure ε-DP."""
    enforced_by: str = "rdp"
    """Which bound ``epsilon_enforced`` is: ``basic``, ``rdp``, ``pld`` or ``prv``."""
    tight_state: str = "not_computed"
    """``computed``, ``not_computed`` (the cheap bounds decided) or ``infeasible``."""

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.limit_epsilon - self.epsilon_enforced)


@dataclass(frozen=True)
class Receipt:
    """Proof of a committed spend. ``replayed`` is True when an idempotent retry hit it."""

    spend_id: str
    charge: Charge
    committed_at: float
    statuses: tuple[BudgetStatus, ...] = field(default=())
    replayed: bool = False


@dataclass(frozen=True)
class Reservation:
    """A live hold on budget for ``charge`` until ``expires_at`` (unix seconds).

    ``replayed``: a Reserve with the idempotency key of a live or committed reservation of
    the same charge returned that one as stored (nothing new held; its statuses are the
    budgets' as computed now); ``spend_id`` is then its spend's id if it was committed.
    """

    reservation_id: str
    charge: Charge
    expires_at: float
    statuses: tuple[BudgetStatus, ...] = field(default=())
    replayed: bool = False
    spend_id: str = ""
