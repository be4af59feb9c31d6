"""What the protection service's core needs from outside, as small protocols (no transport).

:mod:`services.protection.app` wires :class:`Kernels` to the running inference backend
(the authorized model, FMD and the fast generator; in-process or Triton) and to a local
backend of its own for the unauthorized models ``Evaluate`` measures, :data:`Offload` to
the server's worker pool, and :class:`AuthorizedModels` to the model registry. Any
``services.inference.backend.InferenceBackend`` is a :class:`Kernels`; tests may pass
in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from services.inference.backend import ProtectOutput, ProtectParams


class Kernels(Protocol):
    """The classifier, FMD and the fast generator. Arrays are numpy, batch first; images in
    [-1, 1]; errors are ``services.common.errors``."""

    async def classify(
        self, images: np.ndarray, *, model: str = ..., version: int = ...
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits (B, C), flattened features (B, F)); version 0 = the latest."""
        ...

    async def protect(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = ...,
        params: ProtectParams | None = ...,
        *,
        time_budget_s: float | None = ...,
        version: int = ...,
    ) -> ProtectOutput:
        """FMD against the classifier's serving version ``version``; labels −1/None = its
        prediction; ``params.robustness``: the transformations the result is optimised to
        survive; ``time_budget_s``: stop early rather than take longer (``steps_run`` says
        how far it got)."""
        ...

    async def protect_fast(self, images: np.ndarray) -> ProtectOutput:
        """One pass of the trained generator."""
        ...


@dataclass(frozen=True)
class Resolved:
    """A tenant's version of the authorized model."""

    number: int
    """The version as the tenant knows it."""
    serving: int
    """The version the inference backend serves it as (never shown to a tenant)."""


class AuthorizedModels(Protocol):
    """Which weights "the authorized model" means for a tenant (the model registry, or the
    shared base without one: ``services.protection.models``)."""

    async def resolve(self, tenant: str, name: str, version: int) -> Resolved:
        """The tenant's version ``version`` of ``name`` (0 = its production alias);
        NOT_FOUND, word for word the same, for an unknown one and another tenant's."""
        ...

    async def close(self) -> None: ...


Offload = Callable[..., Any]
"""``await offload(fn, *args)``: ``fn(*args)`` off the event loop (the server's worker
pool, ``services.runtime.workers.WorkerPool.run``)."""
