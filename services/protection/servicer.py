"""``veil.v1.Protection`` over gRPC: request → domain → core → response, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from services._proto.veil.v1 import common_pb2, protection_pb2_grpc
from services._proto.veil.v1 import protection_pb2 as pb
from services.common.errors import VeilError
from services.protection import converters as cv
from services.protection.core import Protection
from services.runtime.auth import require_tenant
from services.runtime.errors import status_code


def _budget(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else float(remaining)


class ProtectionServicer(protection_pb2_grpc.ProtectionServicer):
    def __init__(self, core: Protection) -> None:
        self.core = core

    async def Protect(self, request: pb.ProtectRequest, context) -> pb.ProtectResponse:
        tenant = require_tenant(request.tenant_id)
        job = replace(cv.job_from_pb(request, _budget(context)), tenant=tenant)
        return cv.protected_to_pb(await self.core.protect(job))

    async def ProtectBatch(
        self, request_iterator: AsyncIterator[pb.ProtectRequest], context
    ) -> AsyncIterator[pb.ProtectResponse]:
        """At most ``batch_in_flight`` items at once; answers in completion order, each with
        its ``request_id``; a failed item answers its own error and the stream goes on."""
        require_tenant("")
        done: asyncio.Queue[pb.ProtectResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.core.settings.batch_in_flight)
        tasks: set[asyncio.Task[None]] = set()

        async def one(request: pb.ProtectRequest) -> None:
            try:
                tenant = require_tenant(request.tenant_id)
                job = replace(cv.job_from_pb(request, _budget(context)), tenant=tenant)
                out = await self.core.protect(job)
                await done.put(cv.protected_to_pb(out))
            except VeilError as exc:
                error = common_pb2.ItemError(
                    code=status_code(exc).value[0],
                    message=exc.message,
                    reason=exc.reason,
                    metadata=exc.details,
                )
                await done.put(pb.ProtectResponse(request_id=request.request_id, error=error))
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*list(tasks))
            finally:
                await done.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await done.get()) is not None:
                yield item
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def Evaluate(self, request: pb.EvaluateRequest, context) -> pb.EvaluateResponse:
        out = await self.core.evaluate(
            cv.pairs_from_pb(request),
            request.authorized_model.name,
            int(request.authorized_model.version),
            [(m.name, int(m.version)) for m in request.unauthorized_models],
            tenant=require_tenant(request.tenant_id),
        )
        return cv.evaluation_to_pb(out)
