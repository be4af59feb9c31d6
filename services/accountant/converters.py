"""Protobuf ↔ ledger domain, both directions, in one place.

Conventions of ``veil.v1`` applied here: an empty ``tenant_id`` means the caller's tenant
(resolved by the servicer before conversion), ``count = 0`` means 1, a zero
``page_size`` means 50 and larger values are clamped to 1000, and an unset optional
message is "not given".
"""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import common_pb2
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
    SubsampledGaussian,
)
from services.accountant.queries import EventRecord
from services.common.errors import InvalidArgument

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
    return Budget(scope_from_pb(msg.scope, tenant), msg.epsilon, msg.delta)


def mechanism_from_pb(event: pb.PrivacyEvent) -> Mechanism:
    kind = event.WhichOneof("mechanism")
    if kind == "gaussian":
        return Gaussian(event.gaussian.noise_multiplier)
    if kind == "subsampled_gaussian":
        m = event.subsampled_gaussian
        return SubsampledGaussian(m.noise_multiplier, m.sampling_rate, int(m.steps or 1))
    if kind == "laplace":
        return Laplace(event.laplace.scale, event.laplace.sensitivity or 1.0)
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


def charge_from_pb(msg: pb.Charge, tenant: str, *, key_required: bool = True) -> Charge:
    """A domain charge; ``key_required=False`` (dry runs) fills a placeholder key."""
    if not msg.HasField("event"):
        raise InvalidArgument("charge.event is required")
    if msg.event.count < 0:
        raise InvalidArgument("event.count must be >= 0 (0 means 1)")
    key = msg.idempotency_key
    if not key:
        if key_required:
            raise InvalidArgument("charge.idempotency_key is required")
        key = "dry-run"
    return Charge(
        mechanism=mechanism_from_pb(msg.event),
        tenant_id=tenant,
        dataset_id=msg.dataset_id,
        idempotency_key=key,
        subject_ids=tuple(msg.subject_ids),
        count=int(msg.event.count or 1),
        service=msg.service,
        request_id=msg.request_id,
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
    )


def status_to_pb(status: BudgetStatus, tight_name: str) -> pb.BudgetStatus:
    """``epsilon_spent_tight`` is NaN where the ledger did not compute it (it is costly)."""
    tight = status.epsilon_tight if status.epsilon_tight is not None else math.nan
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
    )


def cost_to_pb(epsilon: float, delta: float) -> common_pb2.PrivacyCost:
    """The charge's own ε at δ, by RDP with opacus' conversion."""
    return common_pb2.PrivacyCost(epsilon=epsilon, delta=delta, accountant="rdp")


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
    )


def event_to_pb(record: EventRecord, delta: float) -> pb.LedgerEvent:
    return pb.LedgerEvent(
        spend_id=record.spend_id,
        charge=charge_to_pb(record.charge),
        cost=cost_to_pb(record.cost_epsilon, delta),
        committed_at=timestamp(record.committed_at),
    )


def page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size < 0:
        raise InvalidArgument("page.page_size must be >= 0")
    return min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def lease_seconds(msg: pb.ReserveRequest) -> float | None:
    if not msg.HasField("lease"):
        return None
    seconds = msg.lease.ToNanoseconds() / 1e9
    if seconds <= 0:
        raise InvalidArgument("lease must be positive")
    return seconds


def optional_time(msg: pb.ListEventsRequest | pb.ExportAuditRequest, field: str) -> float | None:
    if not msg.HasField(field):
        return None
    return float(getattr(msg, field).ToNanoseconds()) / 1e9
