"""The sanitizer follows the model registry: it serves the encoder an operator's alias
names, and swaps to another one when the alias moves — no restart, no mixed requests.

An encoder (the ``diffae`` shared trained model, or the entry ``VEIL_INFERENCE_DIFFAE``
names) is registered by ``veil train``; the registry keeps each registration whole in the
model store (``<entry>-r<N>``) and an operator points its ``production`` alias at one
(``SetAlias`` with scope ``modelregistry:promote``). With ``encoder_alias`` set, this
server asks the registry every ``follow_every_s`` which registration the alias names. When
it is another one than the server serves, the server

1. loads that registration's weights on the backend, and the probes and in-domain score
   fitted on it (by SHA-256) from the store — all while the old model still serves;
2. waits for the requests in flight to end (new ones wait behind the swap), then switches
   the backend and the pipeline at once, so no request ever encodes with one model and
   decodes (or calibrates, or screens) with another;
3. refuses, from then on, to release a preview session the old model made
   (FAILED_PRECONDITION, reason MODEL_CHANGED, nothing charged): its candidates and
   strengths were calibrated on the old model's attribute subspace.

A swap that cannot be made (the store lacks the probes or the in-domain score fitted on the
new encoder, the weights fail their SHA-256, the backend is Triton, which serves the
encoder of its repository) leaves the old model serving; it is logged and counted
(``veil_sanitizer_model_swaps_total{outcome="failed"}``) and tried again on the next look.
The server is ready only once it serves what the alias names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.common.errors import FailedPrecondition, ModelNotReady, VeilError
from services.inference.attributes import Generation
from services.sanitizer.metrics import SanitizerMetrics
from services.sanitizer.pipeline import Pipeline
from services.sanitizer.ports import EncoderSwitch, ModelRecords

log = logging.getLogger(__name__)

SHARED = "*"
"""The tenant the follower resolves for: a shared model's aliases are every tenant's."""


class Follower:
    """Keeps the pipeline on the encoder the registry's ``alias`` of ``name`` names."""

    def __init__(
        self,
        records: ModelRecords,
        name: str,
        alias: str,
        load: Callable[[str], Generation],
        switch: Callable[[], EncoderSwitch],
        pipeline: Pipeline,
        metrics: SanitizerMetrics,
    ) -> None:
        """``load(entry)``: the generation of a store entry (blocking: run on a thread)."""
        self.records, self.name, self.alias = records, name, alias
        self._load, self._switch = load, switch
        self.pipeline, self.metrics = pipeline, metrics
        self.version = 0
        """The registry version served now (0: none matched yet)."""
        self._failing: str | None = None

    @property
    def synced(self) -> bool:
        """The server has served what the alias names at least once."""
        return self.version > 0

    async def follow_once(self) -> bool:
        """One look at the alias; True when it swapped. VeilErrors propagate, the old model
        still serving."""
        found = await self.records.record(SHARED, self.name, self.alias)
        if found is None:
            raise ModelNotReady(
                f"the model registry names no {self.alias or 'production'!r} of {self.name!r}"
            )
        if found.sha256 == self.pipeline.model.diffae_sha256:
            self._served(found.version)
            return False
        if not found.entry:
            raise ModelNotReady(f"the registry gives no store entry for {self.name!r}")
        generation = await asyncio.to_thread(self._load, found.entry)
        if generation.model.diffae_sha256 != found.sha256:
            raise FailedPrecondition(
                f"the store entry {found.entry!r} does not hold {self.name!r} version "
                f"{found.version} (its SHA-256 differs from the registry's)"
            )
        backend = self._switch()
        await backend.load_diffae(found.entry)
        async with self.pipeline.exclusive.swapping():
            backend.use_diffae(found.entry)
            self.pipeline.install(generation.model, generation.domain)
        self.metrics.swaps.labels(outcome="swapped").inc()
        log.info(
            "now serving %s version %d (%s, sha256 %s…) as the registry's %r names",
            self.name,
            found.version,
            found.entry,
            found.sha256[:12],
            self.alias or "production",
        )
        self._served(found.version)
        return True

    def _served(self, version: int) -> None:
        self.version = version
        self.metrics.served.set(version)
        self._failing = None

    async def run(self, every_s: float) -> None:
        """:meth:`follow_once` every ``every_s`` seconds, forever (cancel to stop)."""
        while True:
            try:
                await self.follow_once()
            except VeilError as exc:
                self.metrics.swaps.labels(outcome="failed").inc()
                if exc.message != self._failing:  # once per distinct failure
                    log.warning("cannot follow the registry's encoder: %s", exc.message)
                    self._failing = exc.message
            await asyncio.sleep(every_s)
