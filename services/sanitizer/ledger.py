"""The sanitizer's side of the accountant: charges over the accountant's gRPC API only.

:class:`Ledger` is what the core sees (no grpc); :class:`AccountantLedger` implements it
with the generated client. Every release is one Gaussian event whose noise multiplier is
the release's own (a chosen preview candidate: the composition of all k candidates, which
for Gaussian mechanisms is exactly one Gaussian with μ = √(Σ μ_i²)). The accountant's
errors keep their status: a refused charge is RESOURCE_EXHAUSTED with the remaining budget
in its details; a dataset without a budget is FAILED_PRECONDITION; an accountant that
cannot be reached, or is too slow, is UNAVAILABLE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf import duration_pb2

from services._proto.veil.v1 import accountant_pb2 as apb
from services.common.errors import FailedPrecondition, NotFound, VeilError
from services.runtime.client import VeilClient
from services.runtime.errors import from_rpc_error

WHO = "the accountant"


@dataclass(frozen=True)
class ChargeSpec:
    """One release's charge: a Gaussian event for one subject of a dataset."""

    tenant: str
    dataset: str
    subject: str
    noise_multiplier: float
    key: str
    """Idempotency key at the accountant (scoped to the tenant there)."""
    request_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Spent:
    spend_id: str
    replayed: bool


class Ledger(Protocol):
    """Reserve → Commit (or Release), and the batch charge; errors are VeilErrors."""

    async def reserve(self, charge: ChargeSpec, lease_s: float) -> str: ...

    async def commit(self, tenant: str, reservation_id: str) -> Spent: ...

    async def release(self, tenant: str, reservation_id: str, reason: str) -> None: ...

    async def charge_batch(
        self, tenant: str, charges: list[ChargeSpec], key: str
    ) -> list[Spent | VeilError]: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def _charge_pb(spec: ChargeSpec, *, keyed: bool = True) -> apb.Charge:
    return apb.Charge(
        tenant_id=spec.tenant,
        dataset_id=spec.dataset,
        subject_ids=[spec.subject],
        event=apb.PrivacyEvent(
            gaussian=apb.GaussianMechanism(noise_multiplier=spec.noise_multiplier), count=1
        ),
        service="sanitizer",
        request_id=spec.request_id,
        idempotency_key=spec.key if keyed else "",
        labels=spec.labels,
    )


def _refined(error: VeilError) -> VeilError:
    """A missing budget is the caller's set-up, not a missing resource of this API."""
    if isinstance(error, NotFound):
        return FailedPrecondition(
            f"{error.message} (create the dataset's budget, with a subject default, with "
            "Accountant.PutBudget)",
            details=error.details,
        )
    return error


class AccountantLedger:
    """:class:`Ledger` over the accountant's gRPC API, with a delegate token."""

    def __init__(
        self, target: str, token: str, timeout_s: float, tls_ca: str | None = None
    ) -> None:
        self._target, self._token, self._tls_ca = target, token, tls_ca
        self._client_: VeilClient | None = None
        self._timeout = timeout_s

    @property
    def _client(self) -> VeilClient:
        """Created on first use, inside the server's event loop (an aio channel is bound to
        the loop it was made in)."""
        if self._client_ is None:
            ca = Path(self._tls_ca) if self._tls_ca else None
            self._client_ = VeilClient(self._target, self._token or None, root_certificates=ca)
        return self._client_

    async def _call(self, method: str, request: object) -> object:
        stub = self._client.accountant
        try:
            return await getattr(stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _refined(from_rpc_error(exc, WHO)) from None

    async def reserve(self, charge: ChargeSpec, lease_s: float) -> str:
        lease = duration_pb2.Duration()
        lease.FromMilliseconds(int(lease_s * 1000))
        reservation = await self._call(
            "Reserve", apb.ReserveRequest(charge=_charge_pb(charge), lease=lease)
        )
        return str(reservation.reservation_id)  # type: ignore[attr-defined]

    async def commit(self, tenant: str, reservation_id: str) -> Spent:
        request = apb.CommitRequest(reservation_id=reservation_id, tenant_id=tenant)
        receipt = await self._call("Commit", request)
        return Spent(receipt.spend_id, receipt.replayed)  # type: ignore[attr-defined]

    async def release(self, tenant: str, reservation_id: str, reason: str) -> None:
        request = apb.ReleaseReservationRequest(
            reservation_id=reservation_id, reason=reason, tenant_id=tenant
        )
        await self._call("Release", request)

    async def charge_batch(
        self, tenant: str, charges: list[ChargeSpec], key: str
    ) -> list[Spent | VeilError]:
        request = apb.ChargeBatchRequest(
            tenant_id=tenant,
            charges=[_charge_pb(c, keyed=False) for c in charges],
            idempotency_key=key,
        )
        response = await self._call("ChargeBatch", request)
        out: list[Spent | VeilError] = []
        for result in response.results:  # type: ignore[attr-defined]
            if result.HasField("receipt"):
                out.append(Spent(result.receipt.spend_id, result.receipt.replayed))
            else:
                out.append(_refined(_item_error(result.error)))
        return out

    async def ready(self) -> bool:
        try:
            return await self._client.check_health() == 1  # SERVING
        except grpc.RpcError:
            return False

    async def close(self) -> None:
        client, self._client_ = self._client_, None
        if client is not None:
            await client.close()


def _item_error(error: apb.ChargeError) -> VeilError:
    from services.common import errors as e

    details = dict(error.details)
    message = f"{WHO}: {error.message}"
    if error.reason == "BUDGET_EXHAUSTED":
        return e.BudgetExhausted(message, details=details)
    kinds: dict[int, type[VeilError]] = {
        3: e.InvalidArgument,
        5: e.NotFound,
        6: e.AlreadyExists,
        8: e.ResourceExhausted,
        9: e.FailedPrecondition,
        10: e.Aborted,
    }
    return kinds.get(error.code, e.Unavailable)(message, details=details)
