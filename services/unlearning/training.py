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

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
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
    trained_manifest: dict[str, Any] | None = None
    """A retrain made at scale (``JobSpec.trained_entry``): its manifest and weights,
    evaluated and published instead of training here."""
    trained_blob: bytes | None = None


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


@functools.lru_cache(maxsize=8)
def _ids_of(uri: str) -> frozenset[str]:
    from services.kernels.data import open_dataset

    return frozenset(open_dataset(uri, resolution=8).sample_ids)


def check_revision(spec: JobSpec, manifest: dict[str, Any]) -> None:
    """Refuse now what :func:`run` would refuse after the job was queued: a revised dataset
    URI that does not open (unknown scheme, bad or unknown parameters — a ``resample`` of
    an attribute the generator lacks included —, a missing root), removed or replaced ids
    that are not in the base model's training set (its manifest's ``data.uri``), and
    replaced ids the revised set lacks. Opening a dataset reads its ids and labels, never
    its images: 1.0 s for 20 000 synthfaces (``open_dataset("synthfaces://?n=20000&seed=0",
    resolution=8)``, 2 shared cores, 2026-12-07)."""
    from services.kernels.data import open_dataset

    try:
        revised = open_dataset(spec.dataset_uri, resolution=8)
    except (InvalidArgument, NotFound, OSError, ValueError) as exc:
        raise InvalidArgument(
            f"revision.dataset_uri: {getattr(exc, 'message', None) or exc}",
            details={"field": "revision.dataset_uri"},
        ) from None
    base_uri = str(manifest.get("data", {}).get("uri", ""))
    if not base_uri:
        raise InvalidArgument("the base model's manifest names no training data (data.uri)")
    try:
        base = _ids_of(base_uri)
    except (InvalidArgument, NotFound, OSError, ValueError) as exc:
        raise FailedPrecondition(
            f"the base model's training data {base_uri!r} cannot be opened here: "
            f"{getattr(exc, 'message', None) or exc}"
        ) from None
    present = set(revised.sample_ids)
    for name, ids, known, where in (
        (
            "removed_sample_ids",
            spec.removed_ids,
            base,
            f"the base model's training set ({base_uri})",
        ),
        (
            "replaced_sample_ids",
            spec.replaced_ids,
            base,
            f"the base model's training set ({base_uri})",
        ),
        ("replaced_sample_ids", spec.replaced_ids, present, "the revised dataset"),
    ):
        missing = [i for i in ids if i not in known]
        if missing:
            raise InvalidArgument(
                f"revision.{name}: {len(missing)} ids are not in {where}, e.g. {missing[:3]}",
                details={"field": f"revision.{name}", "unknown_ids": ",".join(missing[:5])},
            )


TRAINED_CONFIG = ("arch", "num_classes", "resolution", "width", "role", "target")
"""What a retrain made at scale must share with the base model: a fresh model of its
config (what ``retrain`` trains here)."""


def check_trained(tenant: str, spec: JobSpec, base: dict[str, Any], root: Path) -> dict[str, Any]:
    """The manifest of ``spec.trained_entry`` in the store at ``root``, if it is a retrain
    for ``tenant`` of the base model (manifest ``base``) on exactly the revision's dataset:
    trained for that tenant (``veil train classifier --tenant``; an entry of another tenant,
    or of none, is answered word for word as a missing one), a classifier of the base's
    config (:data:`TRAINED_CONFIG`) whose training data is ``spec.dataset_uri`` (a model
    that saw anything else is no retrain: the removed samples would not be guaranteed
    gone). FAILED_PRECONDITION otherwise, naming what differs."""
    from services.kernels.manifests import StoreReader

    field_ = {"field": "trained_entry"}
    if spec.method != "retrain":
        raise InvalidArgument("trained_entry is for method RETRAIN only", details=field_)
    missing = FailedPrecondition(
        f"the model store has no entry {spec.trained_entry!r} trained for this tenant: train "
        f"it first with `veil train classifier --data '{spec.dataset_uri}' --tenant "
        f"<tenant> --name {spec.trained_entry}` (docs/TRAINING.md)",
        details=field_,
    )
    try:
        trained = StoreReader(root).manifest(spec.trained_entry)
    except InvalidArgument as exc:
        raise InvalidArgument(f"trained_entry: {exc.message}", details=field_) from None
    except NotFound:
        raise missing from None
    if (trained.data or {}).get("tenant") != tenant:
        raise missing
    if trained.kind != "classifier":
        raise FailedPrecondition(
            f"{spec.trained_entry!r} is a {trained.kind}, not a classifier", details=field_
        )
    config = base.get("config", {})
    differ = [k for k in TRAINED_CONFIG if trained.config.get(k) != config.get(k)]
    if differ:
        raise FailedPrecondition(
            f"{spec.trained_entry!r} is not a model of the base's config: its "
            + ", ".join(f"{k} {trained.config.get(k)!r} (base {config.get(k)!r})" for k in differ),
            details={**field_, "differ": ",".join(differ)},
        )
    data = str((trained.data or {}).get("uri", ""))
    if data != spec.dataset_uri:
        raise FailedPrecondition(
            f"{spec.trained_entry!r} was trained on {data!r}, not on the revision's dataset "
            f"{spec.dataset_uri!r}: a retrain sees the revised data and nothing else",
            details=field_,
        )
    return {
        "name": trained.name,
        "config": trained.config,
        "sha256": trained.sha256,
        "command": trained.command,
        "metrics": trained.metrics,
    }


def trained_weights(
    tenant: str, spec: JobSpec, base: dict[str, Any], root: Path
) -> tuple[dict[str, Any], bytes]:
    """:func:`check_trained` again (the entry may have changed since the submission) and
    its weights, checked against their SHA-256."""
    from services.kernels.manifests import StoreReader

    manifest = check_trained(tenant, spec, base, root)
    checked, blob = StoreReader(root).blob(spec.trained_entry, kind="classifier")
    if checked.sha256 != manifest["sha256"]:
        raise FailedPrecondition(f"{spec.trained_entry!r} changed while it was read; retry")
    return manifest, blob


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
        adopt_retrained,
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
        if request.trained_manifest is not None and request.trained_blob is not None:
            trained = build_classifier(
                ClassifierConfig.from_dict(request.trained_manifest["config"])
            )
            trained.load_state_dict(load_safetensors(request.trained_blob))
            wall = float(request.trained_manifest["metrics"].get("wall time (s)", 0.0) or 0.0)
            outcome = adopt_retrained(
                trained, views, list(spec.attributes), wall, int(seed), report, should_stop
            )
        else:
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
    if request.trained_manifest is not None:
        data["trained_entry"] = spec.trained_entry
        data["trained_sha256"] = request.trained_manifest["sha256"]
        data["trained_command"] = request.trained_manifest["command"]
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
    """The model store versions are published into: ``configured``, else
    ``$VEIL_MODEL_STORE``, else ``<data dir>/unlearning/store`` seeded from the packaged
    store (:func:`seeded_store`) — never the install tree (site-packages, or the source
    tree of an editable install). Triton's models must read the same store."""
    import os

    from services.common.db import data_dir

    chosen = str(configured or "") or os.environ.get("VEIL_MODEL_STORE", "")
    return Path(chosen) if chosen else seeded_store(data_dir() / "unlearning" / "store")


def seeded_store(store: Path) -> Path:
    """``store``, holding a copy of every packaged entry (the base models a version 1 is):
    one it lacks, or whose content differs from the package's (an upgrade), is copied in
    whole and renamed into place. Published versions (``<entry>-vN``) are never touched."""
    import json
    import shutil

    from services.kernels.manifests import DEFAULT_ROOT, MANIFEST

    def sha(path: Path) -> str | None:
        try:
            return str(json.loads(path.read_text()).get("sha256"))
        except (OSError, ValueError):
            return None

    store.mkdir(parents=True, exist_ok=True)
    for manifest in sorted(DEFAULT_ROOT.glob(f"*/{MANIFEST}")):
        entry, target = manifest.parent, store / manifest.parent.name
        if sha(target / MANIFEST) == sha(manifest):
            continue
        fresh, stale = store / f".seed-{entry.name}", store / f".stale-{entry.name}"
        for leftover in (fresh, stale):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.copytree(entry, fresh)
        if target.exists():
            target.rename(stale)
        fresh.rename(target)  # a reader sees the old entry or the new one, whole
        shutil.rmtree(stale, ignore_errors=True)
    return store
