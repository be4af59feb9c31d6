"""Prometheus metrics of the protection service, on a registry the caller owns.

Names follow ``veil_protection_<noun>_<unit>``; labels are bounded (mode). Each mode's
series are at 0 from the start (``modes``: the core's ``MODES``), so that a ``rate()`` or a
ratio over them is defined before the first protection.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram


class ProtectionMetrics:
    def __init__(self, registry: CollectorRegistry, modes: Iterable[str] = ()) -> None:
        self.protections = Counter(
            "veil_protection_protections_total",
            "Images protected, by mode.",
            ["mode"],
            registry=registry,
        )
        self.steps = Histogram(
            "veil_protection_fmd_steps",
            "FMD gradient steps run per image.",
            registry=registry,
            buckets=(1, 5, 10, 20, 30, 50, 100, 200, 300, 1000),
        )
        self.early_stops = Counter(
            "veil_protection_early_stops_total",
            "FMD runs stopped before their iterations to meet the deadline.",
            registry=registry,
        )
        self.latency = Histogram(
            "veil_protection_protect_duration_seconds",
            "Wall time to protect one image (decode, protect, verify, encode), by mode.",
            ["mode"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.evaluations = Counter(
            "veil_protection_evaluations_total", "Evaluate calls answered.", registry=registry
        )
        for mode in modes:
            self.protections.labels(mode=mode)
            self.latency.labels(mode=mode)
