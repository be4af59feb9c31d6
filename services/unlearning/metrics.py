"""Prometheus metrics of the unlearning service, on a registry the caller owns.

Names follow ``veil_unlearning_<noun>_<unit>``; labels are bounded (job state, method),
never a tenant, job or sample id. Every known label value's series is at 0 from the start,
so that a ``rate()`` or a ratio over them (the failed share of finished jobs) is defined
before the first job finishes.

``veil_unlearning_jobs`` is the job store's count, the same on every replica: aggregate it
with ``max`` across replicas, never ``sum``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.unlearning.jobs import TERMINAL
from services.unlearning.training import METHODS

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
PUBLISHED_BY = (*METHODS, "rollback")
"""What a version is published by: a job's method, or a rollback."""


class UnlearningMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Gauge(
            "veil_unlearning_jobs",
            "Jobs in the store by state, refreshed by each replica's poller: every replica "
            "reports the same store-wide count, aggregate with max (never sum).",
            ["state"],
            registry=registry,
        )
        self.submitted = Counter(
            "veil_unlearning_jobs_submitted_total",
            "Jobs accepted by SubmitJob (idempotent retries included), by method.",
            ["method"],
            registry=registry,
        )
        self.finished = Counter(
            "veil_unlearning_jobs_finished_total",
            "Jobs that reached a terminal state on this replica, by state.",
            ["state"],
            registry=registry,
        )
        self.duration = Histogram(
            "veil_unlearning_job_duration_seconds",
            "Wall time of one job attempt on a worker (training, evaluation, publishing).",
            ["method", "state"],
            registry=registry,
            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
        )
        self.published = Counter(
            "veil_unlearning_versions_published_total",
            "Model versions published, by method (rollback included).",
            ["method"],
            registry=registry,
        )
        for state in STATES:
            self.jobs.labels(state=state).set(0)
        for state in TERMINAL:
            self.finished.labels(state=state)
        for method in METHODS:
            self.submitted.labels(method=method)
            for state in TERMINAL:
                self.duration.labels(method=method, state=state)
        for method in PUBLISHED_BY:
            self.published.labels(method=method)
