"""Prometheus metrics of the accountant, on a registry the caller owns (never the global).

Names follow ``veil_accountant_<noun>_<unit>``; labels are bounded: the scope kind, the
refusal reason and a dataset id only if it is listed as low-cardinality (else ``other``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AccountantMetrics:
    """The ledger calls these hooks; nothing else touches the collectors."""

    def __init__(self, registry: CollectorRegistry, low_cardinality_datasets: Iterable[str] = ()):
        self._datasets = frozenset(low_cardinality_datasets)
        self._children: dict[tuple[int, str], Any] = {}
        self.spends = Counter(
            "veil_accountant_spends_total", "Committed spends.", ["kind"], registry=registry
        )
        self.refusals = Counter(
            "veil_accountant_refusals_total",
            "Spends or reservations refused, by reason.",
            ["reason"],
            registry=registry,
        )
        self.reservations_outstanding = Gauge(
            "veil_accountant_reservations_outstanding",
            "Live, unexpired reservations in the ledger (counted at scrape time).",
            registry=registry,
        )
        self.reservations_expired = Counter(
            "veil_accountant_reservations_expired_total",
            "Reservations whose lease ran out before commit or release.",
            registry=registry,
        )
        self.epsilon_spent = Gauge(
            "veil_accountant_dataset_epsilon_spent_epsilon",
            "Enforced epsilon spent on a dataset budget after its latest spend.",
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

    def dataset_label(self, dataset_id: str) -> str:
        return dataset_id if dataset_id in self._datasets else "other"

    def spent(self, kind: str, dataset_id: str, dataset_epsilon: float, seconds: float) -> None:
        self._child(self.spends, kind).inc()
        self._child(self.epsilon_spent, self.dataset_label(dataset_id)).set(dataset_epsilon)
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
        self.refusals.labels(reason=reason).inc()
