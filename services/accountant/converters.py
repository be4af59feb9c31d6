"""Protobuf ↔ ledger domain, both directions, in one place.

Conventions of ``veil.v1`` applied here: an empty ``tenant_id`` means the caller's tenant
(resolved by the servicer before conversion), an empty ``dataset_id`` charges the tenant
budget alone, an empty ``idempotency_key`` makes a spend non-idempotent (the server assigns
a unique key), ``count = 0`` means 1, a zero ``page_size`` means 50 and larger values are
clamped to 1000, and an unset optional message is "not given".
"""

from __future__ import annotations

import math
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import common_pb2
from services.accountant.accounting import Figures
from services.accountant.events import (
    Budget,
    BudgetStatus,
    Charge,
    Gaussian,
    Laplace,
    Mechanism,
    PureEpsilon,
    Receipt,
    Reservation,
    Scope,
    SubjectDefault,
    SubsampledGaussian,
)
from services.accountant.history import EventRecord
from services.accountant.policy import COMPUTED, INFEASIBLE, NOT_COMPUTED
from services.common.errors import InvalidArgument, VeilError

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000


def scope_from_pb(msg: pb.BudgetScope, tenant: str) -> Scope:
    if msg.subject_id and not msg.dataset_id:
        raise InvalidArgument("a subject scope needs a dataset_id")
    return Scope(tenant, msg.dataset_id or None, msg.subject_id or None)


def scope_to_pb(scope: Scope) -> pb.BudgetScope:
    return pb.BudgetScope(
        tenant_id=scope.tenant_id,
        dataset_id=scope.dataset_id or "",
        subject_id=scope.subject_id or "",
    )


def budget_from_pb(msg: pb.Budget, tenant: str) -> Budget:
    default = None
    if msg.HasField("subject_default"):
        default = SubjectDefault(msg.subject_default.epsilon, msg.subject_default.delta)
    return Budget(scope_from_pb(msg.scope, tenant), msg.epsilon, msg.delta, default)


def mechanism_from_pb(event: pb.PrivacyEvent) -> Mechanism:
    kind = event.WhichOneof("mechanism")
    if kind == "gaussian":
        return Gaussian(event.gaussian.noise_multiplier)
    if kind == "subsampled_gaussian":
        m = event.subsampled_gaussian
        return SubsampledGaussian(m.noise_multiplier, m.sampling_rate, int(m.steps or 1))
    if kind == "laplace":
        if event.laplace.sensitivity <= 0:  # the contract: > 0 (0 is never read as 1)
            raise InvalidArgument(
                "event.laplace.sensitivity must be > 0",
                details={"field": "charge.event.laplace.sensitivity"},
            )
        return Laplace(event.laplace.scale, event.laplace.sensitivity)
    if kind == "pure_epsilon":
        return PureEpsilon(event.pure_epsilon.epsilon)
    raise InvalidArgument(
        "event.mechanism must be one of gaussian, subsampled_gaussian, laplace, pure_epsilon"
    )


def mechanism_to_pb(mechanism: Mechanism, count: int) -> pb.PrivacyEvent:
    event = pb.PrivacyEvent(count=count)
    if isinstance(mechanism, Gaussian):
        event.gaussian.noise_multiplier = mechanism.noise_multiplier
    elif isinstance(mechanism, SubsampledGaussian):
        m = event.subsampled_gaussian
        m.noise_multiplier, m.sampling_rate = mechanism.noise_multiplier, mechanism.sampling_rate
        m.steps = mechanism.steps
    elif isinstance(mechanism, Laplace):
        event.laplace.scale, event.laplace.sensitivity = mechanism.scale, mechanism.sensitivity
    else:
        event.pure_epsilon.epsilon = mechanism.epsilon
    return event


def charge_from_pb(msg: pb.Charge, tenant: str, *, dry_run: bool = False) -> Charge:
    """A domain charge. Without an idempotency key a spend is not idempotent: it gets a
    unique server key (``auto:<uuid>``); a dry run (``Check``) gets a placeholder."""
    if not msg.HasField("event"):
        raise InvalidArgument("charge.event is required", details={"field": "charge.event"})
    if msg.event.count < 0:
        raise InvalidArgument(
            "event.count must be >= 0 (0 means 1)", details={"field": "charge.event.count"}
        )
    key = msg.idempotency_key or ("dry-run" if dry_run else f"auto:{uuid.uuid4().hex}")
    return Charge(
        mechanism=mechanism_from_pb(msg.event),
        tenant_id=tenant,
        dataset_id=msg.dataset_id,
        idempotency_key=key,
        subject_ids=tuple(msg.subject_ids),
        count=int(msg.event.count or 1),
        service=msg.service,
        request_id=msg.request_id,
        labels=tuple(sorted(msg.labels.items())),
    )


def batch_item_from_pb(msg: pb.Charge, tenant: str, index: int) -> Charge | VeilError:
    """One item of a ChargeBatch, or the error that refuses it alone (the batch names each
    item's key, so an item's own must be empty; its tenant must be the batch's)."""
    field = f"charges[{index}]"
    try:
        if msg.idempotency_key:
            raise InvalidArgument(
                "a batch item's idempotency_key must be empty (the batch key names it)",
                details={"field": f"{field}.idempotency_key"},
            )
        if msg.tenant_id and msg.tenant_id != tenant:
            raise InvalidArgument(
                "a batch item's tenant_id must be empty or the batch's",
                details={"field": f"{field}.tenant_id"},
            )
        return charge_from_pb(msg, tenant, dry_run=True)
    except VeilError as exc:
        return exc


def charge_error_to_pb(error: VeilError, code: int) -> pb.ChargeError:
    return pb.ChargeError(
        code=code, reason=error.reason, message=error.message, details=error.details
    )


def charge_to_pb(charge: Charge) -> pb.Charge:
    return pb.Charge(
        tenant_id=charge.tenant_id,
        dataset_id=charge.dataset_id,
        subject_ids=list(charge.subject_ids),
        event=mechanism_to_pb(charge.mechanism, charge.count),
        service=charge.service,
        request_id=charge.request_id,
        idempotency_key=charge.idempotency_key,
        labels=dict(charge.labels),
    )


TIGHT_STATES = {
    COMPUTED: pb.TIGHT_STATE_COMPUTED,
    NOT_COMPUTED: pb.TIGHT_STATE_NOT_COMPUTED,
    INFEASIBLE: pb.TIGHT_STATE_INFEASIBLE,
}


def status_to_pb(status: BudgetStatus, tight_name: str) -> pb.BudgetStatus:
    """Every figure, which one is enforced, and whether the tight one was computed; where it
    was not, ``epsilon_spent_tight`` holds the enforced figure (a valid bound), never NaN."""
    tight = status.epsilon_tight if status.epsilon_tight is not None else status.epsilon_enforced
    basic = status.epsilon_basic if math.isfinite(status.epsilon_basic) else 0.0
    return pb.BudgetStatus(
        scope=scope_to_pb(status.scope),
        epsilon_limit=status.limit_epsilon,
        delta=status.delta,
        epsilon_spent_rdp=status.epsilon_rdp,
        epsilon_spent_tight=tight,
        tight_accountant=tight_name,
        epsilon_remaining=status.remaining_epsilon,
        event_count=status.event_count,
        epsilon_reserved=status.epsilon_reserved,
        subject_default=_default_to_pb(status.subject_default),
        epsilon_spent=status.epsilon_enforced,
        epsilon_spent_by=status.enforced_by,
        tight_state=TIGHT_STATES[status.tight_state],
        epsilon_spent_basic=basic,
    )


def _default_to_pb(default: SubjectDefault | None) -> pb.SubjectDefault | None:
    if default is None:
        return None
    return pb.SubjectDefault(epsilon=default.epsilon, delta=default.delta)


def cost_to_pb(cost: Figures) -> common_pb2.PrivacyCost:
    """A charge's own ε at δ: the least of its cheap bounds, named."""
    return common_pb2.PrivacyCost(epsilon=cost.epsilon, delta=cost.delta, accountant=cost.enforced)


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def receipt_to_pb(receipt: Receipt, cost: common_pb2.PrivacyCost, tight: str) -> pb.Receipt:
    return pb.Receipt(
        spend_id=receipt.spend_id,
        replayed=receipt.replayed,
        after=[status_to_pb(s, tight) for s in receipt.statuses],
        cost=cost,
        committed_at=timestamp(receipt.committed_at),
    )


def reservation_to_pb(
    reservation: Reservation, cost: common_pb2.PrivacyCost, tight: str
) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=reservation.reservation_id,
        expires_at=timestamp(reservation.expires_at),
        projected=[status_to_pb(s, tight) for s in reservation.statuses],
        cost=cost,
        replayed=reservation.replayed,
        spend_id=reservation.spend_id,
    )


def event_to_pb(record: EventRecord, delta: float) -> pb.LedgerEvent:
    return pb.LedgerEvent(
        spend_id=record.spend_id,
        charge=charge_to_pb(record.charge),
        cost=cost_to_pb(record.cost),
        committed_at=timestamp(record.committed_at),
    )


def page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size < 0:
        raise InvalidArgument("page.page_size must be >= 0")
    return min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def lease_seconds(msg: pb.ReserveRequest) -> float | None:
    """The asked lease; None (unset or 0) = the server default. The ledger clamps it to its
    maximum, as the contract says."""
    if not msg.HasField("lease"):
        return None
    seconds = msg.lease.ToNanoseconds() / 1e9
    if seconds < 0:
        raise InvalidArgument("lease must be >= 0", details={"field": "lease"})
    return seconds or None


def optional_time(msg: pb.ListEventsRequest | pb.ExportAuditRequest, field: str) -> float | None:
    if not msg.HasField(field):
        return None
    return float(getattr(msg, field).ToNanoseconds()) / 1e9
