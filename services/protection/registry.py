"""``AuthorizedModels`` over the model registry's gRPC API (``veil.v1.ModelRegistry`` on
the unlearning server), with a delegate token.

Answers are cached for ``ttl_s`` per (tenant, model, version): a version a tenant just
published becomes its production model here within that time, without a restart, and a
burst of Protect calls costs one registry call (concurrent misses share it). A NOT_FOUND is
cached too (the same time), so a caller probing numbers costs the registry one call per
number per ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import registry_pb2 as rpb
from services.common.errors import NotFound, VeilError
from services.protection.models import unknown_version
from services.protection.ports import Resolved
from services.runtime.client import LazyClient
from services.runtime.errors import from_rpc_error

WHO = "the model registry"


class RegistryModels:
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
        self._cache: dict[tuple[str, str, int], tuple[float, Resolved | None]] = {}
        self._asking: dict[tuple[str, str, int], asyncio.Future[Resolved | None]] = {}

    async def resolve(self, tenant: str, name: str, version: int) -> Resolved:
        key = (tenant, name, version)
        hit = self._cache.get(key)
        if hit is None or time.monotonic() - hit[0] > self._ttl:
            hit = (time.monotonic(), await self._ask_once(key))
            self._cache[key] = hit
            if len(self._cache) > 10_000:  # bounded: the oldest answers go first
                for old in sorted(self._cache, key=lambda k: self._cache[k][0])[:1_000]:
                    del self._cache[old]
        if hit[1] is None:
            raise unknown_version(name, version)
        return hit[1]

    async def _ask_once(self, key: tuple[str, str, int]) -> Resolved | None:
        """One registry call per key at a time: a burst of calls that all miss the cache
        (a ProtectBatch's items) waits for the first one's answer."""
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

    async def _ask(self, tenant: str, name: str, version: int) -> Resolved | None:
        request = rpb.ResolveModelRequest(
            tenant_id=tenant, ref=common_pb2.ModelRef(name=name, version=version)
        )
        try:
            out = await self._client.get().registry.ResolveModel(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            error: VeilError = from_rpc_error(exc, WHO)
            if isinstance(error, NotFound):
                return None
            raise error from None
        return Resolved(int(out.version.ref.version), int(out.serving_version))

    async def ready(self) -> bool:
        return await self._client.ready()

    async def close(self) -> None:
        await self._client.close()
