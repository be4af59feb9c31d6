"""The sanitizer's side of the model registry: the records of the encoder and the probes
it serves, over the registry's gRPC API (``veil.v1.ModelRegistry`` on the unlearning
server) with a delegate token.

:class:`services.sanitizer.ports.ModelRecords` is what the core sees (no grpc);
:class:`RegistryRecords` is its adapter over :class:`services.runtime.registry.RegistryClient`
(cached for ``ttl_s``, one call per burst), which :mod:`services.sanitizer.app` wires in
when ``registry_url`` is set. A NOT_FOUND is None; any other failure is a Veil error
(Unavailable when the registry cannot be reached, is too slow or refuses the token).
"""

from __future__ import annotations

from services.runtime.registry import RegistryClient
from services.sanitizer.ports import Record


class RegistryRecords:
    def __init__(self, registry: RegistryClient) -> None:
        self._registry = registry

    async def record(self, tenant: str, entry: str, alias: str = "") -> Record | None:
        out = await self._registry.resolve(tenant, entry, 0, alias)
        if out is None:
            return None
        version = int(out.version.ref.version)
        return Record(version, out.sha256, dict(out.version.lineage), out.entry)

    async def close(self) -> None:
        await self._registry.close()
