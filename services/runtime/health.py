"""``grpc.health.v1.Health`` with all three methods: grpcio-health-checking's asyncio servicer
(``Check``, ``Watch``) plus ``List``, which its proto has but its servicer leaves
unimplemented.

The server reports three kinds of names (see :mod:`services.runtime.server`): ``liveness``
(the process runs), and ``readiness``, ``""`` and each mounted service (it can do its work).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2

LIVENESS = "liveness"
"""Health service name that is SERVING while the process runs (Kubernetes liveness probe)."""
READINESS = "readiness"
"""Health service name that is SERVING once models and dependencies are ready."""
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health.aio.HealthServicer):
    """The reference asyncio servicer, with ``List``."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """A snapshot of every reported name and its status (a handful per server)."""
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )
