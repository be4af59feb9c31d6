"""Which weights "the authorized model" means for a tenant: the port the core asks, and the
answer without a registry.

A caller names the authorized model by its own version number (0 = its ``production``
alias). The core needs the number to report and the *serving version* to ask the
inference backend for (the version directory shared by every tenant's versions). With
the model registry (``services.protection.registry``) each tenant gets its own versions;
without one, every tenant gets the shared base, version 1, and nothing else: versions
above 1 belong to tenants, and a server that cannot tell whose they are serves none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.common.errors import NotFound

BASE = 1


@dataclass(frozen=True)
class Resolved:
    number: int
    """The version as the tenant knows it."""
    serving: int
    """The version the inference backend serves it as (never shown to a tenant)."""


class AuthorizedModels(Protocol):
    async def resolve(self, tenant: str, name: str, version: int) -> Resolved:
        """The tenant's version ``version`` of ``name`` (0 = its production alias);
        NOT_FOUND, word for word the same, for an unknown one and another tenant's."""
        ...

    async def close(self) -> None: ...


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
