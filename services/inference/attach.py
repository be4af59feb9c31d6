"""A service's inference backend, tied to its server's lifecycle and health.

:func:`attach_backend` is what a service that calls the heavy kernels adds in its
``build_app``: the backend is created when the server starts and closed after it stops,
and readiness (``grpc.health.v1``, service ``readiness`` and ``""``) is SERVING only
while the backend's models answer *and* the service's own check passes. When Triton
disappears the next readiness poll turns NOT_SERVING (load balancers stop routing), and
calls that still arrive fail with UNAVAILABLE within their deadline: the backend maps a
dead server to :class:`~services.common.errors.Unavailable` and bounds every call by
``InferenceSettings.timeout_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from services.common.errors import Unavailable
from services.inference.backend import InferenceBackend, InferenceSettings
from services.inference.factory import create_backend

log = logging.getLogger(__name__)


class Lifecycle(Protocol):
    """What :func:`attach_backend` needs of a server app (``services.runtime.server.ServiceApp``
    has it): start/stop hooks and a readiness check. A protocol, so that inference does not
    import the transport."""

    on_start: list[Callable[[], Awaitable[None]]]
    on_stop: list[Callable[[], Awaitable[None]]]
    ready: Callable[[], Awaitable[bool]] | None


class BackendHandle:
    """The backend of a running service; :attr:`backend` raises UNAVAILABLE before start
    and after stop, so a servicer never calls a closed backend."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._backend: InferenceBackend | None = None
        self._was_ready: bool | None = None

    @property
    def backend(self) -> InferenceBackend:
        if self._backend is None:
            raise Unavailable("the inference backend is not running")
        return self._backend

    @property
    def last_ready(self) -> bool | None:
        """The readiness the last probe saw (None before the first one): what a call may
        check without waiting for the backend."""
        return self._was_ready

    async def start(self) -> None:
        if self._backend is None:
            self._backend = create_backend(self.settings)
            log.info(
                "inference backend %s (%s)",
                self.settings.backend,
                self.settings.triton_url if self.settings.backend == "triton" else "in-process",
            )

    async def stop(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            await backend.close()

    async def ready(self) -> bool:
        """The backend's readiness (never raises); transitions are logged once each."""
        ready = self._backend is not None and await self._backend.ready()
        if ready != self._was_ready:
            log.log(
                logging.INFO if ready else logging.WARNING,
                "inference backend %s: models %s %s",
                self.settings.backend,
                ", ".join(self.settings.models),
                "ready" if ready else "NOT ready",
            )
            self._was_ready = ready
        return ready


def attach_backend(app: Lifecycle, settings: InferenceSettings) -> BackendHandle:
    """Give ``app`` an inference backend; its readiness becomes backend ∧ the app's own.

    Call it after the app's own ``ready`` is set (it wraps whatever is there).
    """
    handle = BackendHandle(settings)
    own: Callable[[], Awaitable[bool]] | None = app.ready

    async def ready() -> bool:
        if not await handle.ready():
            return False
        return True if own is None else await own()

    app.on_start.append(handle.start)
    app.on_stop.append(handle.stop)
    app.ready = ready
    return handle
