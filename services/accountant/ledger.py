"""The privacy ledger: one object over its parts, each with its own SQL (no transport).

:class:`Ledger` wires the parts to one :class:`~services.accountant.core.Core` (the
transactions, clock, policy, limits and metrics) and owns their lifecycle. The hot path —
check and spend, one or a batch — and a budget's history are called on the ledger itself;
the rest through its parts:

- :attr:`Ledger.budgets` (:mod:`~services.accountant.budgeting`): ``put``, ``remaining``,
  ``page``;
- :attr:`Ledger.reservations` (:mod:`~services.accountant.reserving`): ``reserve``,
  ``commit``, ``release``, ``outstanding``;
- :attr:`Ledger.audit` (:mod:`~services.accountant.auditing`): ``verify``, ``verify_all``,
  ``export``, ``replay``, ``is_empty``.

Spends (:mod:`~services.accountant.spending`, :mod:`~services.accountant.batch`) are atomic
and idempotent, each in one transaction that locks the budgets it touches; concurrent ones
share a group commit. Every call takes the caller's tenant explicitly; a charge for another
tenant is PermissionDenied, and another tenant's reservation is NotFound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, text

from services.accountant import batch
from services.accountant.auditing import Audit
from services.accountant.budgeting import Budgets
from services.accountant.core import Core
from services.accountant.events import BudgetStatus, Charge, Receipt, Scope
from services.accountant.history import HistoryPage, history
from services.accountant.limits import Limits
from services.accountant.metrics import AccountantMetrics
from services.accountant.policy import Policy
from services.accountant.reserving import Reservations
from services.accountant.schema import metadata
from services.accountant.settings import AccountantSettings
from services.accountant.spending import Spends
from services.accountant.tightpool import TightPool
from services.common.db import create_schema, make_engine
from services.common.errors import Unavailable, VeilError


class Ledger:
    """Transport-free core of the accountant over SQLite or PostgreSQL."""

    budgets: Budgets
    """Put a budget; read one (``remaining``) or a page of them."""
    reservations: Reservations
    """Reserve, commit, release; the live ones counted for the metrics."""
    audit: Audit
    """Verify running state against the event log; export and replay."""

    def __init__(
        self,
        url: str,
        *,
        policy: Policy | None = None,
        default_lease_s: float = 30.0,
        max_lease_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        metrics: AccountantMetrics | None = None,
        engine: Engine | None = None,
        limits: Limits | None = None,
        tight_pool: TightPool | None = None,
        group_max: int = 64,
        spend_queue: int = 1024,
        max_delta: float = 1e-5,
    ) -> None:
        self._engine = engine or make_engine(url)
        self.limits = limits or Limits()
        self.policy = policy or Policy()
        self._core = Core(
            self._engine, policy=self.policy, limits=self.limits, clock=clock, metrics=metrics
        )
        self._tight_pool = tight_pool
        """Owned: closed with the ledger (its policy computes tight figures there)."""
        self._spends = Spends(self._core, group_max=group_max, spend_queue=spend_queue)
        self.budgets = Budgets(self._core, max_delta)
        self.reservations = Reservations(
            self._core, self._spends, default_lease_s=default_lease_s, max_lease_s=max_lease_s
        )
        self.audit = Audit(self._core, self.budgets, self._spends)
        if metrics is not None:
            metrics.reservations_outstanding.set_function(self.reservations.outstanding)

    @classmethod
    def from_settings(
        cls, settings: AccountantSettings, *, metrics: AccountantMetrics | None = None
    ) -> Ledger:
        pool = TightPool(settings.tight_workers, settings.tight_timeout_s)
        policy = Policy(
            tight=settings.tight_accountant,
            enforce_with=settings.enforce_with,
            tight_fn=pool.figure,
        )
        return cls(
            settings.database_url,
            policy=policy,
            metrics=metrics,
            default_lease_s=settings.default_lease_s,
            max_lease_s=settings.max_lease_s,
            limits=settings.limits,
            tight_pool=pool,
            group_max=settings.group_max,
            spend_queue=settings.spend_queue,
            max_delta=settings.max_delta,
        )

    # -- lifecycle -----------------------------------------------------------------------
    def start_tight_pool(self) -> None:
        """Start the tight figures' worker processes (a no-op without a pool)."""
        if self._tight_pool is not None:
            self._tight_pool.start()

    def create_schema(self) -> None:
        """Create the tables if missing (idempotent)."""
        create_schema(self._engine, metadata)

    def ping(self) -> bool:
        """True if the database answers (the server's readiness check); never raises for
        an unreachable database."""
        try:
            with self._tx(readonly=True) as conn:  # a plain BEGIN: no write lock for a ping
                return bool(conn.execute(text("SELECT 1")).scalar_one() == 1)
        except Unavailable:
            return False

    def close(self) -> None:
        self._spends.close()  # the queued spends are decided first
        self._engine.dispose()
        if self._tight_pool is not None:
            self._tight_pool.close()

    @contextmanager
    def _tx(self, *, readonly: bool = False) -> Iterator[Connection]:
        with self._core.tx(readonly=readonly) as conn:
            yield conn

    # -- the hot path: check and spend (:mod:`services.accountant.spending`) --------------
    def check(
        self, caller_tenant: str, charge: Charge, *, tight: bool = False
    ) -> tuple[BudgetStatus, ...]:
        """Dry run: projected status of every budget the charge touches. Writes nothing.

        Live reservations count. ``tight=True`` also computes the tight figure everywhere.
        """
        return self._spends.check(caller_tenant, charge, tight=tight)

    def spend(self, caller_tenant: str, charge: Charge) -> Receipt:
        """Commit a charge atomically on all its budgets, or raise and write nothing.

        Same idempotency key and same charge → the original receipt with ``replayed=True``;
        same key, other charge → AlreadyExists; a budget too small → BudgetExhausted.
        """
        return self._spends.spend(caller_tenant, charge)

    def start_spend(self, caller_tenant: str, charge: Charge) -> Future[Receipt]:
        """:meth:`spend` without waiting: checked now, queued for the group commit
        (:meth:`Spends.start_spend <services.accountant.spending.Spends.start_spend>`)."""
        return self._spends.start_spend(caller_tenant, charge)

    def charge_batch(
        self, caller_tenant: str, batch_key: str, items: Sequence[Charge | VeilError]
    ) -> list[Receipt | VeilError]:
        """Charge every item in one transaction; each is accepted or refused on its own
        (:func:`services.accountant.batch.charge`)."""
        return batch.charge(self._core, caller_tenant, batch_key, items)

    def history(self, caller_tenant: str, scope: Scope, **page: Any) -> HistoryPage:
        """Events charged to ``scope``, a page at a time
        (:func:`services.accountant.history.history`)."""
        return history(self._core, caller_tenant, scope, **page)
