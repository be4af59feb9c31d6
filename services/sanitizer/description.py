"""What ``ListAttributes`` says of the sanitizer's model: the encoder and the probes it
loaded, their versions and lineage in the model registry, and whether they are still the
ones the registry names.

``veil train`` registers every model it writes (``diffae``, ``probes``, …) as a shared
trained model of the registry, and the unlearning service adopts what its model store holds
when it starts. The registry is asked on each call (its adapter caches answers for
``registry_cache_s``), so an encoder registered after this server started shows at once as
a newer version, with ``current`` false (a restart loads it). A registry that cannot be
reached fails the call (UNAVAILABLE); it is never waited for at readiness. Without a
registry the store's manifests answer: version 0, their lineage, current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from services.inference.attributes import AttributeModel
from services.sanitizer.ports import ModelRecords, Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelDescription:
    """The encoder (a store entry) and the probes a sanitizer serves, as a caller sees them."""

    name: str
    resolution: int
    training_data: str
    probes: str
    version: int = 0
    """The encoder's version in the registry; 0 without a registry, or one that lacks it."""
    lineage: dict[str, str] = field(default_factory=dict)
    probes_lineage: dict[str, str] = field(default_factory=dict)
    current: bool = True
    """Both loaded entries have the SHA-256 of the registry's newest registration; when the
    server follows an alias, the encoder is the registration the alias names."""


class Describer:
    """Describes the :class:`AttributeModel` served now (``model()``: it changes when the
    registry's alias moves), through the registry when there is one."""

    def __init__(
        self,
        model: Callable[[], AttributeModel],
        records: ModelRecords | None = None,
        alias: str = "",
    ) -> None:
        """``alias``: the encoder alias the server follows (``services.sanitizer.following``):
        the encoder is described as that alias names it, and the probes the server chose
        for it (fitted on it, not the newest registration of the probes) count as current."""
        self._model = model
        self.records = records
        self.alias = alias
        self._unknown: set[str] = set()
        """Entries the registry did not know at their last look-up (warned once)."""

    async def describe(self, tenant: str) -> ModelDescription:
        model = self._model()
        if self.records is None:
            return self._described(model, None, None, current=True)
        encoder, probes = await asyncio.gather(
            self._record(self.records, tenant, model.diffae, self.alias),
            self._record(self.records, tenant, model.probes),
        )
        if self.alias and probes is not None and probes.sha256 != model.probes_sha256:
            probes = None  # the served probes are those fitted on the followed encoder
        current = (
            encoder is not None
            and encoder.sha256 == model.diffae_sha256
            and (self.alias != "" or (probes is not None and probes.sha256 == model.probes_sha256))
        )
        return self._described(model, encoder, probes, current=current)

    @staticmethod
    def _described(
        model: AttributeModel, encoder: Record | None, probes: Record | None, *, current: bool
    ) -> ModelDescription:
        return ModelDescription(
            name=model.diffae,
            resolution=model.resolution,
            training_data=model.training_data,
            probes=model.probes,
            version=encoder.version if encoder is not None else 0,
            lineage=dict(encoder.lineage if encoder is not None else model.diffae_lineage),
            probes_lineage=dict(probes.lineage if probes is not None else model.probes_lineage),
            current=current,
        )

    async def _record(
        self, records: ModelRecords, tenant: str, entry: str, alias: str = ""
    ) -> Record | None:
        found = await records.record(tenant, entry, alias)
        if found is not None:
            self._unknown.discard(entry)
        elif entry not in self._unknown:
            self._unknown.add(entry)
            log.warning(
                "the model registry does not know %r: described as version 0, not current "
                "(register it with `veil train`, or start the unlearning service on this "
                "model store, which adopts its entries)",
                entry,
            )
        return found
