"""In-memory fakes of the sanitizer's ports (``services.sanitizer.ports``).

``tests/sanitizer/test_ports.py`` and ``tests/sanitizer/test_registry.py`` hold each fake
to the same contract as the real adapter (the accountant over gRPC, the in-process backend,
the model registry over gRPC), so a core test that runs on a fake tests what it would on
the real thing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

from services.common.errors import AlreadyExists, BudgetExhausted, FailedPrecondition, Unavailable
from services.kernels.mechanism import gaussian_epsilon
from services.sanitizer.ports import ChargeSpec, Held, LedgerCost, Record, Spent


@dataclass
class _Reservation:
    charge: ChargeSpec
    epsilon: float
    delta: float
    state: str = "held"
    """``held``, ``released`` or ``committed``."""
    spend_id: str = ""


class FakeLedger:
    """The :class:`~services.sanitizer.ports.Ledger` port in memory.

    A budget is a (tenant, dataset) with a per-subject ε and a δ. A Gaussian event costs
    its exact (ε, δ) at the budget's δ (Balle & Wang 2018) and a subject's costs add up:
    a looser composition than the accountant's, never a tighter one. Leases never lapse.
    """

    label = "fake"

    def __init__(self) -> None:
        self.budgets: dict[tuple[str, str], tuple[float, float]] = {}
        self.reservations: dict[str, _Reservation] = {}
        self.keys: dict[tuple[str, str], str] = {}
        self.closed = False

    def put_budget(self, tenant: str, dataset: str, subject_epsilon: float, delta: float) -> None:
        self.budgets[(tenant, dataset)] = (subject_epsilon, delta)

    def held(self) -> int:
        """Reservations held now (neither committed nor released)."""
        return sum(r.state == "held" for r in self.reservations.values())

    def _budget(self, charge: ChargeSpec) -> tuple[float, float]:
        budget = self.budgets.get((charge.tenant, charge.dataset))
        if budget is None:
            raise FailedPrecondition(f"no dataset budget for {charge.dataset!r} (fake)")
        return budget

    def _used(self, charge: ChargeSpec) -> float:
        return sum(
            r.epsilon
            for r in self.reservations.values()
            if r.state != "released"
            and (r.charge.tenant, r.charge.dataset, r.charge.subject)
            == (charge.tenant, charge.dataset, charge.subject)
        )

    def _find(self, tenant: str, reservation_id: str) -> _Reservation:
        found = self.reservations.get(reservation_id)
        if found is None or found.charge.tenant != tenant:
            raise FailedPrecondition("no such reservation (fake)")
        return found

    async def reserve(self, charge: ChargeSpec, lease_s: float) -> Held:
        limit, delta = self._budget(charge)
        rid = self.keys.get((charge.tenant, charge.key), "") if charge.key else ""
        if rid:
            known = self.reservations[rid]
            same = (known.charge.dataset, known.charge.subject, known.charge.noise_multiplier)
            if same != (charge.dataset, charge.subject, charge.noise_multiplier):
                raise AlreadyExists("idempotency key already used for a different charge")
            if known.state != "released":
                return Held(rid, delta, replayed=True, spend_id=known.spend_id)
        epsilon = gaussian_epsilon(1 / charge.noise_multiplier, delta)
        if self._used(charge) + epsilon > limit:
            raise BudgetExhausted("charge exceeds the subject budget (fake)")
        if rid:  # a released reservation, re-armed under its key
            self.reservations[rid].state = "held"
            return Held(rid, delta)
        rid = uuid.uuid4().hex
        self.reservations[rid] = _Reservation(charge, epsilon, delta)
        if charge.key:
            self.keys[(charge.tenant, charge.key)] = rid
        return Held(rid, delta)

    async def commit(self, tenant: str, reservation_id: str) -> Spent:
        found = self._find(tenant, reservation_id)
        cost = LedgerCost(found.epsilon, found.delta, self.label)
        if found.state == "released":
            raise FailedPrecondition("reservation is released (fake)")
        if found.state == "committed":
            return Spent(found.spend_id, True, cost)
        found.state, found.spend_id = "committed", uuid.uuid4().hex
        return Spent(found.spend_id, False, cost)

    async def release(self, tenant: str, reservation_id: str, reason: str) -> None:
        found = self._find(tenant, reservation_id)
        if found.state == "committed":
            raise FailedPrecondition("reservation already committed (fake)")
        found.state = "released"

    async def delta(self, charge: ChargeSpec) -> float:
        return self._budget(charge)[1]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


class FakeKernels:
    """The :class:`~services.sanitizer.ports.Kernels` port without a model: the code is a
    fixed random projection of the image, the decoded image a squashed mix of x_T and the
    code (deterministic, in [-1, 1], the shapes of the real ones)."""

    def __init__(self, z_dim: int, resolution: int) -> None:
        rng = np.random.default_rng(0)
        self.resolution = resolution
        side = 3 * resolution * resolution
        self.projection = rng.standard_normal((side, z_dim)).astype(np.float32) / np.sqrt(side)

    async def encode(self, images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1) @ self.projection).astype(np.float32)

    async def decode(self, z: np.ndarray, x_T: np.ndarray, steps: int) -> np.ndarray:
        shift = np.asarray(z, dtype=np.float32).mean(axis=1)[:, None, None, None]
        return np.tanh(0.5 * np.asarray(x_T, dtype=np.float32) + shift).astype(np.float32)


class FakeRecords:
    """The :class:`~services.sanitizer.ports.ModelRecords` port in memory: the registrations
    of each trained entry, the same for every tenant (shared models), numbered 1, 2, …
    (registering the newest content again changes nothing, as the registry does)."""

    def __init__(self) -> None:
        self.entries: dict[str, list[Record]] = {}
        self.aliases: dict[tuple[str, str], int] = {}
        """(entry, alias) → version: the operator's aliases."""
        self.down = False
        """Every call fails Unavailable, as with a registry that cannot be reached."""

    def register(self, entry: str, sha256: str, lineage: dict[str, str]) -> Record:
        versions = self.entries.setdefault(entry, [])
        if versions and versions[-1].sha256 == sha256:
            return versions[-1]
        number = len(versions) + 1
        lineage = {**lineage, "sha256": sha256}
        versions.append(Record(number, sha256, lineage, f"{entry}-r{number}"))
        return versions[-1]

    async def record(self, tenant: str, entry: str, alias: str = "") -> Record | None:
        if self.down:
            raise Unavailable("the model registry is unavailable (fake)")
        versions = self.entries.get(entry)
        if not versions:
            return None
        named = self.aliases.get((entry, alias or "production"))
        if named is None:
            return None if alias and alias != "production" else versions[-1]
        return versions[named - 1]

    async def close(self) -> None:
        pass
