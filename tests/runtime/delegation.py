"""Two real servers, the front one delegating to the back one with a delegate token, as the
sanitizer does to the accountant (without torch): the front's ``WhoAmI`` logs on the event
loop and on a worker thread, then asks the back server's ``WhoAmI`` for the caller's tenant
through a :class:`~services.runtime.client.LazyClient`."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from services._proto.veil.v1 import diagnostics_pb2
from services.common.imaging import ImageLimits
from services.runtime.auth import require_tenant
from services.runtime.client import LazyClient
from services.runtime.diagnostics import DiagnosticsServicer
from services.runtime.server import ServiceApp
from services.runtime.settings import TokenGrant
from services.runtime.workers import run_in_worker
from tests.support.server import TOKENS, make_app

DELEGATE_TOKEN = "test-delegate-front"
DELEGATE = "veil-front"
"""The delegate token's own tenant: what the back server's access line names as ``via``."""
BACK_TOKENS = {**TOKENS, DELEGATE_TOKEN: TokenGrant(tenant=DELEGATE, delegate=True)}

log = logging.getLogger("veil.test.delegation")


class Forwarding(DiagnosticsServicer):
    """``WhoAmI`` answered by the back server, for the caller's tenant."""

    def __init__(self, back: str) -> None:
        super().__init__("front", ImageLimits())
        self.back = LazyClient(back, DELEGATE_TOKEN)

    async def WhoAmI(
        self, request: diagnostics_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> diagnostics_pb2.WhoAmIResponse:
        tenant = require_tenant(request.tenant_id)
        log.info("on the event loop")
        await run_in_worker(log.info, "on a worker thread")
        ask = diagnostics_pb2.WhoAmIRequest(tenant_id=tenant)
        answer: diagnostics_pb2.WhoAmIResponse = await self.back.get().diagnostics.WhoAmI(ask)
        return answer


def front_app(back: str, **settings: Any) -> ServiceApp:
    servicer = Forwarding(back)
    app = make_app(servicer, **settings)
    app.name = "front"
    app.on_stop.append(servicer.back.close)
    return app


def back_app(**settings: Any) -> ServiceApp:
    app = make_app(tokens=BACK_TOKENS, **settings)
    app.name = "back"
    return app
