"""What the sanitizer's core needs from outside, as small protocols (no transport here).

:mod:`services.sanitizer.app` wires each port to its real adapter: :class:`Ledger` to
:class:`services.sanitizer.ledger.AccountantLedger` (the accountant's gRPC API),
:class:`Kernels` to the running inference backend (in-process or Triton), :data:`Offload`
to the server's worker pool, :class:`ModelRecords` (when a registry is configured) to
:class:`services.sanitizer.registry.RegistryRecords` (the model registry's gRPC API). Tests
wire in-memory fakes instead and run the same assertions on both
(``tests/sanitizer/test_ports.py``, ``tests/sanitizer/test_registry.py``).

Every release is one Gaussian event whose noise multiplier is the release's own (a chosen
preview candidate: the composition of all k candidates, which for Gaussian mechanisms is
exactly one Gaussian with μ = √(Σ μ_i²)).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class ChargeSpec:
    """One release's charge: a Gaussian event for one subject of a dataset."""

    tenant: str
    dataset: str
    subject: str
    noise_multiplier: float
    key: str
    """Idempotency key at the accountant (scoped to the tenant there): derived from the
    caller's key or the session, so that a retry after a crash finds the same reservation
    (and, once committed, the same spend) instead of charging again."""
    request_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Held:
    """A reservation at the accountant for one release."""

    reservation_id: str
    delta: float
    """The least δ of the budgets it touches: the δ the ledger states its cost at, and so
    the only δ a release may be calibrated at."""
    replayed: bool = False
    """The key's reservation already existed (a retry): the same one is returned."""
    spend_id: str = ""
    """Set when that reservation was already committed (under this very charge)."""


@dataclass(frozen=True)
class LedgerCost:
    """The cost the ledger recorded for the event, as it labels it (e.g. ``rdp``)."""

    epsilon: float
    delta: float
    accountant: str


@dataclass(frozen=True)
class Spent:
    spend_id: str
    replayed: bool
    cost: LedgerCost | None = None


class Ledger(Protocol):
    """Reserve → Commit (or Release); errors are VeilErrors. Reserve and Commit are
    idempotent by the charge's key, so either may be retried.

    A refused charge is BudgetExhausted (nothing held); a dataset without a budget is
    FailedPrecondition; a ledger that cannot be reached, or is too slow, is Unavailable."""

    async def reserve(self, charge: ChargeSpec, lease_s: float) -> Held: ...

    async def commit(self, tenant: str, reservation_id: str) -> Spent: ...

    async def release(self, tenant: str, reservation_id: str, reason: str) -> None: ...

    async def delta(self, charge: ChargeSpec) -> float:
        """The least δ of the budgets ``charge`` touches (a dry run: writes nothing)."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class Kernels(Protocol):
    """The diffusion autoencoder's two kernels (``services.inference.backend.InferenceBackend``
    has them). Arrays are numpy, batch first; images in [-1, 1]."""

    async def encode(self, images: np.ndarray) -> np.ndarray:
        """(B, 3, R, R) → semantic codes (B, z_dim)."""
        ...

    async def decode(self, z: np.ndarray, x_T: np.ndarray, steps: int) -> np.ndarray:
        """Deterministic DDIM from noise (B, 3, R, R) conditioned on codes (B, z_dim)."""
        ...


class EncoderSwitch(Protocol):
    """Switching the backend's encoder and decoder to another model store entry (the
    in-process backend can; Triton's raises FailedPrecondition)."""

    async def load_diffae(self, entry: str) -> None:
        """Build ``entry``'s kernels, weights checked, without serving them yet."""
        ...

    def use_diffae(self, entry: str) -> None:
        """Serve ``entry`` from the next call on."""
        ...


Offload = Callable[..., Awaitable[Any]]
"""``await offload(fn, *args)``: ``fn(*args)`` off the event loop (the server's worker pool,
``services.runtime.workers.WorkerPool.run``; :func:`services.sanitizer.pipeline.inline` in
tests and benches)."""


@dataclass(frozen=True)
class Record:
    """What the model registry records of a trained model: the registration its alias
    names (``production``; unset: the newest)."""

    version: int
    sha256: str
    """SHA-256 of that registration's weights."""
    lineage: dict[str, str] = field(default_factory=dict)
    """Where it came from: ``command``, ``seed``, ``data``, ``sha256``, ``registered_by``, …"""
    entry: str = ""
    """The model store entry that holds those weights (its kept copy ``<name>-r<version>``,
    or the entry itself while it is the newest)."""


class ModelRecords(Protocol):
    """The model registry's records of the store entries the sanitizer loaded (shared by
    every tenant, resolved for the caller's). Errors are VeilErrors: a registry that cannot
    be reached, is too slow or refuses the sanitizer's token is Unavailable."""

    async def record(self, tenant: str, entry: str, alias: str = "") -> Record | None:
        """The registration of ``entry`` that ``alias`` names (empty: ``production``, else
        the newest); None when the registry does not know it."""
        ...

    async def close(self) -> None: ...
