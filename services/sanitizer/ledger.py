"""The sanitizer's side of the accountant: charges over the accountant's gRPC API only.

:class:`services.sanitizer.ports.Ledger` is what the core sees (no grpc);
:class:`AccountantLedger` is its adapter over the generated client, which
:mod:`services.sanitizer.app` wires in (the core never imports this module). The
accountant's errors keep their status: a refused charge is RESOURCE_EXHAUSTED with the
remaining budget in its details; a dataset without a budget is FAILED_PRECONDITION; an
accountant that cannot be reached, or is too slow, is UNAVAILABLE.

Each call carries the sanitizer's request id (``x-request-id``, and the charge's
``request_id`` kept with the event) and, with tracing on, the trace
(:class:`~services.runtime.client.VeilClient` adds both): the accountant's access line for
it reads ``tenant=<the caller's tenant> via=<this token's tenant>`` with the same id.
"""

from __future__ import annotations

from dataclasses import replace

import grpc
from google.protobuf import duration_pb2

from services._proto.veil.v1 import accountant_pb2 as apb
from services.common.errors import FailedPrecondition, NotFound, VeilError
from services.runtime.client import LazyClient
from services.runtime.errors import from_rpc_error
from services.runtime.logging import current_request
from services.sanitizer.ports import ChargeSpec, Held, LedgerCost, Spent

WHO = "the accountant"


def _charge_pb(spec: ChargeSpec) -> apb.Charge:
    request = current_request()
    return apb.Charge(
        tenant_id=spec.tenant,
        dataset_id=spec.dataset,
        subject_ids=[spec.subject],
        event=apb.PrivacyEvent(
            gaussian=apb.GaussianMechanism(noise_multiplier=spec.noise_multiplier), count=1
        ),
        service="sanitizer",
        request_id=spec.request_id or (request.request_id if request else ""),
        idempotency_key=spec.key,
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
    """:class:`~services.sanitizer.ports.Ledger` over the accountant's gRPC API, with a
    delegate token."""

    def __init__(
        self, target: str, token: str, timeout_s: float, tls_ca: str | None = None
    ) -> None:
        self._client = LazyClient(target, token, tls_ca)
        self._timeout = timeout_s

    async def _call(self, method: str, request: object) -> object:
        stub = self._client.get().accountant
        try:
            return await getattr(stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise _refined(from_rpc_error(exc, WHO)) from None

    async def reserve(self, charge: ChargeSpec, lease_s: float) -> Held:
        lease = duration_pb2.Duration()
        lease.FromMilliseconds(int(lease_s * 1000))
        held: apb.Reservation = await self._call(  # type: ignore[assignment]
            "Reserve", apb.ReserveRequest(charge=_charge_pb(charge), lease=lease)
        )
        return Held(
            reservation_id=held.reservation_id,
            delta=min((b.delta for b in held.projected), default=held.cost.delta),
            replayed=held.replayed,
            spend_id=held.spend_id,
        )

    async def commit(self, tenant: str, reservation_id: str) -> Spent:
        request = apb.CommitRequest(reservation_id=reservation_id, tenant_id=tenant)
        receipt: apb.Receipt = await self._call("Commit", request)  # type: ignore[assignment]
        cost = LedgerCost(receipt.cost.epsilon, receipt.cost.delta, receipt.cost.accountant)
        return Spent(receipt.spend_id, receipt.replayed, cost)

    async def release(self, tenant: str, reservation_id: str, reason: str) -> None:
        request = apb.ReleaseReservationRequest(
            reservation_id=reservation_id, reason=reason, tenant_id=tenant
        )
        await self._call("Release", request)

    async def delta(self, charge: ChargeSpec) -> float:
        # A negligible charge on the same budgets: the cheap bounds decide it at once (a
        # charge far over the limit would make the accountant compute its tight figure).
        probe = replace(charge, noise_multiplier=1e6, key="")
        check: apb.CheckResponse = await self._call(  # type: ignore[assignment]
            "Check", apb.CheckRequest(charge=_charge_pb(probe))
        )
        return min((b.delta for b in check.projected), default=check.cost.delta)

    async def ready(self) -> bool:
        return await self._client.ready()

    async def close(self) -> None:
        await self._client.close()
