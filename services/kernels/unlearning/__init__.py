"""Unlearning: update a trained classifier so it behaves as if trained on revised data.

One interface for every method (DESIGN.md, "Unlearning"; issue #16)::

    views = open_views(manifest.data["uri"], Revision(...), resolution)
    outcome = unlearn("feature", model, views, ["male", "old"], {}, Budget(),
                      reference_cache=Path(...))

``retrain`` is the reference (cached per revision under ``reference_cache``), ``finetune``
the naive baseline, ``feature`` closed-form feature erasure + head repair
(:mod:`.feature`), ``scrub`` SCRUB (Kurmanji et al., NeurIPS 2023; :mod:`.scrub`). Every
outcome carries the figures of :mod:`.evaluate` and, with a cache, ``retrain``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from services.common.errors import InvalidArgument
from services.kernels.classifiers import Classifier
from services.kernels.unlearning import cache
from services.kernels.unlearning.core import (
    PHASES,
    Budget,
    Cancelled,
    Control,
    Figures,
    Leakage,
    Outcome,
    Progress,
    Revision,
)
from services.kernels.unlearning.evaluate import attribute_columns, figures
from services.kernels.unlearning.feature import feature
from services.kernels.unlearning.methods import finetune, retrain
from services.kernels.unlearning.options import method_options, parse_options
from services.kernels.unlearning.scrub import scrub
from services.kernels.unlearning.views import Views, ideal_revision, open_views

METHODS: tuple[str, ...] = ("retrain", "finetune", "feature", "scrub")
_RUN = {"retrain": retrain, "finetune": finetune, "feature": feature, "scrub": scrub}

__all__ = [
    "METHODS",
    "PHASES",
    "Budget",
    "Cancelled",
    "Figures",
    "Leakage",
    "Outcome",
    "Progress",
    "Revision",
    "Views",
    "adopt_retrained",
    "ideal_revision",
    "method_options",
    "open_views",
    "reference",
    "unlearn",
]


def _run(
    method: str,
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    values: dict[str, float],
    budget: Budget,
    control: Control,
) -> tuple[Classifier, Figures, dict[str, float | str]]:
    control.started = time.perf_counter()
    new, details = _RUN[method](model, views, attributes, values, budget.steps, control)
    wall = control.elapsed()
    details["stopped_early"] = "true" if control.stopped_early else "false"
    result = figures(new, views, attributes, wall, control, seed=int(values["seed"]))
    return new.eval(), result, details


def adopt_retrained(
    trained: Classifier,
    views: Views,
    attributes: Sequence[str],
    wall_seconds: float,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """A ``retrain`` made elsewhere (at scale: ``veil train classifier`` on the revised
    data, under torchrun): ``trained``'s figures on ``views``, as :func:`unlearn` gives a
    retrain's, and its own reference (retraining is the reference). ``wall_seconds``: the
    training's wall time, as its manifest records it."""
    attribute_columns(views, attributes)
    control = Control(Budget(), progress, should_stop)
    control.started = time.perf_counter()
    result = figures(trained.eval(), views, attributes, wall_seconds, control, seed=seed)
    details: dict[str, float | str] = {"trained_elsewhere": "true", "stopped_early": "false"}
    return Outcome(trained, result, result, "retrain", details)


def reference(
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    cache_root: Path,
    options: Mapping[str, str] | None = None,
    budget: Budget | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Classifier, Figures, dict[str, float | str]]:
    """``retrain``'s model, figures and details on ``views``: from ``cache_root`` when
    there, else computed and stored (details["cache"] says which)."""
    budget = budget or Budget()
    values = parse_options("retrain", options or {})
    key = cache.reference_key(model, views, attributes, values, budget.steps)
    hit = cache.load(cache_root, key)
    if hit is not None:
        new, result, details = hit
        return new, result, {**details, "cache": "hit"}
    control = Control(budget, progress, should_stop)
    new, result, details = _run("retrain", model, views, attributes, values, budget, control)
    if not control.stopped_early:  # a truncated run is no reference
        cache.save(cache_root, key, new, result, details)
    return new, result, {**details, "cache": "miss"}


def unlearn(
    method: str,
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    options: Mapping[str, str],
    budget: Budget,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    reference_cache: Path | None = None,
    reference_options: Mapping[str, str] | None = None,
    reference_budget: Budget | None = None,
) -> Outcome:
    """Run ``method`` on ``model`` for ``views``; see the module docstring.

    ``reference_cache``: where ``retrain``'s reference lives (computed on a miss, with
    ``reference_options``/``reference_budget``, default: its full recipe with the job's
    seed); without it ``Outcome.reference`` is None. Raises :class:`Cancelled` when
    ``should_stop()`` turns true, :class:`InvalidArgument` for an unknown method, option
    or attribute (naming the known ones)."""
    if method not in METHODS:
        raise InvalidArgument(
            f"unknown method {method!r}; known: {list(METHODS)}",
            details={"known": ",".join(METHODS)},
        )
    values = parse_options(method, options)
    attribute_columns(views, attributes)
    previous = torch.get_num_threads()
    if budget.threads is not None:
        torch.set_num_threads(budget.threads)
    try:
        ref_options = dict(reference_options or {"seed": str(int(values["seed"]))})
        if method == "retrain" and reference_cache is not None:
            new, result, details = reference(
                model, views, attributes, reference_cache, options, budget, progress, should_stop
            )
            return Outcome(new, result, result, method, details)
        control = Control(budget, progress, should_stop)
        new, result, details = _run(method, model, views, attributes, values, budget, control)
        ref = None
        if reference_cache is not None:
            _, ref, ref_details = reference(
                model,
                views,
                attributes,
                reference_cache,
                ref_options,
                reference_budget,
                progress,
                should_stop,
            )
            details["reference_cache"] = str(ref_details["cache"])
        return Outcome(new, result, ref, method, details)
    finally:
        torch.set_num_threads(previous)
