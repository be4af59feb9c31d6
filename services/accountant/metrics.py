"""Prometheus metrics of the accountant, on a registry the caller owns (never the global).

Names follow ``veil_accountant_<noun>_<unit>``; labels are bounded: the spend path, the
refusal reason and a dataset id only if it is listed as low-cardinality (else ``other``).
Every counter's known label values are at 0 from the start, so that a ``rate()`` or a ratio
over them is defined before the first spend.

Gauges that read the ledger (``reservations_outstanding``) report the same ledger-wide figure
on every replica, and ``dataset_epsilon_spent`` is each replica's own view: aggregate both
with ``max`` across replicas, never ``sum``.

Renamed: ``veil_accountant_dataset_epsilon_spent_epsilon`` (the unit doubled) is now
``veil_accountant_dataset_epsilon_spent``; no shipped rule or panel used the old name, so it
is not kept.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SPEND_KINDS = ("spend", "commit", "batch")
"""How a spend was committed: Spend, Commit of a reservation, an item of ChargeBatch."""
REFUSAL_REASONS = ("budget_exhausted",)
"""Why a spend or reservation was refused (the values ``Core.refused`` is called with)."""


class AccountantMetrics:
    """The ledger calls these hooks; nothing else touches the collectors."""

    def __init__(self, registry: CollectorRegistry, low_cardinality_datasets: Iterable[str] = ()):
        self._datasets = frozenset(low_cardinality_datasets)
        self._children: dict[tuple[int, str], Any] = {}
        self._highest: dict[str, float] = {}
        """Dataset label → the largest epsilon set on its gauge (under ``_lock``)."""
        self._lock = threading.Lock()
        self.spends = Counter(
            "veil_accountant_spends_total",
            "Committed spends, by path (spend, commit of a reservation, batch item).",
            ["kind"],
            registry=registry,
        )
        self.refusals = Counter(
            "veil_accountant_refusals_total",
            "Spends or reservations refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.reservations_outstanding = Gauge(
            "veil_accountant_reservations_outstanding",
            "Live, unexpired reservations in the whole ledger, read at scrape time: every "
            "replica reports the same figure, aggregate with max (never sum).",
            registry=registry,
        )
        self.reservations_expired = Counter(
            "veil_accountant_reservations_expired_total",
            "Reservations whose lease ran out before commit or release (counted when the "
            "ledger marks them: the tenant's next Reserve, or a Commit or Release of them).",
            registry=registry,
        )
        self.epsilon_spent = Gauge(
            "veil_accountant_dataset_epsilon_spent",
            "Largest enforced epsilon this replica has committed on a dataset budget since it "
            'started (unlisted datasets together as "other"); each replica sees only its '
            "own spends: aggregate with max (never sum). GetBudget is the authority.",
            ["dataset"],
            registry=registry,
        )
        self.spend_latency = Histogram(
            "veil_accountant_spend_duration_seconds",
            "Wall time of a spend or commit, including the database transaction.",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

        self.spend_group_size = Histogram(
            "veil_accountant_spend_group_size_spends",
            "Spends decided and committed together in one transaction (group commit).",
            registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        for kind in SPEND_KINDS:
            self._child(self.spends, kind)
        for reason in REFUSAL_REASONS:
            self._child(self.refusals, reason)

    def dataset_label(self, dataset_id: str) -> str:
        return dataset_id if dataset_id in self._datasets else "other"

    def spent(self, kind: str, dataset_id: str, dataset_epsilon: float, seconds: float) -> None:
        self._child(self.spends, kind).inc()
        label = self.dataset_label(dataset_id)
        with self._lock:  # a high-water mark: spends of several threads end here
            if dataset_epsilon > self._highest.get(label, -1.0):
                self._highest[label] = dataset_epsilon
                self._child(self.epsilon_spent, label).set(dataset_epsilon)
        self.spend_latency.observe(seconds)

    def _child(self, metric: Any, label: str) -> Any:
        """``metric.labels(label)``, looked up once per label (labels are bounded): the
        lookup takes a lock and parses its arguments on every call."""
        key = (id(metric), label)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(label))
        return child

    def refused(self, reason: str) -> None:
        self._child(self.refusals, reason).inc()
