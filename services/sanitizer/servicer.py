"""``veil.v1.Sanitizer`` over gRPC: request → domain → core → response, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services._proto.veil.v1 import common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.errors import InvalidArgument, VeilError
from services.runtime.auth import current_principal, require_tenant
from services.runtime.errors import status_code
from services.sanitizer import converters as cv
from services.sanitizer.core import BatchItem, Caller, Sanitizer

MODEL_NOTES = (
    "A photo goes through: face detection (OpenCV's bundled Haar cascade) unless the request "
    "names the face or the whole image; a square crop around the face (with a margin) resized "
    "to {res}x{res}; the mechanism at that resolution; the sanitized crop resized back and "
    "pasted into the photo with a feathered seam. The output keeps the photo's size; the face "
    "itself carries only {res}x{res} worth of detail. The default model is trained on "
    "procedural faces, not real photographs: on a real face it edits the attributes but "
    "does not keep the person's likeness (see the README)."
)


def _caller(tenant_id: str) -> Caller:
    tenant = require_tenant(tenant_id)
    return Caller(tenant, current_principal().subject)


class SanitizerServicer(sanitizer_pb2_grpc.SanitizerServicer):
    def __init__(self, core: Sanitizer) -> None:
        self.core = core
        self.format = core.pipeline.output_format

    async def ListAttributes(self, request, context) -> pb.ListAttributesResponse:
        space, settings = self.core.space, self.core.settings
        model = await self.core.describe(_caller("").tenant)
        return pb.ListAttributesResponse(
            attributes=[
                pb.AttributeInfo(
                    name=name,
                    description=space.descriptions.get(name, name),
                    clip_bound=float(space.clip_bounds[i]),
                )
                for i, name in enumerate(space.names)
            ],
            model=pb.SanitizerModel(
                name=model.name,
                resolution=model.resolution,
                training_data=model.training_data,
                notes=MODEL_NOTES.format(res=model.resolution),
                version=model.version,
                lineage=model.lineage,
                probes=model.probes,
                probes_lineage=model.probes_lineage,
                current=model.current,
            ),
            max_strengths=settings.max_strengths,
            default_complement=cv.COMPLEMENT_OF[settings.default_complement],
            default_ddim_steps=settings.default_ddim_steps,
        )

    async def CreatePreview(self, request: pb.CreatePreviewRequest, context):
        caller = _caller(request.tenant_id)
        strengths = [cv.epsilon_from_pb(e, "strengths") for e in request.strengths]
        seed = request.seed if request.HasField("seed") else None
        preview = await self.core.create_preview(
            caller, cv.request_from_pb(request), strengths, seed
        )
        return cv.preview_to_pb(preview, self.format)

    async def Release(self, request: pb.ReleaseRequest, context) -> pb.ReleaseResponse:
        caller = _caller("")
        choice = request.WhichOneof("choice")
        if choice is None:
            raise InvalidArgument("set epsilon or candidate_index", details={"field": "choice"})
        released = await self.core.release(
            caller,
            request.session_id,
            epsilon=cv.epsilon_from_pb(request.epsilon, "epsilon") if choice == "epsilon" else None,
            candidate=request.candidate_index if choice == "candidate_index" else None,
            key=request.idempotency_key,
        )
        return cv.released_to_pb(released, self.format)

    async def CancelPreview(self, request: pb.CancelPreviewRequest, context):
        await self.core.cancel_preview(_caller(""), request.session_id)
        return pb.CancelPreviewResponse()

    async def Sanitize(self, request: pb.SanitizeRequest, context) -> pb.ReleaseResponse:
        caller = _caller(request.tenant_id)
        epsilon = cv.epsilon_from_pb(request.epsilon, "epsilon")
        released = await self.core.sanitize(
            caller, cv.request_from_pb(request), epsilon, request.idempotency_key
        )
        return cv.released_to_pb(released, self.format)

    async def SanitizeBatch(
        self, request_iterator: AsyncIterator[pb.SanitizeBatchRequest], context
    ) -> AsyncIterator[pb.SanitizeBatchResponse]:
        """Items are read ahead into a bounded queue (``batch_in_flight``), processed in
        chunks of ``batch_chunk``, answered in completion order with running counts."""
        caller = _caller("")
        settings = self.core.settings
        queue: asyncio.Queue[BatchItem | tuple[str, VeilError] | None] = asyncio.Queue(
            settings.batch_in_flight
        )

        async def read() -> None:
            seen: set[str] = set()
            try:
                async for item in request_iterator:
                    try:
                        if not item.item_id or item.item_id in seen:
                            raise InvalidArgument(
                                "item_id must be set and unique within the stream",
                                details={"field": "item_id"},
                            )
                        seen.add(item.item_id)
                        require_tenant(item.request.tenant_id)
                        await queue.put(cv.item_from_pb(item))
                    except VeilError as exc:
                        await queue.put((item.item_id, exc))
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        done = failed = 0
        try:
            finished = False
            while not finished:
                chunk: list[BatchItem] = []
                errors: list[tuple[str, VeilError]] = []
                first = await queue.get()
                pending = [first]
                while len(pending) < settings.batch_chunk and not queue.empty():
                    pending.append(queue.get_nowait())
                for entry in pending:
                    if entry is None:
                        finished = True
                    elif isinstance(entry, BatchItem):
                        chunk.append(entry)
                    else:
                        errors.append(entry)
                answers: list[tuple[str, object]] = list(errors)
                if chunk:
                    results = await self.core.sanitize_chunk(caller, chunk)
                    answers += [(item.item_id, r) for item, r in zip(chunk, results, strict=True)]
                for item_id, result in answers:
                    done += 1
                    if isinstance(result, VeilError):
                        failed += 1
                        code = status_code(result).value[0]
                        yield pb.SanitizeBatchResponse(
                            item_id=item_id,
                            error=common_pb2.ItemError(
                                code=code,
                                message=result.message,
                                reason=result.reason,
                                metadata=result.details,
                            ),
                            done=done,
                            failed=failed,
                        )
                    else:
                        yield pb.SanitizeBatchResponse(
                            item_id=item_id,
                            result=cv.released_to_pb(result, self.format),  # type: ignore[arg-type]
                            done=done,
                            failed=failed,
                        )
            await reader
        finally:
            reader.cancel()
