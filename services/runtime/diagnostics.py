"""``veil.v1.Diagnostics``, mounted on every server: lets an operator check a token
(``WhoAmI``) and the service's image limits (``InspectImage``) without side effects.

``InspectImage`` decodes on the server's worker pool: a large PNG takes a CPU-bound fraction
of a second, which on the event loop would stall every other RPC, health checks included."""

from __future__ import annotations

import grpc

from services import __version__
from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.common.imaging import ImageLimits, decode_image
from services.runtime.auth import current_principal, require_tenant
from services.runtime.server import Mount
from services.runtime.workers import run_in_worker


class DiagnosticsServicer(diagnostics_pb2_grpc.DiagnosticsServicer):
    def __init__(self, service: str, limits: ImageLimits) -> None:
        self._service = service
        self._limits = limits

    async def WhoAmI(
        self, request: diagnostics_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> diagnostics_pb2.WhoAmIResponse:
        tenant = require_tenant(request.tenant_id)
        return diagnostics_pb2.WhoAmIResponse(
            tenant_id=tenant,
            scopes=sorted(current_principal().scopes),
            service=self._service,
            version=__version__,
        )

    async def InspectImage(
        self, request: diagnostics_pb2.InspectImageRequest, context: grpc.aio.ServicerContext
    ) -> diagnostics_pb2.InspectImageResponse:
        decoded = await run_in_worker(decode_image, request.image.data, self._limits)
        return diagnostics_pb2.InspectImageResponse(
            format=decoded.format,
            width=decoded.width,
            height=decoded.height,
            channels=decoded.channels,
            encoded_bytes=decoded.encoded_bytes,
        )


def diagnostics_mount(service: str, limits: ImageLimits) -> Mount:
    """The Diagnostics service for ``service``'s server."""
    return Mount(
        full_name="veil.v1.Diagnostics",
        servicer=DiagnosticsServicer(service, limits),
        add_to_server=diagnostics_pb2_grpc.add_DiagnosticsServicer_to_server,
    )
