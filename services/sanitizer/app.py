"""The sanitizer's server: settings, the pipeline, sessions, the accountant client and,
when ``registry_url`` is set, the model registry's client.

Ready when the encoder and decoder answer on the inference backend, the session database
answers and the accountant reports SERVING: without the accountant no image may leave.
Readiness does not wait for the registry (only ListAttributes asks it), unless the server
follows the registry's encoder alias (``encoder_alias``): then it is ready once it serves
what the alias names (``services.sanitizer.following``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services._proto.veil.v1 import sanitizer_pb2_grpc
from services.inference.attach import attach_backend
from services.inference.attributes import attribute_model, fitted_generation
from services.inference.backend import SANITIZER_MODELS, InferenceSettings
from services.inference.domain import domain_model
from services.runtime.diagnostics import diagnostics_mount
from services.runtime.registry import registry_client
from services.runtime.server import Mount, ServiceApp
from services.runtime.settings import ServiceSettings
from services.sanitizer.core import Sanitizer
from services.sanitizer.following import Follower
from services.sanitizer.ledger import AccountantLedger
from services.sanitizer.metrics import SanitizerMetrics
from services.sanitizer.pipeline import Pipeline
from services.sanitizer.ports import Ledger, ModelRecords
from services.sanitizer.registry import RegistryRecords
from services.sanitizer.servicer import SanitizerServicer
from services.sanitizer.sessions import SessionStore
from services.sanitizer.settings import SanitizerSettings

log = logging.getLogger(__name__)


def _inference() -> InferenceSettings:
    return InferenceSettings(models=list(SANITIZER_MODELS))


class Settings(ServiceSettings, SanitizerSettings):
    """Sanitizer server settings (environment prefix ``VEIL_SANITIZER_``; the inference
    backend's under ``VEIL_INFERENCE_``)."""

    model_config = SettingsConfigDict(env_prefix="VEIL_SANITIZER_", extra="ignore")
    port: int = 50053
    metrics_port: int | None = 9463
    inference: InferenceSettings = Field(default_factory=_inference)


def build_app(
    settings: Settings, *, ledger: Ledger | None = None, store: SessionStore | None = None
) -> ServiceApp:
    """The sanitizer: its RPCs plus diagnostics. ``ledger`` replaces the accountant client
    and ``store`` the session store (tests of faults that real ones cannot be made to show,
    and the audit's canaries: deliberately broken variants it must flag)."""
    app = ServiceApp(name="sanitizer", settings=settings, mounts=[])
    metrics = SanitizerMetrics(app.registry)
    model = attribute_model(settings.inference, settings.probes)
    domain = domain_model(settings.inference, settings.domain, settings.inference.diffae)
    if domain is None:
        log.warning("VEIL_SANITIZER_DOMAIN is empty: no input is refused as out of domain")
    store = store or SessionStore(settings.database_url)
    accountant: Ledger = ledger or AccountantLedger(
        settings.accountant_url,
        settings.accountant_token,
        settings.accountant_timeout_s,
        settings.accountant_tls_ca,
    )
    registry = registry_client(settings)
    records: ModelRecords | None = None if registry is None else RegistryRecords(registry)
    handle = None

    def backend():  # the running backend (UNAVAILABLE before start and after stop)
        assert handle is not None
        return handle.backend

    pipeline = Pipeline(
        backend,
        model,
        limits=settings.image_limits,
        margin=settings.face_margin,
        output_format=settings.output_format,
        backend_ready=lambda: handle.last_ready if handle is not None else None,
        domain=domain,
    )
    core = Sanitizer(settings, pipeline, store, accountant, metrics, app.workers.run, records)
    follower = None
    if settings.encoder_alias and records is not None:
        name = settings.inference.diffae
        follower = Follower(
            records,
            name,
            settings.encoder_alias,
            functools.partial(
                fitted_generation,
                settings.inference,
                name=name,
                probes=settings.probes,
                domain=settings.domain,
            ),
            backend,
            pipeline,
            metrics,
        )
    app.mounts += [
        Mount(
            "veil.v1.Sanitizer",
            SanitizerServicer(core),
            sanitizer_pb2_grpc.add_SanitizerServicer_to_server,
        ),
        diagnostics_mount("sanitizer", settings.image_limits),
    ]
    purger: asyncio.Task[None] | None = None
    following: asyncio.Task[None] | None = None

    async def purge_forever() -> None:
        while True:
            await asyncio.sleep(settings.purge_every_s)
            try:
                await core.purge()
            except Exception as exc:  # the database is down: next round
                log.warning("purge of expired sessions failed: %s", type(exc).__name__)

    async def start() -> None:
        nonlocal purger, following
        await asyncio.to_thread(store.create_schema)
        purger = asyncio.create_task(purge_forever())
        if follower is not None:
            following = asyncio.create_task(follower.run(settings.follow_every_s))

    async def ready() -> bool:
        if follower is not None and not follower.synced:
            return False
        if not await asyncio.to_thread(store.ping):
            return False
        return await accountant.ready()

    async def stop() -> None:
        for task in (purger, following):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await accountant.close()
        if records is not None:
            await records.close()
        await asyncio.to_thread(store.close)

    app.on_start.append(start)
    app.on_stop.append(stop)
    app.ready = ready
    handle = attach_backend(app, settings.inference)
    return app
