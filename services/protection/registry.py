"""``AuthorizedModels`` over the model registry (``services.runtime.registry``): each
tenant's authorized model is the version the registry resolves for it, cached for
``ttl_s`` (a version a tenant just published becomes its production model here within
that time, without a restart)."""

from __future__ import annotations

from services.protection.models import unknown_version
from services.protection.ports import Resolved
from services.runtime.registry import RegistryClient


class RegistryModels:
    def __init__(self, registry: RegistryClient) -> None:
        self._registry = registry

    async def resolve(self, tenant: str, name: str, version: int) -> Resolved:
        out = await self._registry.resolve(tenant, name, version)
        if out is None:
            raise unknown_version(name, version)
        return Resolved(int(out.version.ref.version), int(out.serving_version))

    async def ready(self) -> bool:
        return await self._registry.ready()

    async def close(self) -> None:
        await self._registry.close()
