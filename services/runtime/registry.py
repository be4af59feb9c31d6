"""The model registry's ``ResolveModel`` (``veil.v1.ModelRegistry`` on the unlearning
server) for a Veil service acting for its callers' tenants, with a delegate token.

Answers are cached for ``ttl_s`` per (tenant, model, version): a version a tenant just
published (or an encoder just registered) is what the service sees within that time,
without a restart, and a burst of calls costs one registry call (concurrent misses share
it). A NOT_FOUND is cached too (the same time), so a caller probing numbers costs the
registry one call per number per ``ttl_s``. Protection (its authorized models) and the
sanitizer (its encoder's record) both resolve through it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import grpc

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import registry_pb2 as rpb
from services.common.errors import NotFound, VeilError
from services.runtime.client import LazyClient
from services.runtime.errors import from_rpc_error

WHO = "the model registry"


class RegistrySettings(Protocol):
    """The settings of a service that resolves at the registry (protection's, the
    sanitizer's: ``VEIL_<SERVICE>_REGISTRY_*``)."""

    registry_url: str | None
    registry_token: str
    registry_timeout_s: float
    registry_cache_s: float
    registry_tls_ca: str | None


Key = tuple[str, str, int, str]


class RegistryClient:
    def __init__(
        self,
        target: str,
        token: str,
        timeout_s: float,
        ttl_s: float,
        tls_ca: str | None = None,
    ) -> None:
        self._client = LazyClient(target, token, tls_ca)
        self._timeout, self._ttl = timeout_s, ttl_s
        self._cache: dict[Key, tuple[float, rpb.ResolvedModel | None]] = {}
        self._asking: dict[Key, asyncio.Future[rpb.ResolvedModel | None]] = {}

    async def resolve(
        self, tenant: str, name: str, version: int = 0, alias: str = ""
    ) -> rpb.ResolvedModel | None:
        """What ``name`` version ``version`` (0: what ``alias`` names, ``production`` when
        empty) is for ``tenant``; None when the registry answers NOT_FOUND. Other errors
        are raised as Veil errors."""
        key = (tenant, name, version, alias)
        hit = self._cache.get(key)
        if hit is None or time.monotonic() - hit[0] > self._ttl:
            hit = (time.monotonic(), await self._ask_once(key))
            self._cache[key] = hit
            if len(self._cache) > 10_000:  # bounded: the oldest answers go first
                for old in sorted(self._cache, key=lambda k: self._cache[k][0])[:1_000]:
                    del self._cache[old]
        return hit[1]

    async def _ask_once(self, key: Key) -> rpb.ResolvedModel | None:
        """One registry call per key at a time: a burst of calls that all miss the cache
        (a batch's items) waits for the first one's answer."""
        pending = self._asking.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._ask(*key))
        self._asking[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._asking.pop(key, None)
            else:  # this caller was cancelled; the others still wait for the task
                task.add_done_callback(lambda _: self._asking.pop(key, None))

    async def _ask(
        self, tenant: str, name: str, version: int, alias: str
    ) -> rpb.ResolvedModel | None:
        request = rpb.ResolveModelRequest(
            tenant_id=tenant, ref=common_pb2.ModelRef(name=name, version=version), alias=alias
        )
        try:
            out: rpb.ResolvedModel = await self._client.get().registry.ResolveModel(
                request, timeout=self._timeout
            )
        except grpc.RpcError as exc:
            error: VeilError = from_rpc_error(exc, WHO)
            if isinstance(error, NotFound):
                return None
            raise error from None
        return out

    async def ready(self) -> bool:
        return await self._client.ready()

    async def close(self) -> None:
        await self._client.close()


def registry_client(settings: RegistrySettings) -> RegistryClient | None:
    """The client ``settings`` describe; None when they name no registry."""
    if not settings.registry_url:
        return None
    return RegistryClient(
        settings.registry_url,
        settings.registry_token,
        settings.registry_timeout_s,
        settings.registry_cache_s,
        settings.registry_tls_ca,
    )
