"""Caps on what one request may ask of the ledger, checked before anything is read or written.

Every id and key is measured in UTF-8 bytes (what the database stores) and may not hold a
NUL byte (PostgreSQL refuses it; SQLite would store it and break exports). A charge's size
is capped (subjects, labels, compositions) so that one request can neither outgrow the
database's statement limits nor make the accountant's math unbounded. Each refusal is
INVALID_ARGUMENT naming the field and the cap (``details["field"]`` becomes a
``google.rpc.BadRequest`` field violation on the wire). The caps are settings
(``VEIL_ACCOUNTANT_MAX_*``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.accountant.events import Budget, Charge, Scope, SubsampledGaussian
from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class Limits:
    """The caps; defaults are what the schema and the tests were sized for."""

    max_id_bytes: int = 255
    """Tenant, dataset and subject ids, reservation ids, service and request ids."""
    max_key_bytes: int = 255
    """Idempotency keys."""
    max_subjects: int = 1000
    """Subjects one charge may touch (each is a budget row locked in one transaction)."""
    max_count: int = 1_000_000_000
    """A charge's self-composition count."""
    max_steps: int = 1_000_000_000
    """Steps of one subsampled-Gaussian event."""
    max_compositions: int = 1_000_000_000_000
    """count × steps of one charge: how many elementary mechanisms it composes."""
    max_labels: int = 32
    """Labels on one charge."""
    max_label_bytes: int = 256
    """Each label key and value."""
    max_batch: int = 1000
    """Charges in one ChargeBatch."""


def check_text(field: str, value: str, max_bytes: int, *, required: bool = False) -> None:
    """``value`` fits ``max_bytes`` of UTF-8 and holds no NUL; non-empty if ``required``."""
    if required and not value:
        raise InvalidArgument(f"{field} is required", details={"field": field})
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes; the limit is {max_bytes}",
            details={"field": field, "limit": max_bytes},
        )
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain a NUL byte", details={"field": field})


def check_scope(scope: Scope, limits: Limits, field: str = "scope") -> None:
    check_text(f"{field}.tenant_id", scope.tenant_id, limits.max_id_bytes)
    check_text(f"{field}.dataset_id", scope.dataset_id or "", limits.max_id_bytes)
    check_text(f"{field}.subject_id", scope.subject_id or "", limits.max_id_bytes)


def check_delta(budget: Budget, max_delta: float) -> None:
    """A budget's δ, and its subject default's, are at most the server's ``max_delta``: δ is
    the probability that the ε bound fails, so a larger one is a weaker guarantee than the
    deployment allows. The message names the value given and the maximum."""
    given = [("budget.delta", budget.delta)]
    if budget.subject_default is not None:
        given.append(("budget.subject_default.delta", budget.subject_default.delta))
    for field, delta in given:
        if delta > max_delta:
            raise InvalidArgument(
                f"{field} is {delta!r}; the server maximum is {max_delta!r}",
                details={"field": field, "limit": max_delta},
            )


def _cap(field: str, value: int, cap: int) -> None:
    if value > cap:
        raise InvalidArgument(
            f"{field} is {value}; the limit is {cap}", details={"field": field, "limit": cap}
        )


def check_charge(charge: Charge, limits: Limits, field: str = "charge") -> None:
    """Every cap of one charge (its mechanism's own ranges are checked by the events)."""
    check_text(f"{field}.tenant_id", charge.tenant_id, limits.max_id_bytes)
    check_text(f"{field}.dataset_id", charge.dataset_id, limits.max_id_bytes)
    check_text(f"{field}.idempotency_key", charge.idempotency_key, limits.max_key_bytes)
    check_text(f"{field}.service", charge.service, limits.max_id_bytes)
    check_text(f"{field}.request_id", charge.request_id, limits.max_id_bytes)
    _cap(f"{field}.subject_ids", len(charge.subject_ids), limits.max_subjects)
    for sid in charge.subject_ids:
        check_text(f"{field}.subject_ids", sid, limits.max_id_bytes)
    _cap(f"{field}.event.count", charge.count, limits.max_count)
    steps = charge.mechanism.steps if isinstance(charge.mechanism, SubsampledGaussian) else 1
    _cap(f"{field}.event.subsampled_gaussian.steps", steps, limits.max_steps)
    _cap(f"{field}.event (count × steps)", charge.count * steps, limits.max_compositions)
    check_labels(dict(charge.labels), limits, f"{field}.labels")


def check_labels(labels: Mapping[str, str], limits: Limits, field: str) -> None:
    _cap(field, len(labels), limits.max_labels)
    for key, value in labels.items():
        check_text(field, key, limits.max_label_bytes, required=True)
        check_text(field, value, limits.max_label_bytes)
