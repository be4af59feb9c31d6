"""What the protection service's core needs from outside, as small protocols (no transport).

:mod:`services.protection.app` wires :class:`Kernels` to the running inference backend
(the authorized model, FMD and the fast generator; in-process or Triton) and to a local
backend of its own for the unauthorized models ``Evaluate`` measures, and :data:`Offload`
to the server's worker pool. Any ``services.inference.backend.InferenceBackend`` is a
:class:`Kernels`; tests may pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Callable
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
    ) -> ProtectOutput:
        """FMD; labels −1/None = the authorized model's prediction; ``time_budget_s``: stop
        early rather than take longer (``steps_run`` says how far it got)."""
        ...

    async def protect_fast(self, images: np.ndarray) -> ProtectOutput:
        """One pass of the trained generator."""
        ...


Offload = Callable[..., Any]
"""``await offload(fn, *args)``: ``fn(*args)`` off the event loop (the server's worker
pool, ``services.runtime.workers.WorkerPool.run``)."""
