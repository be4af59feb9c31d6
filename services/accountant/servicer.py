"""``veil.v1.Accountant`` over gRPC: request → domain → ledger → response, nothing else.

The ledger is synchronous (SQLAlchemy) and its accounting is CPU work; every call runs on
the server's bounded worker pool (:class:`services.runtime.workers.WorkerPool`) so the event
loop keeps serving health checks and other RPCs while a spend waits on a database lock. A
spend is queued for the ledger's group commit instead (its own writer thread and bounded
queue), and awaited there.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any, TypeVar

import grpc

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import accountant_pb2_grpc, common_pb2
from services.accountant import converters as cv
from services.accountant.events import BudgetStatus, Charge, Receipt, Scope
from services.accountant.ledger import Ledger
from services.accountant.policy import charge_cost
from services.common.errors import VeilError
from services.runtime.auth import require_tenant
from services.runtime.errors import status_code
from services.runtime.workers import WorkerPool

AUDIT_CHUNK_BYTES = 256 * 1024
T = TypeVar("T")


class AccountantServicer(accountant_pb2_grpc.AccountantServicer):
    def __init__(self, ledger: Ledger, workers: WorkerPool) -> None:
        self.ledger = ledger
        self.tight = ledger.policy.tight
        self._workers = workers

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await self._workers.run(functools.partial(fn, *args, **kwargs))

    def _status(self, status: BudgetStatus) -> pb.BudgetStatus:
        return cv.status_to_pb(status, self.tight)

    def _cost(self, charge: Charge, statuses: tuple[BudgetStatus, ...]) -> common_pb2.PrivacyCost:
        delta = min((s.delta for s in statuses), default=0.0)
        if delta <= 0:  # a replayed receipt carries no statuses: quote at the tenant's δ
            delta = self.ledger.budgets.remaining(charge.tenant_id, Scope(charge.tenant_id)).delta
        return cv.cost_to_pb(charge_cost(charge, delta))

    async def PutBudget(self, request: pb.PutBudgetRequest, context) -> pb.BudgetStatus:
        tenant = require_tenant(request.budget.scope.tenant_id)
        budget = cv.budget_from_pb(request.budget, tenant)
        return self._status(await self._run(self.ledger.budgets.put, tenant, budget))

    async def GetBudget(self, request: pb.GetBudgetRequest, context) -> pb.BudgetStatus:
        tenant = require_tenant(request.scope.tenant_id)
        scope = cv.scope_from_pb(request.scope, tenant)
        return self._status(await self._run(self.ledger.budgets.remaining, tenant, scope))

    async def ListBudgets(self, request: pb.ListBudgetsRequest, context):
        tenant = require_tenant(request.tenant_id)
        page = await self._run(
            self.ledger.budgets.page,
            tenant,
            tenant,
            dataset_id=request.dataset_id or None,
            page_size=cv.page_size(request.page),
            page_token=request.page.page_token,
        )
        return pb.ListBudgetsResponse(
            budgets=[self._status(s) for s in page.budgets],
            page={"next_page_token": page.next_page_token, "total_size": -1},
        )

    async def Check(self, request: pb.CheckRequest, context) -> pb.CheckResponse:
        tenant = require_tenant(request.charge.tenant_id)
        charge = cv.charge_from_pb(request.charge, tenant, dry_run=True)
        statuses = await self._run(self.ledger.check, tenant, charge)
        exceeded = [s for s in statuses if s.exceeds]
        return pb.CheckResponse(
            allowed=not exceeded,
            projected=[self._status(s) for s in statuses],
            reason="; ".join(f"exceeds the {s.scope.kind} budget" for s in exceeded),
            exceeded=[cv.scope_to_pb(s.scope) for s in exceeded],
            cost=await self._run(self._cost, charge, statuses),
        )

    async def Spend(self, request: pb.SpendRequest, context) -> pb.Receipt:
        tenant = require_tenant(request.charge.tenant_id)
        charge = cv.charge_from_pb(request.charge, tenant)
        # Queued for the ledger's group commit: awaited without holding a worker thread.
        receipt = await asyncio.wrap_future(self.ledger.start_spend(tenant, charge))
        if receipt.statuses:  # the charge's own cost: memoised, no database read
            cost = self._cost(receipt.charge, receipt.statuses)
        else:
            cost = await self._run(self._cost, receipt.charge, receipt.statuses)
        return cv.receipt_to_pb(receipt, cost, self.tight)

    async def ChargeBatch(self, request: pb.ChargeBatchRequest, context):
        tenant = require_tenant(request.tenant_id)
        items = [cv.batch_item_from_pb(c, tenant, i) for i, c in enumerate(request.charges)]
        results = await self._run(self.ledger.charge_batch, tenant, request.idempotency_key, items)
        return await self._run(self._batch_response, results)

    def _batch_response(self, results: list[Receipt | VeilError]) -> pb.ChargeBatchResponse:
        out = pb.ChargeBatchResponse()
        for i, result in enumerate(results):
            item = out.results.add(index=i)
            if isinstance(result, Receipt):
                item.receipt.CopyFrom(
                    cv.receipt_to_pb(result, self._cost(result.charge, result.statuses), self.tight)
                )
                out.accepted += 1
            else:
                item.error.CopyFrom(cv.charge_error_to_pb(result, status_code(result).value[0]))
                out.refused += 1
        return out

    async def Reserve(self, request: pb.ReserveRequest, context) -> pb.Reservation:
        tenant = require_tenant(request.charge.tenant_id)
        charge = cv.charge_from_pb(request.charge, tenant)
        lease = cv.lease_seconds(request)
        reservation = await self._run(self.ledger.reservations.reserve, tenant, charge, lease)
        cost = await self._run(self._cost, charge, reservation.statuses)
        return cv.reservation_to_pb(reservation, cost, self.tight)

    async def Commit(self, request: pb.CommitRequest, context) -> pb.Receipt:
        tenant = require_tenant(request.tenant_id)
        receipt = await self._run(self.ledger.reservations.commit, tenant, request.reservation_id)
        cost = await self._run(self._cost, receipt.charge, receipt.statuses)
        out = cv.receipt_to_pb(receipt, cost, self.tight)
        out.reservation_id = request.reservation_id
        return out

    async def Release(self, request: pb.ReleaseReservationRequest, context):
        tenant = require_tenant(request.tenant_id)
        released = await self._run(self.ledger.reservations.release, tenant, request.reservation_id)
        return pb.ReleaseReservationResponse(
            reservation_id=request.reservation_id, released=released
        )

    async def ListEvents(self, request: pb.ListEventsRequest, context):
        tenant = require_tenant(request.scope.tenant_id)
        page = await self._run(
            self.ledger.history,
            tenant,
            cv.scope_from_pb(request.scope, tenant),
            page_size=cv.page_size(request.page),
            page_token=request.page.page_token,
            newest_first=False,  # the contract: oldest first
            since=cv.optional_time(request, "since"),
            until=cv.optional_time(request, "until"),
        )
        return pb.ListEventsResponse(
            events=[cv.event_to_pb(e, page.delta) for e in page.events],
            page={"next_page_token": page.next_page_token, "total_size": -1},
        )

    async def ExportAudit(
        self, request: pb.ExportAuditRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AuditChunk]:
        tenant = require_tenant(request.tenant_id)
        since = cv.optional_time(request, "since")
        chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
        stop = threading.Event()
        worker = threading.Thread(
            target=_produce, args=(self._audit_chunks(tenant, since), chunks, stop), daemon=True
        )
        worker.start()
        try:
            while (item := await asyncio.to_thread(chunks.get)) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield pb.AuditChunk(jsonl=item)
        finally:
            stop.set()

    def _audit_chunks(self, tenant: str, since: float | None) -> Generator[bytes, None, None]:
        """JSON lines grouped into chunks that never split a line."""
        buffer: list[bytes] = []
        size = 0
        for line in self.ledger.audit.export(tenant, since):
            data = line.encode() + b"\n"
            if size + len(data) > AUDIT_CHUNK_BYTES and buffer:
                yield b"".join(buffer)
                buffer, size = [], 0
            buffer.append(data)
            size += len(data)
        if buffer:
            yield b"".join(buffer)


def _produce(
    source: Generator[bytes, None, None],
    out: queue.Queue[bytes | BaseException | None],
    stop: threading.Event,
) -> None:
    """Run ``source`` on one thread (it owns a DB connection); stop when the RPC ends."""
    try:
        for chunk in source:
            while not stop.is_set():
                try:
                    out.put(chunk, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(None)
    except BaseException as exc:  # handed to the RPC, which maps it to a status
        out.put(exc)
    finally:
        source.close()  # ends the read transaction now, not at garbage collection
