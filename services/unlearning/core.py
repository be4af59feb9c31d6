"""The unlearning service without gRPC: jobs, their runner, and the model versions.

:class:`Unlearning` checks a request against the limits and the base model before a job
row exists (so a bad request never becomes a failed job), keeps jobs in the
:class:`~services.unlearning.jobs.JobStore`, and runs them: a poller claims queued jobs
(at most ``max_running_jobs`` at once) and trains each on a thread of its own bounded pool
(the :class:`~services.unlearning.ports.Workers` port, which the app wires to a
``services.runtime.workers.WorkerPool``), off the event loop, renewing the job's lease
while it runs. A finished job's model is published as the next version
(:mod:`services.unlearning.publishing`: temp dir + rename) and loaded by the inference
backend before the job turns SUCCEEDED; any failure on the way removes what was written.

Tenancy: a job, and a version above 1, belong to the tenant that made them; another
tenant's are NOT_FOUND. Version 1 (the trained base model) is every tenant's.

The job threads and the backend's loader are ports (:mod:`services.unlearning.ports`):
the core imports no grpc, no generated stubs, no runtime, and loads no torch until a job
trains (docs/ARCHITECTURE.md, "Cores without transport").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VeilError,
)
from services.kernels.manifests import MANIFEST, Manifest, kept_entry, manifest_lineage
from services.unlearning import trained, training
from services.unlearning.jobs import CANCELLED, FAILED, Job, JobSpec, JobStore
from services.unlearning.metrics import UnlearningMetrics
from services.unlearning.ports import Loader, Workers
from services.unlearning.publishing import Publisher, Weights
from services.unlearning.registry import (
    BASE,
    LOADING,
    PRODUCTION,
    READY,
    RETIRED,
    SERVABLE,
    SHARED,
    Version,
    with_aliases,
)
from services.unlearning.settings import UnlearningSettings
from services.unlearning.trained import Trained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """A model as a tenant sees it (the registry's ``RegisteredModel``)."""

    name: str
    aliases: dict[str, int]
    resolution: int
    num_classes: int
    target: str
    kind: str = "classifier"
    shared: bool = False
    """A trained model every tenant shares (:mod:`services.unlearning.trained`)."""
    current: Version | None = None
    """The version that version 0 names for the tenant."""


@dataclass(frozen=True)
class Page:
    offset: int
    size: int


@dataclass(frozen=True)
class Event:
    """One change of a watched job: the job as it stands now."""

    job: Job


class Unlearning:
    def __init__(
        self,
        settings: UnlearningSettings,
        store: JobStore,
        publisher: Publisher,
        load: Loader,
        metrics: UnlearningMetrics,
        workers: Workers,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.load = load
        self.metrics = metrics
        self.worker = uuid.uuid4().hex[:16]
        self.pool = workers
        self._running: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        """Set by stop(): every job thread stops at its next step."""
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the tables, register the model store's entries the registry lacks, then
        begin taking jobs (those a dead replica left included)."""
        await asyncio.to_thread(self.store.create_schema)
        adopted = await asyncio.to_thread(trained.adopt, self.store, self.publisher.store)
        if adopted:
            log.info("registered %d trained models from the model store", len(adopted))
        self.pool.start()
        self._closing = False
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        """Stop taking jobs and ask running ones to stop; they stay RUNNING in the store,
        their leases ended, so that a replica (or this one, restarted) takes them over."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        self._closing = True
        for task in list(self._running.values()):
            task.cancel()
        for task in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.pool.shutdown()
        with contextlib.suppress(VeilError):
            await asyncio.to_thread(self.store.release, self.worker)

    async def ready(self) -> bool:
        return await asyncio.to_thread(self.store.ping)

    # -- jobs ------------------------------------------------------------------------------

    async def submit(self, tenant: str, spec: JobSpec) -> Job:
        """Check ``spec`` (limits, method, options, base model, attributes, the revision's
        dataset and sample ids) and queue it; with a known idempotency key, the original
        job."""
        self._check_limits(spec)
        self._check_model(spec.model_name)
        found = await self._resolve(tenant, spec.model_name, spec.base_version)
        base = found.version
        manifest = await asyncio.to_thread(self.publisher.manifest, found.serial)
        known = training.known_attributes(manifest)
        unknown = [a for a in spec.attributes if a not in known]
        if unknown:
            raise InvalidArgument(
                f"attributes {unknown} are not labelled in the data of {spec.model_name} "
                f"version {base}; known: {list(known)}",
                details={"field": "forget_attributes", "known": ",".join(known)},
            )
        await asyncio.to_thread(training.check_revision, spec, manifest)
        if spec.trained_entry:
            await asyncio.to_thread(
                training.check_trained, tenant, spec, manifest, self.publisher.store
            )
        job = await asyncio.to_thread(self.store.submit, tenant, spec, base, _fingerprint(spec))
        self.metrics.submitted.labels(method=spec.method).inc()
        self._wake.set()
        return job

    def _check_limits(self, spec: JobSpec) -> None:
        s = self.settings
        if spec.method not in training.METHODS:
            raise InvalidArgument(
                f"method must be one of {list(training.METHODS)}",
                details={"field": "method"},
            )
        if not spec.dataset_uri:
            raise InvalidArgument(
                "revision.dataset_uri is required", details={"field": "revision.dataset_uri"}
            )
        if not spec.attributes:
            raise InvalidArgument(
                "forget_attributes must name at least one attribute",
                details={"field": "forget_attributes"},
            )
        _cap(len(spec.attributes), s.max_attributes, "forget_attributes", "max_attributes")
        ids = len(spec.removed_ids) + len(spec.replaced_ids)
        _cap(ids, s.max_sample_ids, "revision sample ids", "max_sample_ids")
        _cap(len(spec.options), s.max_options, "options", "max_options")
        for key, value in spec.options.items():
            _cap(max(len(key), len(value)), s.max_option_chars, "an option", "max_option_chars")
        size = _dataset_size(spec.dataset_uri)
        if size is not None:
            _cap(size, s.max_dataset_size, "the revised dataset", "max_dataset_size")
        values = training.parse_options(spec.method, spec.options)
        if not spec.trained_entry:  # a retrain made at scale trains nothing here
            _cap(int(values.get("steps", 0)), s.max_steps, "option steps", "max_steps")
        for key in ("fit_samples", "batch_size"):  # the defaults adapt to the data
            if key in spec.options:
                _cap(int(values[key]), s.max_dataset_size, f"option {key}", "max_dataset_size")

    async def get(self, tenant: str, job_id: str) -> Job:
        return await asyncio.to_thread(self.store.get, tenant, job_id)

    async def list_jobs(
        self, tenant: str, state: str, model_name: str, page: Page
    ) -> tuple[list[Job], int]:
        return await asyncio.to_thread(
            self.store.list_jobs, tenant, state, model_name, page.offset, page.size
        )

    async def cancel(self, tenant: str, job_id: str, reason: str) -> Job:
        job = await asyncio.to_thread(self.store.cancel, tenant, job_id, reason)
        if job.state == CANCELLED:
            self.metrics.finished.labels(state=CANCELLED).inc()
        return job

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[Job]:
        """The job now, then each time its state, phase or progress changes; ends after the
        terminal state. Polls the store, so a job run by another replica is watched too."""
        last: tuple[str, str, float, str] | None = None
        while True:
            job = await self.get(tenant, job_id)
            now = (job.state, job.phase, round(job.progress, 3), job.message)
            if now != last:
                last = now
                yield job
            if job.terminal:
                return
            await asyncio.sleep(self.settings.poll_s)

    # -- versions --------------------------------------------------------------------------

    async def _resolve(self, tenant: str, model_name: str, version: int) -> Version:
        """The version ``version`` names for ``tenant`` (0 = its ``production`` alias);
        NOT_FOUND when unknown, another tenant's, or not servable."""
        found = await self.get_version(tenant, model_name, version)
        if found.state not in SERVABLE:
            raise NotFound(f"{model_name} version {found.version} is {found.state}, not servable")
        return found

    def _check_model(self, model_name: str) -> None:
        if model_name != self.settings.model_name:
            raise NotFound(
                f"no model {model_name!r}; this service publishes {self.settings.model_name!r}"
            )

    async def _base(self) -> Version:
        manifest = await asyncio.to_thread(self.publisher.manifest, 1)
        metrics = {
            k.replace(" ", "_"): float(v)
            for k, v in manifest.get("metrics", {}).items()
            if isinstance(v, int | float)
        }
        created = manifest.get("created_at", "")
        return Version(
            model_name=self.settings.model_name,
            version=BASE,
            tenant="",
            state=READY,
            parent_version=0,
            parent_job_id="",
            method="",
            metrics=metrics,
            created_at=_epoch(created),
            serial=BASE,
            lineage=manifest_lineage(Manifest.from_dict(manifest)),
        )

    async def get_version(self, tenant: str, model_name: str, version: int) -> Version:
        """The tenant's version ``version`` (0 = what its ``production`` alias names, else
        its latest READY one, else the base), with the aliases that name it; another
        tenant's is NOT_FOUND, word for word as an unknown number. A shared trained model's
        version 0 is its newest registration."""
        if version < 0:
            raise InvalidArgument("version must be >= 0", details={"field": "ref.version"})
        shared = await self._shared(model_name)
        if shared is not None:
            return await self._shared_version(model_name, shared, version)
        names = await asyncio.to_thread(self.store.aliases, tenant, model_name)
        if version == 0 and PRODUCTION in names:
            version = names[PRODUCTION]
        if version == 0:
            latest = await asyncio.to_thread(self.store.latest_ready, tenant, model_name)
            found = latest if latest is not None else await self._base()
        elif version == BASE:
            found = await self._base()
        else:
            hit = await asyncio.to_thread(self.store.get_version, tenant, model_name, version)
            if hit is None:
                raise NotFound(f"no version {version} of {model_name!r}")
            found = hit
        return with_aliases(found, names)

    async def _shared(self, model_name: str) -> list[Trained] | None:
        """A shared trained model's registrations, newest first; None for the model this
        service publishes; NOT_FOUND for any other name."""
        if model_name == self.settings.model_name:
            return None
        found = await asyncio.to_thread(self.store.trained_versions, model_name)
        if not found:
            raise NotFound(f"no model {model_name!r}")
        return found

    def serving_entry(self, registration: Trained) -> str | None:
        """The model store entry that holds ``registration``'s content: its kept copy
        (``trained.keep``), else the entry itself while it is the newest; None when
        neither (an older registration of a kind that is not kept: not servable)."""
        kept = kept_entry(registration.name, registration.number)
        if (self.publisher.store / kept / MANIFEST).is_file():
            return kept
        return registration.name if registration.current else None

    async def shared_registration(
        self,
        model_name: str,
        version: int,
        shared: list[Trained] | None = None,
        names: dict[str, int] | None = None,
    ) -> Trained:
        """Registration ``version`` of a shared trained model (0: what the operator's
        ``production`` alias names, else the newest); NOT_FOUND when there is none.
        ``shared`` and ``names``: its registrations and aliases, when the caller has read
        them already."""
        if shared is None:
            shared = await self._shared(model_name)
            if shared is None:
                raise NotFound(f"{model_name!r} is not a shared trained model")
        if version == 0:
            if names is None:
                names = await asyncio.to_thread(self.store.aliases, SHARED, model_name)
            version = names.get(PRODUCTION, 0)
        match = [t for t in shared if t.number == version or (version == 0 and t.current)]
        if not match:
            raise NotFound(f"no version {version} of {model_name!r}")
        return match[0]

    async def _shared_version(
        self, model_name: str, shared: list[Trained], version: int
    ) -> Version:
        """As :meth:`shared_registration`, as a version: READY when it is servable
        (:meth:`serving_entry`), RETIRED otherwise, with the operator's aliases."""
        names = await asyncio.to_thread(self.store.aliases, SHARED, model_name)
        found = await self.shared_registration(model_name, version, shared, names)
        return with_aliases(self._as_version(found), names)

    def _as_version(self, registration: Trained) -> Version:
        state = READY if self.serving_entry(registration) is not None else RETIRED
        return replace(registration.as_version(), state=state)

    async def _shared_model(self, newest: Trained) -> Model:
        return Model(
            name=newest.name,
            aliases=await asyncio.to_thread(self.store.aliases, SHARED, newest.name),
            resolution=newest.resolution,
            num_classes=newest.num_classes,
            target=newest.target,
            kind=newest.kind,
            shared=True,
            current=await self.get_version("", newest.name, 0),
        )

    async def model(self, tenant: str, model_name: str) -> Model:
        """What ``model_name`` serves (from its base's manifest, or the registration of a
        shared trained model), the tenant's aliases and what its version 0 names."""
        shared = await self._shared(model_name)
        if shared is not None:
            return await self._shared_model(shared[0])
        manifest = await asyncio.to_thread(self.publisher.manifest, BASE)
        config = manifest.get("config", {})
        names = await asyncio.to_thread(self.store.aliases, tenant, model_name)
        return Model(
            name=model_name,
            aliases=names,
            resolution=int(config.get("resolution", 32)),
            num_classes=int(config.get("num_classes", 2)),
            target=str(config.get("target", "")),
            current=await self.get_version(tenant, model_name, 0),
        )

    async def models(self, tenant: str) -> list[Model]:
        """The models the tenant can name: the one this service publishes versions of,
        then every shared trained model, by name."""
        served = await self.model(tenant, self.settings.model_name)
        trained = await asyncio.to_thread(self.store.trained_models)
        return [served] + [await self._shared_model(t) for t in trained if t.name != served.name]

    async def resolve(self, tenant: str, model_name: str, version: int, alias: str) -> Version:
        """The servable version a reference names for ``tenant``: ``version``, or (0) what
        ``alias`` names (``production`` when empty; unset = the latest READY). An unset
        alias other than ``production`` is NOT_FOUND. A shared trained model resolves to the
        registration the operator's alias names (``production``, unset: the newest), which
        must be servable (:meth:`serving_entry`)."""
        shared = await self._shared(model_name)
        if shared is not None:
            if version == 0 and alias and alias != PRODUCTION:
                names = await asyncio.to_thread(self.store.aliases, SHARED, model_name)
                if alias not in names:
                    raise NotFound(f"{model_name!r} has no alias {alias!r}")
                version = names[alias]
            found = await self.get_version(tenant, model_name, version)
            if found.state != READY:
                raise NotFound(
                    f"{model_name} version {found.version} was replaced in the model store"
                    " and not kept; it is not servable"
                )
            return found
        if version == 0 and alias and alias != PRODUCTION:
            names = await asyncio.to_thread(self.store.aliases, tenant, model_name)
            if alias not in names:
                raise NotFound(f"{model_name!r} has no alias {alias!r}")
            version = names[alias]
        return await self._resolve(tenant, model_name, version)

    async def set_alias(self, tenant: str, model_name: str, alias: str, version: int) -> Version:
        """Point the tenant's ``alias`` at its servable version ``version`` (>= 1). A shared
        trained model's aliases are the operator's: FAILED_PRECONDITION here (the servicer
        sends an operator's call to :meth:`set_shared_alias`)."""
        if version < 1:
            raise InvalidArgument("version must be >= 1", details={"field": "ref.version"})
        if await self._shared(model_name) is not None:
            raise FailedPrecondition(
                f"{model_name!r} is a shared trained model: only an operator (scope "
                "modelregistry:promote) moves its aliases, for every tenant",
                details={"field": "ref.name"},
            )
        await asyncio.to_thread(self.store.set_alias, tenant, model_name, alias, version)
        return await self.get_version(tenant, model_name, version)

    async def set_shared_alias(self, model_name: str, alias: str, version: int) -> Version:
        """Point the operator's ``alias`` of a shared trained model (every tenant's) at its
        registration ``version`` (>= 1), which must be servable: FAILED_PRECONDITION for a
        registration the store no longer holds."""
        if version < 1:
            raise InvalidArgument("version must be >= 1", details={"field": "ref.version"})
        found = await self.shared_registration(model_name, version)
        if self.serving_entry(found) is None:
            raise FailedPrecondition(
                f"{model_name} version {version} was replaced in the model store and not "
                f"kept (only kinds {', '.join(trained.KEPT_KINDS)} are): it cannot be served",
                details={"field": "ref.version"},
            )
        served = (await self.shared_registration(model_name, 0)).number  # before the move
        await asyncio.to_thread(self.store.set_shared_alias, model_name, alias, version, served)
        return await self.get_version("", model_name, version)

    async def list_versions(
        self, tenant: str, model_name: str, page: Page
    ) -> tuple[list[Version], int]:
        """The tenant's versions, newest first, then version 1 (the base) last; a shared
        trained model's registrations, newest first."""
        shared = await self._shared(model_name)
        if shared is not None:
            names = await asyncio.to_thread(self.store.aliases, SHARED, model_name)
            part = shared[page.offset : page.offset + page.size]
            return [with_aliases(self._as_version(t), names) for t in part], len(shared)
        rows, total = await asyncio.to_thread(
            self.store.list_versions, tenant, model_name, page.offset, page.size
        )
        if page.offset <= total < page.offset + page.size:
            rows.append(await self._base())
        names = await asyncio.to_thread(self.store.aliases, tenant, model_name)
        return [with_aliases(v, names) for v in rows], total + 1

    async def rollback(
        self, tenant: str, model_name: str, target: int, reason: str, key: str
    ) -> Version:
        """Publish ``target``'s weights as a new version and retire the tenant's versions
        between the two; ``key`` makes a retry return the same version."""
        self._check_model(model_name)
        if target < 1:
            raise InvalidArgument(
                "target.version must be >= 1 (the version to roll back to)",
                details={"field": "target.version"},
            )
        if key:
            found = await asyncio.to_thread(self.store.version_by_key, tenant, model_name, key)
            if found is not None and found.state != LOADING:
                return found
        old = await self.get_version(tenant, model_name, target)
        if old.state not in SERVABLE:
            raise FailedPrecondition(f"version {target} is {old.state}; it cannot be served")
        lineage = {"command": f"RollbackModel to version {target}", "reason": reason}
        new = await asyncio.to_thread(
            self.store.allocate, tenant, model_name, target, "rollback", "", key, lineage
        )
        number, serial = new.version, new.serial
        published = False
        try:
            manifest = await asyncio.to_thread(self.publisher.manifest, old.serial)
            blob = await asyncio.to_thread(self.publisher.blob, old.serial)
            weights = Weights(
                blob=blob,
                config=manifest.get("config", {}),
                data=manifest.get("data", {}),
                metrics=manifest.get("metrics", {}),
                provenance={"parent_version": target, "method": "rollback", "reason": reason},
                command=f"RollbackModel to version {target}",
            )
            await asyncio.to_thread(self.publisher.publish, f"rb{serial}", serial, weights)
            published = True
            await self.load(model_name, serial)
        except BaseException:
            if published:
                await asyncio.to_thread(self.publisher.remove, serial)
            await asyncio.to_thread(self.publisher.sweep, f"rb{serial}")
            await asyncio.to_thread(self.store.delete_version, model_name, serial)
            raise
        await asyncio.to_thread(self.store.promote, model_name, serial, old.metrics)
        await asyncio.to_thread(self.store.retire_above, tenant, model_name, target, number)
        self.metrics.published.labels(method="rollback").inc()
        return await self.get_version(tenant, model_name, number)

    # -- the runner ------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            try:
                while len(self._running) < self.settings.max_running_jobs:
                    job = await asyncio.to_thread(
                        self.store.claim,
                        self.worker,
                        self.settings.lease_s,
                        self.settings.max_attempts,
                    )
                    if job is None:
                        break
                    self._running[job.job_id] = asyncio.create_task(self._run(job))
                await self._refresh_gauge()
            except VeilError as exc:  # the database is down: next round
                log.warning("unlearning queue poll failed: %s", exc.message)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_s)

    async def _refresh_gauge(self) -> None:
        counts = await asyncio.to_thread(self.store.counts)
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            self.metrics.jobs.labels(state=state).set(counts.get(state, 0))

    async def _run(self, job: Job) -> None:
        started = time.perf_counter()
        state = FAILED
        try:
            await self._clean_leftovers(job.job_id)
            state = await self._train_and_publish(job)
        except asyncio.CancelledError:
            raise  # this replica stops: the lease lapses and the job is taken over
        except Exception:
            log.exception("unlearning job %s crashed", job.job_id)
            await asyncio.to_thread(
                self.store.finish, job.job_id, self.worker, FAILED, "internal error"
            )
        finally:
            self._running.pop(job.job_id, None)
            self._wake.set()
        self.metrics.finished.labels(state=state).inc()
        self.metrics.duration.labels(method=job.spec.method, state=state).observe(
            time.perf_counter() - started
        )

    async def _clean_leftovers(self, job_id: str) -> None:
        """Remove what an interrupted attempt of this job published halfway."""
        await asyncio.to_thread(self.publisher.sweep, job_id)
        for version in await asyncio.to_thread(self.store.unfinished_versions, job_id):
            await asyncio.to_thread(self.publisher.remove, version.serial)
            await asyncio.to_thread(self.store.delete_version, version.model_name, version.serial)

    async def _train_and_publish(self, job: Job) -> str:
        """Train, publish, load; the job's final state."""
        flags = {"cancel": False, "lost": False}
        phase: dict[str, Any] = {"name": "loading", "fraction": 0.0}

        def progress(name: str, fraction: float) -> None:
            # Phases restart at 0 (the method's, its evaluation, the reference's): the
            # job's progress is the furthest reached, so a watcher never sees it go back.
            phase["name"] = name
            phase["fraction"] = max(float(phase["fraction"]), fraction)

        def should_stop() -> bool:
            return flags["cancel"] or flags["lost"] or self._closing

        heart = asyncio.create_task(self._heartbeat(job.job_id, phase, flags))
        try:
            base = await self.get_version(job.tenant, job.spec.model_name, job.base_version)
            manifest = await asyncio.to_thread(self.publisher.manifest, base.serial)
            blob = await asyncio.to_thread(self.publisher.blob, base.serial)
            trained: tuple[dict[str, Any], bytes] | tuple[None, None] = (None, None)
            if job.spec.trained_entry:
                trained = await asyncio.to_thread(
                    training.trained_weights, job.tenant, job.spec, manifest, self.publisher.store
                )
            request = training.Request(
                spec=job.spec,
                base_version=job.base_version,
                base_manifest=manifest,
                base_blob=blob,
                threads=self.settings.job_threads,
                max_dataset_size=self.settings.max_dataset_size,
                cache_dir=self.settings.work_dir,
                reference_steps=self.settings.reference_steps,
                max_seconds=self.settings.max_job_seconds,
                trained_manifest=trained[0],
                trained_blob=trained[1],
            )
            result = await self.pool.run(training.run, request, progress, should_stop)
        except training.Stopped:
            if flags["lost"]:
                return FAILED
            message = "cancelled" if flags["cancel"] else "stopped"
            await asyncio.to_thread(self.store.finish, job.job_id, self.worker, CANCELLED, message)
            return CANCELLED
        except VeilError as exc:
            await asyncio.to_thread(self.store.finish, job.job_id, self.worker, FAILED, exc.message)
            return FAILED
        finally:
            heart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heart
        return await self._publish(job, result)

    async def _publish(self, job: Job, result: training.Result) -> str:
        tenant, name = job.tenant, job.spec.model_name
        await asyncio.to_thread(
            self.store.heartbeat, job.job_id, self.worker, self.settings.lease_s, "publishing", 0.99
        )
        lineage = {
            "command": f"unlearning job {job.job_id} ({job.spec.method})",
            "data": job.spec.dataset_uri,
            "removed": len(job.spec.removed_ids),
            "replaced": len(job.spec.replaced_ids),
            "attributes": list(job.spec.attributes),
        }
        if job.spec.trained_entry:  # a retrain made at scale, published as it was trained
            lineage["trained_entry"] = job.spec.trained_entry
            lineage["trained_sha256"] = result.data["trained_sha256"]
            lineage["trained_command"] = result.data["trained_command"]
        new = await asyncio.to_thread(
            self.store.allocate,
            tenant,
            name,
            job.base_version,
            job.spec.method,
            job.job_id,
            "",
            lineage,
        )
        number, serial = new.version, new.serial
        weights = Weights(
            blob=result.blob,
            config=result.config,
            data=result.data,
            metrics=result.metrics,
            provenance={
                "parent_version": job.base_version,
                "method": job.spec.method,
                "job_id": job.job_id,
                "attributes": list(job.spec.attributes),
                "removed": len(job.spec.removed_ids),
                "replaced": len(job.spec.replaced_ids),
            },
            command=f"unlearning job {job.job_id} ({job.spec.method})",
        )
        try:
            await asyncio.to_thread(self.publisher.publish, job.job_id, serial, weights)
        except (VeilError, OSError) as exc:  # nothing of this version is left in place
            await asyncio.to_thread(self.publisher.sweep, job.job_id)
            await asyncio.to_thread(self.store.delete_version, name, serial)
            reason = exc.message if isinstance(exc, VeilError) else type(exc).__name__
            await asyncio.to_thread(
                self.store.finish, job.job_id, self.worker, FAILED, f"publishing failed: {reason}"
            )
            return FAILED
        try:
            await self.load(name, serial)
            done = await asyncio.to_thread(
                self.store.succeed,
                job.job_id,
                self.worker,
                new,
                result.metrics,
                result.report,
            )
        except VeilError as exc:
            await self._unpublish(name, serial)
            await asyncio.to_thread(
                self.store.finish,
                job.job_id,
                self.worker,
                FAILED,
                f"publishing version {number} failed: {exc.message}",
            )
            return FAILED
        except BaseException:
            await self._unpublish(name, serial)
            raise
        if not done:  # cancelled or taken over meanwhile: this version was never announced
            await self._unpublish(name, serial)
            return CANCELLED
        self.metrics.published.labels(method=job.spec.method).inc()
        return "succeeded"

    async def _unpublish(self, name: str, serial: int) -> None:
        await asyncio.to_thread(self.publisher.remove, serial)
        await asyncio.to_thread(self.store.delete_version, name, serial)

    async def _heartbeat(self, job_id: str, phase: dict[str, Any], flags: dict[str, bool]) -> None:
        """Renew the lease and record progress every ``lease_s / 3`` (at most ``poll_s``)."""
        every = min(self.settings.lease_s / 3, max(self.settings.poll_s, 0.2))
        while True:
            try:
                mine, cancel = await asyncio.to_thread(
                    self.store.heartbeat,
                    job_id,
                    self.worker,
                    self.settings.lease_s,
                    str(phase["name"]),
                    0.95 * float(phase["fraction"]),
                )
                flags["cancel"] = flags["cancel"] or cancel
                flags["lost"] = flags["lost"] or not mine
            except VeilError as exc:
                log.warning("lease renewal of job %s failed: %s", job_id, exc.message)
            await asyncio.sleep(every)


def _cap(value: int, limit: int, what: str, setting: str) -> None:
    if value > limit:
        raise InvalidArgument(
            f"{what}: {value} is above this server's limit of {limit} (setting {setting})",
            details={"limit": setting, setting: limit},
        )


def _dataset_size(uri: str) -> int | None:
    """``n`` of a dataset URI's query (synthfaces, image folders cut to n), if it has one."""
    values = parse_qs(urlsplit(uri).query).get("n")
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        raise InvalidArgument(
            f"n of the dataset URI must be an integer; got {values[0]!r}",
            details={"field": "revision.dataset_uri"},
        ) from None


def _fingerprint(spec: JobSpec) -> str:
    return hashlib.sha256(spec.to_json().encode()).hexdigest()


def _epoch(iso: str) -> float:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
