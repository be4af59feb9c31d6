"""The one module of the service that touches the kernels: it runs a job's training.

:func:`run` is what a worker thread executes: load the base version's weights (already read
and checked by the publisher), open the revision's views, call
:func:`services.kernels.unlearning.unlearn`, and hand back the new weights as safetensors
bytes plus the figures as plain dicts. Nothing here knows gRPC or the database.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.unlearning.jobs import JobSpec

METHODS: tuple[str, ...] = ("retrain", "finetune", "feature", "scrub")
"""The methods of ``services.kernels.unlearning`` (a test holds the two equal)."""


class Stopped(Exception):
    """The job was asked to stop (cancelled, its replica stopping, its lease lost)."""


@dataclass(frozen=True)
class Request:
    spec: JobSpec
    base_version: int
    base_manifest: dict[str, Any]
    base_blob: bytes
    threads: int
    max_dataset_size: int
    cache_dir: Path
    reference_steps: int | None = None
    """Steps of the retrained reference; None = its full recipe."""
    max_seconds: float | None = None


@dataclass(frozen=True)
class Result:
    blob: bytes
    config: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, float]
    """The new version's figures, flat (ModelVersion.metrics)."""
    report: dict[str, Any]
    """``{"figures": …, "reference": … | None, "details": …}`` (Figures.to_dict form)."""


def parse_options(method: str, options: dict[str, str]) -> dict[str, float]:
    """The typed options of ``method``; unknown keys and bad values are INVALID_ARGUMENT."""
    from services.kernels.unlearning.options import parse_options as parse

    return parse(method, options)


@functools.lru_cache(maxsize=32)
def _attributes_of(uri: str) -> tuple[str, ...]:
    from services.kernels.data import open_dataset

    return tuple(open_dataset(uri, resolution=8).attribute_names)


def known_attributes(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The attributes labelled in the data the model was trained on (its manifest's
    ``data.uri``): the ones a job may ask it to forget."""
    data = manifest.get("data", {})
    listed = data.get("attributes") or manifest.get("config", {}).get("attributes")
    if listed:
        return tuple(listed)
    uri = str(data.get("uri", ""))
    if not uri:
        return ()
    try:
        return _attributes_of(uri)
    except (InvalidArgument, OSError, ValueError):
        return ()


def run(
    request: Request,
    progress: Callable[[str, float], None],
    should_stop: Callable[[], bool],
) -> Result:
    """Train ``request`` (on the calling thread); raises :class:`Stopped` when asked to."""
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import save as save_safetensors

    from services.kernels.classifiers import ClassifierConfig, build_classifier
    from services.kernels.unlearning import (
        Budget,
        Cancelled,
        Revision,
        open_views,
        unlearn,
    )

    spec, manifest = request.spec, request.base_manifest
    config = dict(manifest.get("config", {}))
    model = build_classifier(ClassifierConfig.from_dict(config))
    model.load_state_dict(load_safetensors(request.base_blob))
    model.eval()
    progress("loading", 0.0)
    revision = Revision(spec.dataset_uri, spec.removed_ids, spec.replaced_ids)
    base_uri = str(manifest.get("data", {}).get("uri", ""))
    if not base_uri:
        raise InvalidArgument("the base model's manifest names no training data (data.uri)")
    resolution = int(config.get("resolution") or manifest.get("data", {}).get("resolution", 32))
    views = open_views(base_uri, revision, resolution, cache_dir=request.cache_dir / "data")
    if len(views.revised) > request.max_dataset_size:
        raise InvalidArgument(
            f"the revised dataset has {len(views.revised)} samples, above this server's limit "
            f"of {request.max_dataset_size} (setting max_dataset_size)"
        )
    seed = str(int(float(spec.options.get("seed", "0"))))
    reference_options = {"seed": seed}
    if request.reference_steps is not None:
        reference_options["steps"] = str(request.reference_steps)

    def report(phase: str, fraction: float) -> None:
        progress(phase, fraction)

    try:
        outcome = unlearn(
            spec.method,
            model,
            views,
            list(spec.attributes),
            dict(spec.options),
            Budget(threads=request.threads, max_seconds=request.max_seconds),
            progress=report,
            should_stop=should_stop,
            reference_cache=request.cache_dir / "reference",
            reference_options=reference_options,
            reference_budget=Budget(threads=request.threads),
        )
    except Cancelled:
        raise Stopped() from None
    state = {k: v.detach().cpu().contiguous() for k, v in outcome.model.state_dict().items()}
    blob = save_safetensors(state)
    figures = outcome.figures.to_dict()
    reference = None if outcome.reference is None else outcome.reference.to_dict()
    metrics = {
        "task_accuracy": float(outcome.figures.task_accuracy),
        "revised_task_accuracy": float(outcome.figures.revised_task_accuracy),
        "membership_inference_auc": float(outcome.figures.membership_inference_auc),
        "wall_seconds": float(outcome.figures.wall_seconds),
    }
    for leak in outcome.figures.leakage:
        metrics[f"probe_accuracy.{leak.attribute}"] = float(leak.probe_accuracy)
    data = {
        "uri": spec.dataset_uri,
        "n": len(views.revised),
        "resolution": resolution,
        "base_uri": base_uri,
    }
    return Result(
        blob=blob,
        config=config,
        data=data,
        metrics=metrics,
        report={
            "figures": figures,
            "reference": reference,
            "details": {k: str(v) for k, v in outcome.details.items()},
        },
    )


def store_root(configured: Path | None) -> Path:
    """``configured``, else ``$VEIL_MODEL_STORE``, else the packaged store (the rule of
    ``services.serving.entries.store_root``, which Triton's models follow)."""
    import os

    from services.kernels.store import DEFAULT_ROOT

    chosen = str(configured or "") or os.environ.get("VEIL_MODEL_STORE", "")
    return Path(chosen) if chosen else DEFAULT_ROOT
