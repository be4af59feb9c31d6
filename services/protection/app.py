"""The protection service's server: settings, the backends, the servicer.

Ready when the authorized model, the FMD loop and the fast generator answer on the
inference backend. The unauthorized models that ``Evaluate`` measures run in this process
(a local backend of their own), whichever backend serves the authorized model.
"""

from __future__ import annotations

import logging

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services._proto.veil.v1 import protection_pb2_grpc
from services.common.errors import ModelNotReady
from services.inference.attach import attach_backend
from services.inference.backend import InferenceBackend, InferenceSettings
from services.inference.catalog import (
    PROTECTION_MODELS,
    ClassifierInfo,
    classifier_info,
    protector_authorized,
    protector_robustness,
)
from services.inference.domain import domain_model
from services.inference.factory import create_backend
from services.protection.core import MODES, Protection
from services.protection.metrics import ProtectionMetrics
from services.protection.models import SharedBase
from services.protection.ports import AuthorizedModels
from services.protection.registry import RegistryModels
from services.protection.servicer import ProtectionServicer
from services.protection.settings import ProtectionSettings
from services.runtime.diagnostics import diagnostics_mount
from services.runtime.registry import registry_client
from services.runtime.server import Mount, ServiceApp
from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)


def _inference() -> InferenceSettings:
    return InferenceSettings(models=list(PROTECTION_MODELS))


class Settings(ServiceSettings, ProtectionSettings):
    """Protection server settings (environment prefix ``VEIL_PROTECTION_``; the inference
    backend's under ``VEIL_INFERENCE_``)."""

    model_config = SettingsConfigDict(env_prefix="VEIL_PROTECTION_", extra="ignore")
    port: int = 50054
    metrics_port: int | None = 9464
    inference: InferenceSettings = Field(default_factory=_inference)


def build_app(settings: Settings) -> ServiceApp:
    app = ServiceApp(name="protection", settings=settings, mounts=[])
    metrics = ProtectionMetrics(app.registry, MODES)
    authorized = classifier_info(settings.inference, settings.authorized_model)
    evaluation_settings = InferenceSettings(
        backend="local",
        store=settings.inference.store,
        classifiers=dict(settings.unauthorized),
        models=list(settings.unauthorized),
    )
    unauthorized: dict[str, ClassifierInfo] = {}
    for name, entry in settings.unauthorized.items():
        try:
            info = classifier_info(evaluation_settings, name, entry)
        except ModelNotReady as exc:
            log.warning("unauthorized model %s left out of Evaluate: %s", name, exc.message)
            continue
        if info.target != authorized.target:  # Evaluate scores with the authorized labels
            log.warning(
                "unauthorized model %s left out of Evaluate: it predicts %s, the authorized "
                "model %s",
                name,
                info.target,
                authorized.target,
            )
            continue
        unauthorized[name] = info
    fast_robustness: str | None = protector_robustness(settings.inference)
    trained_for = protector_authorized(settings.inference)
    if trained_for is not None and trained_for != authorized.entry:
        log.warning(
            "fast mode off: generator %s was trained for %s, not the authorized model %s",
            settings.inference.protector,
            trained_for,
            authorized.entry,
        )
        fast_robustness = None
    handle = None
    evaluation: InferenceBackend | None = None

    def backend() -> InferenceBackend:
        assert handle is not None
        return handle.backend

    def evaluator() -> InferenceBackend:
        nonlocal evaluation
        if evaluation is None:
            evaluation = create_backend(evaluation_settings)
        return evaluation

    domain = domain_model(settings.inference, settings.domain, authorized.entry)
    if domain is None:
        log.warning("VEIL_PROTECTION_DOMAIN is empty: no image is refused as out of domain")
    elif settings.inference.feature_layer != "penultimate":
        raise ModelNotReady(
            f"the authorized model's domain is fitted on its penultimate features; the "
            f"backend's feature_layer is {settings.inference.feature_layer!r} (set "
            "VEIL_PROTECTION_DOMAIN empty to serve without the check)"
        )
    registry = registry_client(settings)
    models: AuthorizedModels = SharedBase() if registry is None else RegistryModels(registry)
    core = Protection(
        settings,
        backend,
        authorized,
        evaluator,
        unauthorized,
        metrics,
        app.workers.run,
        settings.image_limits,
        models,
        fast_robustness,
        domain,
    )
    app.mounts += [
        Mount(
            "veil.v1.Protection",
            ProtectionServicer(core),
            protection_pb2_grpc.add_ProtectionServicer_to_server,
        ),
        diagnostics_mount("protection", settings.image_limits),
    ]

    async def stop() -> None:
        if evaluation is not None:
            await evaluation.close()
        await models.close()

    app.on_stop.append(stop)
    handle = attach_backend(app, settings.inference)
    return app
