"""Prometheus metrics of the unlearning service, on a registry the caller owns.

Names follow ``veil_unlearning_<noun>_<unit>``; labels are bounded (job state, method),
never a tenant, job or sample id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class UnlearningMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Gauge(
            "veil_unlearning_jobs",
            "Jobs in the store by state (all replicas; refreshed by each replica's poller).",
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
