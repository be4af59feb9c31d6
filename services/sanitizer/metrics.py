"""Prometheus metrics of the sanitizer, on a registry the caller owns (never the global).

Names follow ``veil_sanitizer_<noun>_<unit>``; labels are bounded (release kind, refusal
reason, pipeline stage), never a tenant, subject, session or image id. Every known label
value's series is at 0 from the start, so that a ``rate()`` or a ratio over them is defined
before the first release or refusal.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("image", "encode", "decode", "charge", "store")
"""image = decode the upload, find and crop the face; encode/decode = the diffusion
autoencoder; charge = the accountant's round trips; store = the session database."""
RELEASE_KINDS = ("fresh", "candidate", "batch")
"""A fresh draw (Sanitize), a preview candidate released, an item of SanitizeBatch."""
CHARGE_STAGES = ("check", "reserve", "commit")
"""The accountant calls of a release: ``accountant_<stage>`` is its refusal reason."""
REFUSAL_REASONS = (
    "budget",
    "accountant_unavailable",
    *(f"accountant_{stage}" for stage in CHARGE_STAGES),
    "backend_unavailable",
    "generation_failed",
    "delta",
    "key_spent",
    "seeded_candidate",
    "out_of_domain",
    "model_changed",
)
"""Every reason ``core.py`` refuses with (a test holds the two equal)."""
SWAP_OUTCOMES = ("swapped", "failed")
"""What a look at the registry's encoder alias did (``following.py``); an unchanged alias
counts nothing."""


class SanitizerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.releases = Counter(
            "veil_sanitizer_releases_total",
            "Images released (charged), by kind: fresh draw, preview candidate, batch item.",
            ["kind"],
            registry=registry,
        )
        self.refusals = Counter(
            "veil_sanitizer_refusals_total",
            "Releases refused or failed before an image left, by reason.",
            ["reason"],
            registry=registry,
        )
        self.previews = Counter(
            "veil_sanitizer_previews_total", "Preview sessions created.", registry=registry
        )
        self.candidates = Counter(
            "veil_sanitizer_candidates_total", "Preview candidates drawn.", registry=registry
        )
        self.generated = Counter(
            "veil_sanitizer_generated_images_total",
            "Images decoded by the mechanism (preview candidates and releases alike): every "
            "one of a release was reserved at the accountant first.",
            registry=registry,
        )
        self.epsilon = Histogram(
            "veil_sanitizer_released_epsilon",
            "Epsilon charged per released image (at the request's delta).",
            registry=registry,
            buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
        )
        self.stage = Histogram(
            "veil_sanitizer_stage_duration_seconds",
            "Wall time of one pipeline stage of a request.",
            ["stage"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.purged = Counter(
            "veil_sanitizer_purged_rows_total",
            "Expired sessions, candidates and releases deleted.",
            registry=registry,
        )
        self.swaps = Counter(
            "veil_sanitizer_model_swaps_total",
            "Looks at the registry's encoder alias that found another encoder than the one "
            "served, by outcome: swapped (the new encoder, probes and in-domain score serve "
            "now), failed (the old ones still serve; tried again on the next look).",
            ["outcome"],
            registry=registry,
        )
        self.served = Gauge(
            "veil_sanitizer_encoder_version",
            "Registry version of the encoder served now (0: not followed from the registry).",
            registry=registry,
        )
        for outcome in SWAP_OUTCOMES:
            self.swaps.labels(outcome=outcome)
        for kind in RELEASE_KINDS:
            self.releases.labels(kind=kind)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason=reason)
        for stage in STAGES:
            self.stage.labels(stage=stage)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage.labels(stage=stage).observe(time.perf_counter() - start)

    def released(self, kind: str, epsilon: float) -> None:
        self.releases.labels(kind=kind).inc()
        self.epsilon.observe(epsilon)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason=reason).inc()
