"""The sanitizer's core: previews, releases and their charges, without any transport.

Every image that leaves is charged first (DESIGN.md, step 6):

- a fresh draw (``Release`` with an ε, ``Sanitize``): Reserve at the accountant → draw the
  noise and x_T from a CSPRNG generator and decode → Commit → store the answer (if keyed)
  → return. A failed generation releases the reservation; a refused or unreachable
  accountant means nothing is generated or returned.
- a preview candidate itself: the choice depended on all k candidates, so the charge is
  their composition (one Gaussian with μ = √(Σ μ_i²): exact for Gaussian mechanisms).
- a batch (``SanitizeBatch``): a chunk of items is generated, then charged in one
  ``ChargeBatch`` call; only the items it accepts are returned.

A keyed request is answered from the session database on a retry (same image, same spend,
nothing charged). Ids that identify people (subject, dataset) never reach logs or metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from services.common.errors import (
    BudgetExhausted,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    VeilError,
)
from services.kernels.mechanism import (
    COMPLEMENTS,
    Calibration,
    Complement,
    calibrate,
    composed_mu,
    composition,
    preview_rngs,
    release_rng,
)
from services.sanitizer.faces import Box
from services.sanitizer.ledger import ChargeSpec, Ledger, Spent
from services.sanitizer.metrics import SanitizerMetrics
from services.sanitizer.pipeline import Draw, FaceChoice, Offload, Pipeline, Prepared
from services.sanitizer.sessions import Session, SessionStore, StoredRelease
from services.sanitizer.settings import SanitizerSettings

log = logging.getLogger(__name__)

MAX_ID_BYTES = 255


@dataclass(frozen=True)
class Caller:
    """Who asks: the tenant, and the one subject a subject-bound token acts for."""

    tenant: str
    subject: str | None = None


@dataclass(frozen=True)
class Request:
    """What a preview or a one-shot release asks for (validated by :meth:`Sanitizer.check`)."""

    dataset: str
    subject: str
    image: bytes
    weights: Mapping[str, float] = field(default_factory=dict)
    delta: float = 0.0
    steps: int = 0
    complement: str = ""
    face: FaceChoice = field(default_factory=FaceChoice)


@dataclass(frozen=True)
class Released:
    """A released image and its receipt."""

    image: bytes
    epsilon: float
    delta: float
    per_attribute: dict[str, float]
    spend_id: str
    face_box: Box
    composed_draws: int
    complement: str
    rdp_epsilon: float
    noise_multiplier: float
    accountant: str = "pld"
    replayed: bool = False

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("image")
        record["face_box"] = asdict(self.face_box)
        return record

    @classmethod
    def from_stored(cls, stored: StoredRelease) -> Released:
        data = dict(stored.result)
        data["face_box"] = Box(**data["face_box"])
        data["replayed"] = True
        return cls(image=stored.image, **data)


@dataclass(frozen=True)
class Candidate:
    index: int
    epsilon: float
    image: bytes


@dataclass(frozen=True)
class Preview:
    session_id: str
    candidates: list[Candidate]
    cost_if_released: tuple[float, dict[str, float]]
    delta: float
    expires_at: float
    face_box: Box


@dataclass(frozen=True)
class BatchItem:
    """One item of SanitizeBatch: its request, ε and idempotency key."""

    item_id: str
    request: Request
    epsilon: float
    key: str = ""


def _fingerprint(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else repr(part).encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def _check_id(value: str, name: str, *, required: bool = True) -> str:
    if required and not value:
        raise InvalidArgument(f"{name} is required", details={"field": name})
    if len(value.encode()) > MAX_ID_BYTES or "\x00" in value:
        raise InvalidArgument(
            f"{name} must be at most {MAX_ID_BYTES} UTF-8 bytes, without NUL",
            details={"field": name},
        )
    return value


class Sanitizer:
    """Previews, releases, batches; one instance per server."""

    def __init__(
        self,
        settings: SanitizerSettings,
        pipeline: Pipeline,
        store: SessionStore,
        ledger: Ledger,
        metrics: SanitizerMetrics,
        offload: Offload,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.space = pipeline.space
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self._offload = offload

    # -- validation ------------------------------------------------------------------------

    def steps(self, steps: int) -> int:
        if steps == 0:
            return self.settings.default_ddim_steps
        if not 1 <= steps <= self.settings.max_ddim_steps:
            raise InvalidArgument(
                f"ddim_steps must be 0 (default) or in [1, {self.settings.max_ddim_steps}]; "
                f"got {steps}",
                details={"field": "ddim_steps"},
            )
        return steps

    def complement(self, name: str) -> Complement:
        chosen = name or self.settings.default_complement
        if chosen not in COMPLEMENTS:
            raise InvalidArgument(
                f"complement must be one of {', '.join(COMPLEMENTS)}",
                details={"field": "complement"},
            )
        if chosen == "erase" and not self.space.can_erase:
            raise FailedPrecondition(
                f"complement 'erase' needs an eraser; the loaded probes "
                f"{self.pipeline.model.probes!r} have none (retrain them with `veil train probes`)"
            )
        return chosen

    def calibration(self, epsilon: float, request: Request) -> Calibration:
        return calibrate(self.space, epsilon, request.delta, request.weights)

    def check(self, caller: Caller, request: Request) -> Request:
        """The request with defaults filled in; InvalidArgument / PermissionDenied else."""
        _check_id(request.dataset, "dataset_id")
        _check_id(request.subject, "subject_id")
        if caller.subject is not None and caller.subject != request.subject:
            raise PermissionDenied("this token acts for another data subject")
        if not request.image:
            raise InvalidArgument("image is required", details={"field": "image"})
        self.space.weights(request.weights)  # unknown names, bad values
        if not (isinstance(request.delta, float) and 0 < request.delta < 1):
            raise InvalidArgument(
                f"delta must be in (0, 1); got {request.delta!r}", details={"field": "delta"}
            )
        return Request(
            dataset=request.dataset,
            subject=request.subject,
            image=request.image,
            weights=dict(request.weights),
            delta=request.delta,
            steps=self.steps(request.steps),
            complement=self.complement(request.complement),
            face=request.face,
        )

    # -- the pipeline ----------------------------------------------------------------------

    async def _prepare(self, request: Request) -> Prepared:
        with self.metrics.timed("image"):
            prepared: Prepared = await self._offload(
                self.pipeline.prepare_sync, request.image, request.face
            )
        return prepared

    async def _generate(
        self, prepared: Sequence[Prepared], draws: Sequence[Draw], request: Request
    ) -> list[bytes]:
        with self.metrics.timed("encode"):
            z = await self.pipeline.encode(prepared)
        per = len(draws) // len(prepared)  # draws per image: k candidates of one, or 1 each
        rows = np.repeat(z, per, axis=0)
        with self.metrics.timed("decode"):
            crops = await self.pipeline.generate(
                rows,
                draws,
                request.steps,
                request.complement,  # type: ignore[arg-type]
            )
        with self.metrics.timed("image"):
            return list(
                await asyncio.gather(
                    *(
                        self._offload(self.pipeline.finish_sync, prepared[i // per], crop)
                        for i, crop in enumerate(crops)
                    )
                )
            )

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.metrics.timed("store"):
            return await self._offload(fn, *args)

    # -- previews --------------------------------------------------------------------------

    async def create_preview(
        self, caller: Caller, request: Request, strengths: Sequence[float], seed: int | None
    ) -> Preview:
        request = self.check(caller, request)
        if not 1 <= len(strengths) <= self.settings.max_strengths:
            raise InvalidArgument(
                f"strengths: give 1 to {self.settings.max_strengths} epsilons; got "
                f"{len(strengths)}",
                details={"field": "strengths"},
            )
        calibrations = [self.calibration(float(e), request) for e in strengths]
        prepared = await self._prepare(request)
        draws = [
            Draw(c, rng)
            for c, rng in zip(calibrations, preview_rngs(len(strengths), seed), strict=True)
        ]
        images = await self._generate([prepared], draws, request)
        epsilon, per, _ = composition(self.space, calibrations, request.delta)
        now = time.time()
        session = Session(
            session_id=uuid.uuid4().hex,
            tenant=caller.tenant,
            subject=request.subject,
            dataset=request.dataset,
            state="open",
            params={
                "weights": dict(request.weights),
                "delta": request.delta,
                "steps": request.steps,
                "complement": request.complement,
                "face_box": asdict(prepared.face.box),
            },
            original=request.image,
            created_at=now,
            expires_at=now + self.settings.preview_ttl_s,
            candidates=[(float(e), img) for e, img in zip(strengths, images, strict=True)],
        )
        await self._db(self.store.create, session)
        self.metrics.previews.inc()
        self.metrics.candidates.inc(len(images))
        return Preview(
            session.session_id,
            [
                Candidate(i, float(e), img)
                for i, (e, img) in enumerate(zip(strengths, images, strict=True))
            ],
            (epsilon, per),
            request.delta,
            session.expires_at,
            prepared.face.box,
        )

    async def cancel_preview(self, caller: Caller, session_id: str) -> None:
        _check_id(session_id, "session_id")
        if caller.subject is not None:
            try:
                session = await self._db(self.store.get, caller.tenant, session_id)
            except VeilError:
                return  # unknown, expired, released: cancelling is a no-op
            if session.subject != caller.subject:
                raise PermissionDenied("this token acts for another data subject")
        await self._db(self.store.cancel, caller.tenant, session_id)

    # -- releases --------------------------------------------------------------------------

    async def release(
        self,
        caller: Caller,
        session_id: str,
        *,
        epsilon: float | None = None,
        candidate: int | None = None,
        key: str = "",
    ) -> Released:
        _check_id(session_id, "session_id")
        _check_id(key, "idempotency_key", required=False)
        if (epsilon is None) == (candidate is None):
            raise InvalidArgument(
                "set exactly one of epsilon and candidate_index", details={"field": "choice"}
            )
        fingerprint = _fingerprint("release", session_id, epsilon, candidate)
        replay = await self._replay(caller, key, fingerprint)
        if replay is not None:
            return replay
        session: Session = await self._db(
            self.store.get, caller.tenant, session_id, candidate is not None
        )
        if caller.subject is not None and caller.subject != session.subject:
            raise PermissionDenied("this token acts for another data subject")
        params = session.params
        request = Request(
            dataset=session.dataset,
            subject=session.subject,
            image=session.original or b"",
            weights=params["weights"],
            delta=params["delta"],
            steps=params["steps"],
            complement=params["complement"],
            face=FaceChoice(box=Box(**params["face_box"])),
        )
        if candidate is not None:
            return await self._release_candidate(
                caller, session, request, candidate, key, fingerprint
            )
        assert epsilon is not None
        return await self._fresh(caller, request, epsilon, key, fingerprint, session_id)

    async def sanitize(
        self, caller: Caller, request: Request, epsilon: float, key: str
    ) -> Released:
        _check_id(key, "idempotency_key", required=False)
        request = self.check(caller, request)
        fingerprint = _fingerprint(
            "sanitize", request.dataset, request.subject, request.image,
            sorted(request.weights.items()), request.delta, request.steps,
            request.complement, request.face, epsilon,
        )  # fmt: skip
        replay = await self._replay(caller, key, fingerprint)
        if replay is not None:
            return replay
        return await self._fresh(caller, request, epsilon, key, fingerprint, None)

    async def _replay(self, caller: Caller, key: str, fingerprint: str) -> Released | None:
        if not key:
            return None
        stored = await self._db(self.store.find_release, caller.tenant, key, fingerprint)
        return None if stored is None else Released.from_stored(stored)

    def _spec(
        self, caller: Caller, request: Request, mu: float, kind: str, draws: int
    ) -> ChargeSpec:
        return ChargeSpec(
            tenant=caller.tenant,
            dataset=request.dataset,
            subject=request.subject,
            noise_multiplier=1.0 / mu,
            key=f"sanitizer/{uuid.uuid4().hex}",
            labels={"kind": kind, "draws": str(draws)},
        )

    async def _fresh(
        self,
        caller: Caller,
        request: Request,
        epsilon: float,
        key: str,
        fingerprint: str,
        session_id: str | None,
    ) -> Released:
        calibration = self.calibration(epsilon, request)
        prepared = await self._prepare(request)
        spec = self._spec(caller, request, calibration.mu, "fresh", 1)
        reservation = await self._charge(
            "reserve", self.ledger.reserve, spec, self.settings.reservation_lease_s
        )
        try:
            draw = Draw(calibration, release_rng())
            image = (await self._generate([prepared], [draw], request))[0]
        except BaseException as exc:
            await self._give_back(caller.tenant, reservation, exc)
            raise
        spent: Spent = await self._charge("commit", self.ledger.commit, caller.tenant, reservation)
        released = Released(
            image=image,
            epsilon=calibration.epsilon,
            delta=calibration.delta,
            per_attribute=calibration.per_attribute,
            spend_id=spent.spend_id,
            face_box=prepared.face.box,
            composed_draws=1,
            complement=request.complement,
            rdp_epsilon=calibration.rdp_epsilon,
            noise_multiplier=calibration.noise_multiplier,
        )
        return await self._record(caller, released, key, fingerprint, session_id, "fresh")

    async def _release_candidate(
        self,
        caller: Caller,
        session: Session,
        request: Request,
        index: int,
        key: str,
        fingerprint: str,
    ) -> Released:
        if not 0 <= index < len(session.candidates):
            raise InvalidArgument(
                f"candidate_index must be in [0, {len(session.candidates) - 1}]; got {index}",
                details={"field": "candidate_index"},
            )
        calibrations = [self.calibration(e, request) for e, _ in session.candidates]
        epsilon, per, rdp = composition(self.space, calibrations, request.delta)
        mu = composed_mu([c.mu for c in calibrations])
        spec = self._spec(caller, request, mu, "candidate", len(calibrations))
        reservation = await self._charge(
            "reserve", self.ledger.reserve, spec, self.settings.reservation_lease_s
        )
        spent: Spent = await self._charge("commit", self.ledger.commit, caller.tenant, reservation)
        released = Released(
            image=session.candidates[index][1],
            epsilon=epsilon,
            delta=request.delta,
            per_attribute=per,
            spend_id=spent.spend_id,
            face_box=Box(**session.params["face_box"]),
            composed_draws=len(calibrations),
            complement=request.complement,
            rdp_epsilon=rdp,
            noise_multiplier=1.0 / mu,
        )
        return await self._record(
            caller, released, key, fingerprint, session.session_id, "candidate"
        )

    async def _record(
        self,
        caller: Caller,
        released: Released,
        key: str,
        fingerprint: str,
        session_id: str | None,
        kind: str,
    ) -> Released:
        """Store the answer (keyed) and close the session before the image leaves. A store
        failure after the commit leaves a charge with no image out: over-charged, never
        under-charged."""
        if key or session_id:
            stored = await self._db(
                self.store.record_release,
                caller.tenant,
                key,
                fingerprint,
                released.to_record(),
                released.image,
                self.settings.idempotency_ttl_s,
                session_id,
            )
            if stored.result.get("spend_id") != released.spend_id:
                return Released.from_stored(stored)  # a concurrent retry stored first
        self.metrics.released(kind, released.epsilon)
        return released

    async def _charge(self, stage: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            with self.metrics.timed("charge"):
                return await fn(*args)
        except BudgetExhausted:
            self.metrics.refused("budget")
            raise
        except Unavailable:
            self.metrics.refused("accountant_unavailable")
            raise
        except VeilError:
            self.metrics.refused(f"accountant_{stage}")
            raise

    async def _give_back(self, tenant: str, reservation: str, cause: BaseException) -> None:
        self.metrics.refused("generation_failed")
        try:
            await self.ledger.release(
                tenant, reservation, f"generation failed: {type(cause).__name__}"
            )
        except VeilError as exc:  # it lapses by itself at the end of its lease
            log.warning("could not release reservation %s: %s", reservation, exc.message)

    # -- batches ---------------------------------------------------------------------------

    async def sanitize_chunk(
        self, caller: Caller, items: Sequence[BatchItem]
    ) -> list[Released | VeilError]:
        """Sanitize and charge a chunk of batch items together; one result per item."""
        results: list[Released | VeilError | None] = [None] * len(items)
        work: list[tuple[int, Request, Calibration, str]] = []
        for i, item in enumerate(items):
            try:
                _check_id(item.key, "idempotency_key", required=False)
                request = self.check(caller, item.request)
                fp = _fingerprint(
                    "sanitize", request.dataset, request.subject, request.image,
                    sorted(request.weights.items()), request.delta, request.steps,
                    request.complement, request.face, item.epsilon,
                )  # fmt: skip
                replay = await self._replay(caller, item.key, fp)
                if replay is not None:
                    results[i] = replay
                    continue
                work.append((i, request, self.calibration(item.epsilon, request), fp))
            except VeilError as exc:
                results[i] = exc
        prepared: dict[int, Prepared] = {}
        for i, request, _, _ in work:
            try:
                prepared[i] = await self._prepare(request)
            except VeilError as exc:
                results[i] = exc
        work = [w for w in work if w[0] in prepared]
        # Items of one chunk may differ in steps and complement: decode them in groups.
        groups: dict[tuple[int, str], list[tuple[int, Request, Calibration, str]]] = {}
        for w in work:
            groups.setdefault((w[1].steps, w[1].complement), []).append(w)
        generated: dict[int, bytes] = {}
        for group in groups.values():
            try:
                images = await self._generate(
                    [prepared[i] for i, *_ in group],
                    [Draw(c, release_rng()) for _, _, c, _ in group],
                    group[0][1],
                )
            except VeilError as exc:
                for i, *_ in group:
                    results[i] = exc
                continue
            generated.update({i: img for (i, *_), img in zip(group, images, strict=True)})
        charged = [w for w in work if w[0] in generated]
        if charged:
            specs = [self._spec(caller, r, c.mu, "batch", 1) for _, r, c, _ in charged]
            outcomes = await self._charge(
                "batch",
                self.ledger.charge_batch,
                caller.tenant,
                specs,
                f"sanitizer/{uuid.uuid4().hex}",
            )
            for (i, request, c, fp), outcome in zip(charged, outcomes, strict=True):
                if isinstance(outcome, VeilError):
                    self.metrics.refused(
                        "budget" if isinstance(outcome, BudgetExhausted) else "accountant_batch"
                    )
                    results[i] = outcome
                    continue
                released = Released(
                    image=generated[i],
                    epsilon=c.epsilon,
                    delta=c.delta,
                    per_attribute=c.per_attribute,
                    spend_id=outcome.spend_id,
                    face_box=prepared[i].face.box,
                    composed_draws=1,
                    complement=request.complement,
                    rdp_epsilon=c.rdp_epsilon,
                    noise_multiplier=c.noise_multiplier,
                )
                try:
                    results[i] = await self._record(
                        caller, released, items[i].key, fp, None, "batch"
                    )
                except VeilError as exc:
                    results[i] = exc
        return [r if r is not None else Unavailable("item was not processed") for r in results]

    # -- housekeeping ----------------------------------------------------------------------

    async def purge(self) -> int:
        removed = int(await self._offload(self.store.purge))
        if removed:
            self.metrics.purged.inc(removed)
        return removed
