"""The data of an unlearning job: what changed, what it may spend, what it reports.

Frozen dataclasses only (no torch work here), so the service can build requests and read
reports without knowing the algorithms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.common.errors import InvalidArgument
from services.kernels.classifiers import Classifier

PHASES = ("loading", "erasing", "repairing", "training", "evaluating")


class Cancelled(Exception):
    """``should_stop()`` turned true: the job was abandoned; nothing is returned."""


@dataclass(frozen=True)
class Revision:
    """How a dataset changed since the base model was trained."""

    dataset_uri: str
    """The revised training set (any URI :func:`services.kernels.data.open_dataset` opens)."""
    removed_ids: tuple[str, ...] = ()
    """Samples gone from the revised set (their originals are forgotten)."""
    replaced_ids: tuple[str, ...] = ()
    """Samples whose revised image replaces the original (the originals are forgotten)."""


@dataclass(frozen=True)
class Budget:
    steps: int | None = None
    """Optimisation steps for the method (None: the method's default)."""
    max_seconds: float | None = None
    """Wall-clock cap; the method stops early and says so in ``details``."""
    threads: int | None = None
    """torch threads while the job runs (None: leave torch's setting)."""

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise InvalidArgument(f"budget steps must be >= 0; got {self.steps}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise InvalidArgument(f"budget max_seconds must be > 0; got {self.max_seconds}")
        if self.threads is not None and self.threads < 1:
            raise InvalidArgument(f"budget threads must be >= 1; got {self.threads}")


@dataclass(frozen=True)
class Leakage:
    attribute: str
    probe_accuracy: float
    """Held-out accuracy of a fresh linear probe on the penultimate features."""
    chance_accuracy: float
    """What a constant guess scores on the same rows (the majority rate)."""


@dataclass(frozen=True)
class Figures:
    task_accuracy: float
    """On the held-out test set."""
    revised_task_accuracy: float
    """On the revised training samples."""
    leakage: tuple[Leakage, ...]
    """Per forgotten attribute, fresh linear probe on penultimate features, held-out."""
    membership_inference_auc: float
    """Loss-threshold attack, replaced/removed originals vs held-out originals (0.5 = none)."""
    wall_seconds: float
    """The method's own time (loading and evaluation excluded)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "task_accuracy": self.task_accuracy,
            "revised_task_accuracy": self.revised_task_accuracy,
            "leakage": [[x.attribute, x.probe_accuracy, x.chance_accuracy] for x in self.leakage],
            "membership_inference_auc": self.membership_inference_auc,
            "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Figures:
        leakage = tuple(Leakage(str(a), float(p), float(c)) for a, p, c in data["leakage"])
        return cls(
            float(data["task_accuracy"]),
            float(data["revised_task_accuracy"]),
            leakage,
            float(data["membership_inference_auc"]),
            float(data["wall_seconds"]),
        )


@dataclass(frozen=True)
class Outcome:
    model: Classifier
    """The new model: same class and config as the base, savable through the store."""
    figures: Figures
    reference: Figures | None
    """``retrain``'s figures on the same revision (cached); None without a cache."""
    method: str
    details: dict[str, float | str] = field(default_factory=dict)
    """Method-specific numbers: steps run, stopped_early, cache hit, …"""


class Progress(Protocol):
    def __call__(self, phase: str, fraction: float) -> None: ...


class Control:
    """Progress, cancellation and the wall-clock cap, checked at every step."""

    def __init__(
        self,
        budget: Budget,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.budget = budget
        self.progress = progress
        self.should_stop = should_stop
        self.started = time.perf_counter()
        self.stopped_early = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def tick(self, phase: str, fraction: float) -> bool:
        """Report progress; raise :class:`Cancelled` if asked to stop; return True when the
        wall-clock cap is reached (the caller stops early)."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled(f"cancelled during {phase}")
        if self.progress is not None:
            self.progress(phase, min(max(fraction, 0.0), 1.0))
        cap = self.budget.max_seconds
        if cap is not None and self.elapsed() >= cap:
            self.stopped_early = True
            return True
        return False
