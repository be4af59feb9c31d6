"""``veil.v1.Unlearning`` over gRPC: request → domain → core → response, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services._proto.veil.v1 import unlearning_pb2 as pb
from services._proto.veil.v1 import unlearning_pb2_grpc
from services.runtime.auth import require_tenant
from services.unlearning import converters as cv
from services.unlearning.core import Unlearning


class UnlearningServicer(unlearning_pb2_grpc.UnlearningServicer):
    def __init__(self, core: Unlearning) -> None:
        self.core = core
        self.page_default = core.settings.default_page_size
        self.page_cap = core.settings.max_page_size

    async def SubmitJob(self, request: pb.SubmitJobRequest, context) -> pb.Job:
        tenant = require_tenant(request.tenant_id)
        return cv.job_to_pb(await self.core.submit(tenant, cv.spec_from_pb(request)))

    async def GetJob(self, request: pb.GetJobRequest, context) -> pb.Job:
        return cv.job_to_pb(await self.core.get(require_tenant(""), request.job_id))

    async def ListJobs(self, request: pb.ListJobsRequest, context) -> pb.ListJobsResponse:
        tenant = require_tenant(request.tenant_id)
        state = cv.job_state_from_pb(request.state)
        filters = ["jobs", state, request.model_name]
        page = cv.page_from_pb(request.page, filters, self.page_default, self.page_cap)
        jobs, total = await self.core.list_jobs(tenant, state, request.model_name, page)
        return pb.ListJobsResponse(
            jobs=[cv.job_to_pb(j) for j in jobs],
            page=cv.page_to_pb(page, len(jobs), total, filters),
        )

    async def CancelJob(self, request: pb.CancelJobRequest, context) -> pb.Job:
        job = await self.core.cancel(require_tenant(""), request.job_id, request.reason)
        return cv.job_to_pb(job)

    async def WatchJob(self, request: pb.WatchJobRequest, context) -> AsyncIterator[pb.JobEvent]:
        async for job in self.core.watch(require_tenant(""), request.job_id):
            yield cv.event_to_pb(job)

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context
    ) -> pb.ListModelVersionsResponse:
        tenant = require_tenant(request.tenant_id)
        filters = ["versions", request.model_name]
        page = cv.page_from_pb(request.page, filters, self.page_default, self.page_cap)
        versions, total = await self.core.list_versions(tenant, request.model_name, page)
        return pb.ListModelVersionsResponse(
            versions=[cv.version_to_pb(v) for v in versions],
            page=cv.page_to_pb(page, len(versions), total, filters),
        )

    async def GetModelVersion(self, request: pb.GetModelVersionRequest, context) -> pb.ModelVersion:
        tenant = require_tenant(request.tenant_id)
        version = await self.core.get_version(tenant, request.ref.name, int(request.ref.version))
        return cv.version_to_pb(version)

    async def RollbackModel(self, request: pb.RollbackModelRequest, context) -> pb.ModelVersion:
        tenant = require_tenant(request.tenant_id)
        version = await self.core.rollback(
            tenant,
            request.target.name,
            int(request.target.version),
            request.reason,
            request.idempotency_key,
        )
        return cv.version_to_pb(version)
