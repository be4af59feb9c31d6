"""The unlearning service's server: settings, the job store, the runner, the servicer.

Ready when the job database answers and the inference backend serves the model it
publishes versions of. Jobs run on this process's own bounded pool of job threads
(``max_running_jobs``), never on the event loop or the RPC worker pool.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services._proto.veil.v1 import registry_pb2_grpc, unlearning_pb2_grpc
from services.inference.attach import attach_backend
from services.inference.backend import NOT_EXPLICIT, InferenceSettings
from services.runtime.diagnostics import diagnostics_mount
from services.runtime.server import Mount, ServiceApp
from services.runtime.settings import ServiceSettings
from services.runtime.workers import WorkerPool
from services.unlearning.core import Unlearning
from services.unlearning.jobs import JobStore
from services.unlearning.metrics import UnlearningMetrics
from services.unlearning.publishing import Publisher
from services.unlearning.registry_servicer import RegistryServicer
from services.unlearning.servicer import UnlearningServicer
from services.unlearning.settings import UnlearningSettings
from services.unlearning.training import store_root

log = logging.getLogger(__name__)


def _inference() -> InferenceSettings:
    return InferenceSettings(models=["veil_classifier"])


class Settings(ServiceSettings, UnlearningSettings):
    """Unlearning server settings (environment prefix ``VEIL_UNLEARNING_``; the inference
    backend's under ``VEIL_INFERENCE_``)."""

    model_config = SettingsConfigDict(env_prefix="VEIL_UNLEARNING_", extra="ignore")
    port: int = 50055
    metrics_port: int | None = 9465
    inference: InferenceSettings = Field(default_factory=_inference)


def build_app(settings: Settings) -> ServiceApp:
    app = ServiceApp(name="unlearning", settings=settings, mounts=[])
    metrics = UnlearningMetrics(app.registry)
    store = JobStore(settings.database_url)
    entry = settings.inference.classifiers.get(settings.model_name, "task-resnet")
    root = store_root(settings.store or settings.inference.store)
    if settings.inference.store is None:  # the in-process backend reads what is published
        settings.inference = settings.inference.model_copy(update={"store": root})
    publisher = Publisher(
        root,
        entry,
        settings.model_name,
        settings.model_repository,
        also=tuple(settings.served_with),
    )
    handle = None

    async def load(model: str, version: int) -> None:
        assert handle is not None
        for served in publisher.served_models():  # the classifier, and FMD against it
            await handle.backend.load_model(served, version)

    job_threads = WorkerPool(settings.max_running_jobs, 0, name="veil-unlearning")
    core = Unlearning(settings, store, publisher, load, metrics, job_threads)
    app.mounts += [
        Mount(
            "veil.v1.Unlearning",
            UnlearningServicer(core),
            unlearning_pb2_grpc.add_UnlearningServicer_to_server,
        ),
        Mount(
            "veil.v1.ModelRegistry",
            RegistryServicer(core),
            registry_pb2_grpc.add_ModelRegistryServicer_to_server,
        ),
        diagnostics_mount("unlearning", settings.image_limits),
    ]

    async def stop() -> None:
        await core.stop()
        await asyncio.to_thread(store.close)

    said: list[bool] = []

    async def ready() -> bool:
        """The database answers, and a published version can be loaded: with Triton, that
        it takes explicit load requests (else every job would train, then fail to
        publish). Each change of the latter is logged once."""
        if not await core.ready():
            return False
        assert handle is not None
        can = await handle.backend.can_load()
        if said[-1:] != [can]:
            said[:] = [can]
            if not can:
                log.warning("NOT ready: %s", NOT_EXPLICIT.format(url=settings.inference.triton_url))
        return can

    app.on_start.append(core.start)
    app.on_stop.append(stop)
    app.ready = ready
    handle = attach_backend(app, settings.inference)
    return app
