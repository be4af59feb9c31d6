"""``veil.v1.ModelRegistry`` over gRPC: request → domain → core → response, nothing else.

``SetAlias`` on a shared trained model (the encoder every tenant's sanitizer serves) needs
scope :data:`PROMOTE`, granted by name, besides ``modelregistry:set_alias``: its aliases
are the operator's.
``ResolveModel`` answers only delegate tokens (Veil's services acting for a tenant): its
``serving_version`` is the inference server's version directory, shared across tenants,
which a tenant is never shown.
"""

from __future__ import annotations

from services._proto.veil.v1 import registry_pb2 as pb
from services._proto.veil.v1 import registry_pb2_grpc, unlearning_pb2
from services.common.errors import InvalidArgument, PermissionDenied
from services.runtime.auth import current_principal, require_tenant
from services.unlearning import converters as cv
from services.unlearning.core import Model, Unlearning
from services.unlearning.registry import check_alias


def _model_to_pb(model: Model) -> pb.RegisteredModel:
    out = pb.RegisteredModel(
        name=model.name,
        aliases=dict(model.aliases),
        resolution=model.resolution,
        num_classes=model.num_classes,
        target=model.target,
        kind=model.kind,
        shared=model.shared,
    )
    if model.current is not None:
        out.current.CopyFrom(cv.version_to_pb(model.current))
    return out


PROMOTE = "modelregistry:promote"
"""The scope that moves a shared trained model's aliases (every tenant's): an operator's.
It must be granted by name: a tenant's ``*`` or ``modelregistry:*`` does not include it."""


class RegistryServicer(registry_pb2_grpc.ModelRegistryServicer):
    def __init__(self, core: Unlearning) -> None:
        self.core = core
        self.page_default = core.settings.default_page_size
        self.page_cap = core.settings.max_page_size

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        models = await self.core.models(require_tenant(request.tenant_id))
        return pb.ListModelsResponse(models=[_model_to_pb(m) for m in models])

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.RegisteredModel:
        tenant = require_tenant(request.tenant_id)
        model = await self.core.model(tenant, request.name)
        filters = ["registry", request.name]
        page = cv.page_from_pb(request.page, filters, self.page_default, self.page_cap)
        versions, total = await self.core.list_versions(tenant, request.name, page)
        out = _model_to_pb(model)
        out.versions.extend(cv.version_to_pb(v) for v in versions)
        out.page.CopyFrom(cv.page_to_pb(page, len(versions), total, filters))
        return out

    async def SetAlias(self, request: pb.SetAliasRequest, context) -> unlearning_pb2.ModelVersion:
        tenant = require_tenant(request.tenant_id)
        alias, number = check_alias(request.alias), int(request.ref.version)
        model = await self.core.model(tenant, request.ref.name)
        if model.shared:  # the operator's alias, every tenant's
            if PROMOTE not in current_principal().scopes:  # named, never by a wildcard
                raise PermissionDenied(
                    f"{request.ref.name!r} is a shared trained model: its aliases are every "
                    f"tenant's, moved only by a token granted {PROMOTE!r} by name"
                )
            version = await self.core.set_shared_alias(request.ref.name, alias, number)
        else:
            version = await self.core.set_alias(tenant, request.ref.name, alias, number)
        return cv.version_to_pb(version)

    async def ResolveModel(self, request: pb.ResolveModelRequest, context) -> pb.ResolvedModel:
        if not current_principal().delegate:
            raise PermissionDenied("ResolveModel answers Veil's services (delegate tokens) only")
        if not request.tenant_id:
            raise InvalidArgument("tenant_id is required", details={"field": "tenant_id"})
        if request.ref.version < 0:
            raise InvalidArgument("ref.version must be >= 0", details={"field": "ref.version"})
        if request.alias:
            check_alias(request.alias)
        tenant = require_tenant(request.tenant_id)
        version = await self.core.resolve(
            tenant, request.ref.name, int(request.ref.version), request.alias
        )
        model = await self.core.model(tenant, request.ref.name)
        entry = ""
        if model.shared:
            registration = await self.core.shared_registration(request.ref.name, version.version)
            entry = self.core.serving_entry(registration) or ""
        return pb.ResolvedModel(
            version=cv.version_to_pb(version),
            serving_version=0 if model.shared else version.serial,
            resolution=model.resolution,
            num_classes=model.num_classes,
            kind=model.kind,
            sha256=str(version.lineage.get("sha256", "")),
            entry=entry,
        )
