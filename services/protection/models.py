"""Which weights "the authorized model" means for a tenant without a registry (the port,
``AuthorizedModels``, is in ``services.protection.ports``).

A caller names the authorized model by its own version number (0 = its ``production``
alias). The core needs the number to report and the *serving version* to ask the
inference backend for (the version directory shared by every tenant's versions). With
the model registry (``services.protection.registry``) each tenant gets its own versions;
without one, every tenant gets the shared base, version 1, and nothing else: versions
above 1 belong to tenants, and a server that cannot tell whose they are serves none.
"""

from __future__ import annotations

from services.common.errors import NotFound
from services.protection.ports import Resolved

BASE = 1


def unknown_version(name: str, version: int) -> NotFound:
    return NotFound(f"{name!r} has no version {version}")


class SharedBase:
    """No registry: version 1 (the trained default) for every tenant."""

    async def resolve(self, tenant: str, name: str, version: int) -> Resolved:
        if version not in (0, BASE):
            raise unknown_version(name, version)
        return Resolved(BASE, BASE)

    async def close(self) -> None:
        return None
