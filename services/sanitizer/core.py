"""The sanitizer's core: previews, releases and their charges, without any transport.

No image is computed that has not been reserved, and none leaves before its charge is
committed (DESIGN.md, step 6). Every release path runs the same steps:

1. **claim** — a keyed request claims its idempotency key in the session database before
   any work (:meth:`SessionStore.claim_key`): a concurrent duplicate waits for the first
   one's answer, a retry of a finished one is answered from the database (same image, same
   spend, nothing charged), a key reused with another request is ALREADY_EXISTS. A release
   from a preview also claims its session (one ``UPDATE … WHERE state = 'open'``): one
   session, one release.
2. **reserve** at the accountant under a key derived from the caller's key (``Sanitize``)
   or from the session (``Release``): a retry after a crash of either service finds the
   same reservation, or its committed spend, never a second one. The reservation states
   the budgets' δ; a request whose δ is not that one is INVALID_ARGUMENT (nothing charged).
3. **generate** — encode, noise from a fresh generator (:func:`release_rng`), decode.
4. **commit**, retried on UNAVAILABLE (it is idempotent); then **finish**: the answer is
   stored and the session closed in one transaction, each only while this call still holds
   its claim; then the image leaves.

A failure before the commit gives the reservation back and the claims with it; a commit
whose outcome is unknown leaves the key's claim pending with its lease lapsed, so the
caller's retry takes it over at once and finishes under the same charge (an image that
never left may be redrawn; one that left is always the one recorded). A preview candidate
is charged as the composition of all k candidates (one Gaussian with μ = √(Σ μ_i²));
candidates of a seeded preview are never releasable. Ids that identify people (subject,
dataset) never reach logs or metrics.

The core reaches the accountant, the kernels, the worker pool and the model registry only
through the ports of :mod:`services.sanitizer.ports`, which :mod:`services.sanitizer.app`
wires to the real adapters: it imports no grpc, no generated stubs, no runtime, and loads
no torch (docs/ARCHITECTURE.md, "Cores without transport").
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from services.common.errors import (
    Aborted,
    AlreadyExists,
    BudgetExhausted,
    FailedPrecondition,
    InvalidArgument,
    ModelChanged,
    OutOfDomain,
    PermissionDenied,
    Unavailable,
    VeilError,
)
from services.kernels.domain import DomainScore
from services.kernels.mechanism import (
    COMPLEMENTS,
    AttributeSpace,
    Calibration,
    Complement,
    calibrate,
    composed_mu,
    composition,
    preview_rngs,
    release_rng,
)
from services.sanitizer.description import Describer, ModelDescription
from services.sanitizer.faces import Box
from services.sanitizer.metrics import SanitizerMetrics
from services.sanitizer.pipeline import Draw, FaceChoice, Pipeline, Prepared
from services.sanitizer.ports import (
    ChargeSpec,
    Held,
    Ledger,
    LedgerCost,
    ModelRecords,
    Offload,
    Spent,
)
from services.sanitizer.sessions import KeyClaim, Session, SessionStore, StoredRelease
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
    allow_out_of_domain: bool = False
    """Sanitize a face outside the model's domain too; the answer then carries its score."""


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
    ledger_epsilon: float = 0.0
    """The cost the ledger recorded for the event, at the same δ, as it labels it
    (``ledger_accountant``, e.g. ``rdp``): its own bound, never below ``epsilon``."""
    ledger_delta: float = 0.0
    ledger_accountant: str = ""
    domain: DomainScore | None = None
    """The face's in-domain score, only when the caller set ``allow_out_of_domain``: a
    function of the private input outside the guarantee, for the caller alone (kept with the
    answer for its idempotent replays, never on the ledger)."""

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("image")
        return record

    @classmethod
    def from_stored(cls, stored: StoredRelease) -> Released:
        data = dict(stored.result)
        data["face_box"] = Box(**data["face_box"])
        domain = data.pop("domain", None)
        data["domain"] = None if domain is None else DomainScore(**domain)
        data["replayed"] = True
        return cls(image=stored.image, **data)

    def charged(self, spent: Spent) -> Released:
        """This release with its committed spend and the ledger's own figure."""
        cost = spent.cost or LedgerCost(0.0, self.delta, "")
        return replace(
            self,
            spend_id=spent.spend_id,
            ledger_epsilon=cost.epsilon,
            ledger_delta=cost.delta,
            ledger_accountant=cost.accountant,
        )


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
    domain: DomainScore | None = None
    """As :attr:`Released.domain`."""


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


@dataclass
class _Attempt:
    """What one release attempt holds at the accountant, so that a failure undoes exactly
    that: a reservation to give back, or a commit whose outcome is unknown."""

    held: Held | None = None
    committing: bool = False

    @property
    def maybe_charged(self) -> bool:
        return self.committing or (self.held is not None and bool(self.held.spend_id))


def _same_delta(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


P = ParamSpec("P")
R = TypeVar("R")


def _on_one_model(
    method: Callable[Concatenate[Sanitizer, P], Awaitable[R]],
) -> Callable[Concatenate[Sanitizer, P], Awaitable[R]]:
    """Run the call on the model served when it starts: a swap (the registry's alias
    moved, ``services.sanitizer.following``) waits for it to end, so no call mixes two
    models. Only the entry points hold it (holding it twice could wait on a swap that
    waits on the outer hold)."""

    @functools.wraps(method)
    async def held(self: Sanitizer, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self.pipeline.exclusive.using():
            return await method(self, *args, **kwargs)

    return held


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
        records: ModelRecords | None = None,
    ) -> None:
        """``records``: the model registry's records of the loaded entries (None: no
        registry; the store's manifests describe the model)."""
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.ledger = ledger
        self.metrics = metrics
        self._offload = offload
        self._describer = Describer(lambda: pipeline.model, records, settings.encoder_alias)

    @property
    def space(self) -> AttributeSpace:
        """The attribute subspace of the model served now (stable within a call that
        :func:`_on_one_model` holds)."""
        return self.pipeline.space

    async def describe(self, tenant: str) -> ModelDescription:
        """The encoder and probes this server loaded, as the registry records them for
        ``tenant`` (:mod:`services.sanitizer.description`); registry errors propagate."""
        return await self._describer.describe(tenant)

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
                f"delta must be in (0, 1) and equal the budget's; got {request.delta!r}",
                details={"field": "delta"},
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
            allow_out_of_domain=request.allow_out_of_domain,
        )

    # -- the pipeline ----------------------------------------------------------------------

    async def _prepare(self, request: Request, *, screen: bool = True) -> Prepared:
        """The face cropped and, with ``screen``, encoded and screened
        (:meth:`_in_domain`); a batch screens its items together (:meth:`_batch_screen`)."""
        with self.metrics.timed("image"):
            prepared: Prepared = await self._offload(
                self.pipeline.prepare_sync, request.image, request.face
            )
        if not screen:
            return prepared
        with self.metrics.timed("encode"):
            (prepared,) = await self.pipeline.screen([prepared])
        return self._in_domain(prepared, request.allow_out_of_domain)

    def _in_domain(self, prepared: Prepared, allow: bool) -> Prepared:
        """``prepared`` (encoded) outside the model's domain and not allowed: OutOfDomain,
        before anything is reserved; with ``allow`` its score rides along for the answer.
        The score reaches no log, metric or ledger."""
        score = prepared.domain
        if score is not None and not score.in_domain and not allow:
            self.metrics.refused("out_of_domain")
            raise OutOfDomain(
                "the face lies outside what the loaded model was trained on "
                f"({self.pipeline.model.training_data or 'its training data'}): its release "
                "would be a stand-in, not a sanitized version of it; nothing was charged. "
                "Set allow_out_of_domain to sanitize it anyway",
                details=score.details(),
            )
        return replace(prepared, domain=score if allow else None)

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
        self.metrics.generated.inc(len(crops))
        with self.metrics.timed("image"):
            return list(
                await asyncio.gather(
                    *(
                        self._offload(self.pipeline.finish_sync, prepared[i // per], crop)
                        for i, crop in enumerate(crops)
                    )
                )
            )

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.metrics.timed("store"):
            return await self._offload(functools.partial(fn, *args, **kwargs))

    def _backend_up(self) -> None:
        """Fail fast, before anything is reserved, while the kernels' backend is down."""
        if self.pipeline.backend_down():
            self.metrics.refused("backend_unavailable")
            raise Unavailable("the inference backend is not ready; nothing was charged, retry")

    # -- previews --------------------------------------------------------------------------

    @_on_one_model
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
                "seeded": seed is not None,
                "allow_out_of_domain": request.allow_out_of_domain,
                "encoder": self.pipeline.model.diffae_sha256,
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
            prepared.domain,
        )

    async def cancel_preview(self, caller: Caller, session_id: str) -> None:
        """Discard an open session. Unknown, another tenant's or another subject's,
        already closed: a no-op that changes nothing (answered alike, no oracle)."""
        _check_id(session_id, "session_id")
        await self._db(self.store.cancel, caller.tenant, caller.subject, session_id)

    # -- releases --------------------------------------------------------------------------

    @_on_one_model
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
        fingerprint = _fingerprint("release", caller.subject, session_id, epsilon, candidate)

        async def work(claim: KeyClaim | None, attempt: _Attempt) -> Released:
            return await self._release_session(
                caller, session_id, epsilon, candidate, key, claim, attempt
            )

        return await self._once(caller, key, fingerprint, work)

    @_on_one_model
    async def sanitize(
        self, caller: Caller, request: Request, epsilon: float, key: str
    ) -> Released:
        _check_id(key, "idempotency_key", required=False)
        request = self.check(caller, request)
        calibration = self.calibration(epsilon, request)
        fingerprint = _sanitize_fingerprint(caller, request, epsilon)

        async def work(claim: KeyClaim | None, attempt: _Attempt) -> Released:
            spec = self._spec(caller, request, calibration.mu, "fresh", 1, _key_charge(key))
            released = await self._draw_charged(
                caller, spec, request, calibration, attempt, redraw=_redraw(claim)
            )
            return await self._finish(caller, released, key, claim, None, "fresh")

        return await self._once(caller, key, fingerprint, work)

    async def _once(
        self,
        caller: Caller,
        key: str,
        fingerprint: str,
        work: Callable[[KeyClaim | None, _Attempt], Awaitable[Released]],
    ) -> Released:
        """Run ``work`` at most once per idempotency key (no key: once, unguarded)."""
        attempt = _Attempt()
        if not key:
            return await work(None, attempt)
        claim = await self._claim_key(caller, key, fingerprint)
        if isinstance(claim, Released):
            return claim
        try:
            return await work(claim, attempt)
        except BaseException:
            await self._abandon(caller, key, claim, attempt)
            raise

    async def _claim_key(self, caller: Caller, key: str, fingerprint: str) -> KeyClaim | Released:
        """Claim ``key``, waiting up to ``idempotency_wait_s`` while another call holds it."""
        settings = self.settings
        deadline = time.monotonic() + settings.idempotency_wait_s
        pause = 0.02
        while True:
            got = await self._db(
                self.store.claim_key,
                caller.tenant,
                key,
                fingerprint,
                uuid.uuid4().hex,
                settings.claim_lease_s,
                settings.idempotency_ttl_s,
            )
            if isinstance(got, StoredRelease):
                return Released.from_stored(got)
            if isinstance(got, KeyClaim):
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise Aborted(
                    "a request with this idempotency key is in flight; retry with the same "
                    "key to get its answer",
                    details={"retry_after_s": f"{max(0.0, got.until - time.time()):.1f}"},
                )
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.25)

    async def _release_session(
        self,
        caller: Caller,
        session_id: str,
        epsilon: float | None,
        candidate: int | None,
        key: str,
        claim: KeyClaim | None,
        attempt: _Attempt,
    ) -> Released:
        token = uuid.uuid4().hex
        session: Session = await self._db(
            self.store.claim,
            caller.tenant,
            caller.subject,
            session_id,
            token,
            self.settings.claim_lease_s,
            candidate is not None,
        )
        try:
            self._same_encoder(session)
            request = _session_request(session)
            if candidate is not None:
                released = await self._candidate_charged(
                    caller, session, request, candidate, attempt
                )
                kind = "candidate"
            else:
                assert epsilon is not None
                calibration = self.calibration(epsilon, request)
                spec = self._spec(
                    caller, request, calibration.mu, "fresh", 1, _session_charge(session_id)
                )
                released = await self._draw_charged(
                    caller, spec, request, calibration, attempt, redraw=True
                )
                kind = "fresh"
            return await self._finish(caller, released, key, claim, (session_id, token), kind)
        except BaseException:
            # Open again: the next release of it reserves under the same session key, so
            # a charge this attempt may have committed is finished, never doubled.
            await self._quietly(self.store.unclaim, session_id, token)
            raise

    def _same_encoder(self, session: Session) -> None:
        """A session is released by the encoder that made its previews: its candidates
        were drawn, and its strengths calibrated, on that model's attribute subspace. After
        the registry's alias moved the server to another one: ModelChanged, nothing
        charged (a session from before the field existed is taken as this model's)."""
        made_by = session.params.get("encoder")
        if made_by and made_by != self.pipeline.model.diffae_sha256:
            self.metrics.refused("model_changed")
            raise ModelChanged(
                "this preview was made by an encoder this server no longer serves (the "
                "model registry's alias moved); nothing was charged: create a new preview",
                details={"session_id": session.session_id},
            )

    def _spec(
        self, caller: Caller, request: Request, mu: float, kind: str, draws: int, key: str
    ) -> ChargeSpec:
        return ChargeSpec(
            tenant=caller.tenant,
            dataset=request.dataset,
            subject=request.subject,
            noise_multiplier=1.0 / mu,
            key=key,
            labels={"kind": kind, "draws": str(draws)},
        )

    async def _reserve(
        self,
        caller: Caller,
        spec: ChargeSpec,
        delta: float,
        attempt: _Attempt,
        *,
        redraw: bool,
    ) -> Held:
        """Reserve ``spec`` (its δ already checked: :meth:`_check_delta`); the reservation's
        δ must still be the budgets', and a spend already committed under its key may only
        be finished when no image of it can have left (``redraw``)."""
        self._backend_up()
        try:
            held: Held = await self._charge(
                "reserve", self.ledger.reserve, spec, self.settings.reservation_lease_s
            )
        except AlreadyExists as exc:
            raise _conflict(spec, exc) from None
        attempt.held = held
        if not _same_delta(held.delta, delta):  # a budget's δ changed in between
            error = self._wrong_delta(delta, held.delta)
            if not held.replayed:  # a replayed one may be another attempt's: it lapses
                await self._give_back(caller.tenant, attempt, error)
            raise error
        if held.spend_id and not redraw:
            self.metrics.refused("key_spent")
            raise FailedPrecondition(
                "this idempotency key was charged by a release whose answer is no longer "
                "kept (its idempotency window ended); use a new key",
                details={"field": "idempotency_key"},
            )
        return held

    async def _prepared_and_checked(
        self, spec: ChargeSpec, request: Request, *, screen: bool = True
    ) -> Prepared:
        """The prepared image, its δ checked against the budgets' meanwhile; the image's own
        error first (the caller's input decides it, whatever the accountant's state)."""
        prepared, checked = await asyncio.gather(
            self._prepare(request, screen=screen),
            self._check_delta(spec, request.delta),
            return_exceptions=True,
        )
        for outcome in (prepared, checked):
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(prepared, Prepared)
        return prepared

    async def _check_delta(self, spec: ChargeSpec, delta: float) -> None:
        """The budgets' δ first (a dry run of a negligible charge): a request at another δ
        is invalid whatever the budget has left, and is never reserved."""
        budget_delta = await self._charge("check", self.ledger.delta, spec)
        if not _same_delta(budget_delta, delta):
            raise self._wrong_delta(delta, budget_delta)

    def _wrong_delta(self, delta: float, budget_delta: float) -> InvalidArgument:
        self.metrics.refused("delta")
        return InvalidArgument(
            f"delta {delta:g} is not the δ of the budgets this release is charged to "
            f"({budget_delta:g}): a release is calibrated at its budget's δ; ask for "
            f"delta = {budget_delta:g}",
            details={"field": "delta", "budget_delta": repr(budget_delta)},
        )

    async def _commit(self, caller: Caller, attempt: _Attempt) -> Spent:
        """Commit, retried on UNAVAILABLE (idempotent: a commit that landed answers
        ``replayed`` with the same spend)."""
        assert attempt.held is not None
        attempt.committing = True
        pause = 0.1
        for tries in range(self.settings.commit_attempts, 0, -1):
            try:
                spent: Spent = await self._charge(
                    "commit", self.ledger.commit, caller.tenant, attempt.held.reservation_id
                )
                return spent
            except Unavailable:
                if tries == 1:
                    raise
                await asyncio.sleep(pause)
                pause *= 3
            except FailedPrecondition as exc:  # the lease lapsed: definitely not committed
                attempt.committing = bool(attempt.held.spend_id)
                raise Aborted(
                    "the charge's reservation lapsed before it was committed (nothing was "
                    "charged and no image left); retry",
                    details=exc.details,
                ) from None
            except VeilError:
                attempt.committing = bool(attempt.held.spend_id)
                raise
        raise AssertionError("unreachable")

    async def _draw_charged(
        self,
        caller: Caller,
        spec: ChargeSpec,
        request: Request,
        calibration: Calibration,
        attempt: _Attempt,
        *,
        redraw: bool,
    ) -> Released:
        """Prepare the image and check δ (side by side) → reserve → fresh draw → commit:
        one charged fresh release."""
        prepared = await self._prepared_and_checked(spec, request)
        await self._reserve(caller, spec, request.delta, attempt, redraw=redraw)
        try:
            draw = Draw(calibration, release_rng())
            image = (await self._generate([prepared], [draw], request))[0]
        except BaseException as exc:
            self.metrics.refused("generation_failed")
            await self._give_back(caller.tenant, attempt, exc)
            raise
        spent = await self._commit(caller, attempt)
        return Released(
            image=image,
            epsilon=calibration.epsilon,
            delta=calibration.delta,
            per_attribute=calibration.per_attribute,
            spend_id="",
            face_box=prepared.face.box,
            composed_draws=1,
            complement=request.complement,
            rdp_epsilon=calibration.rdp_epsilon,
            noise_multiplier=calibration.noise_multiplier,
            domain=prepared.domain,
        ).charged(spent)

    async def _candidate_charged(
        self,
        caller: Caller,
        session: Session,
        request: Request,
        index: int,
        attempt: _Attempt,
    ) -> Released:
        if session.params.get("seeded"):
            self.metrics.refused("seeded_candidate")
            raise FailedPrecondition(
                "the candidates of a seeded preview are not releasable: their noise follows "
                "from the caller's seed, which would void the guarantee; release a fresh "
                "draw (epsilon) from this session instead",
                details={"reason": "seeded_preview"},
            )
        if not 0 <= index < len(session.candidates):
            raise InvalidArgument(
                f"candidate_index must be in [0, {len(session.candidates) - 1}]; got {index}",
                details={"field": "candidate_index"},
            )
        calibrations = [self.calibration(e, request) for e, _ in session.candidates]
        epsilon, per, rdp = composition(self.space, calibrations, request.delta)
        mu = composed_mu([c.mu for c in calibrations])
        spec = self._spec(
            caller, request, mu, "candidate", len(calibrations), _session_charge(session.session_id)
        )
        await self._check_delta(spec, request.delta)
        await self._reserve(caller, spec, request.delta, attempt, redraw=True)
        spent = await self._commit(caller, attempt)
        return Released(
            image=session.candidates[index][1],
            epsilon=epsilon,
            delta=request.delta,
            per_attribute=per,
            spend_id="",
            face_box=Box(**session.params["face_box"]),
            composed_draws=len(calibrations),
            complement=request.complement,
            rdp_epsilon=rdp,
            noise_multiplier=1.0 / mu,
        ).charged(spent)

    async def _finish(
        self,
        caller: Caller,
        released: Released,
        key: str,
        claim: KeyClaim | None,
        session: tuple[str, str] | None,
        kind: str,
    ) -> Released:
        """Store the answer (keyed) and close the session in one transaction, each while
        this call still holds its claim, before the image leaves. A store failure after the
        commit leaves the charge and no image out: the caller's retry finishes under it."""
        if claim is not None or session is not None:
            stored: StoredRelease = await self._db(
                self.store.finish,
                caller.tenant,
                key if claim is not None else "",
                claim.token if claim is not None else "",
                released.to_record(),
                released.image,
                self.settings.idempotency_ttl_s,
                session[0] if session else None,
                session[1] if session else "",
            )
            if stored.result.get("spend_id") != released.spend_id or stored.image != released.image:
                return Released.from_stored(stored)  # a retry that took over stored first
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

    async def _give_back(self, tenant: str, attempt: _Attempt, cause: BaseException) -> None:
        """Give an uncommitted reservation back (a committed one stays: it was charged)."""
        held = attempt.held
        if held is None or held.spend_id:
            return
        try:
            await self.ledger.release(
                tenant, held.reservation_id, f"generation failed: {type(cause).__name__}"
            )
        except VeilError as exc:  # it lapses by itself at the end of its lease
            log.warning("could not release reservation %s: %s", held.reservation_id, exc.message)

    async def _quietly(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """A clean-up write that must not hide the error being raised (claims lapse)."""
        try:
            await self._db(fn, *args, **kwargs)
        except Exception as exc:
            log.warning("clean-up %s failed: %s", getattr(fn, "__name__", fn), type(exc).__name__)

    # -- batches ---------------------------------------------------------------------------

    @_on_one_model
    async def sanitize_chunk(
        self, caller: Caller, items: Sequence[BatchItem]
    ) -> list[Released | VeilError]:
        """Sanitize a chunk of batch items: each is claimed (keyed), prepared and its δ
        checked (all items at once), then reserved in order — each seeing the items reserved
        before it — *before* anything is generated, so an item past the budget is refused on
        its own (RESOURCE_EXHAUSTED) and never computed; the reserved ones are generated
        together, committed, and stored."""
        results: list[Released | VeilError | None] = [None] * len(items)
        admitted = await asyncio.gather(
            *(self._batch_admit(caller, item) for item in items), return_exceptions=True
        )
        work: list[_BatchWork] = []
        for i, got in enumerate(admitted):
            if isinstance(got, BaseException) and not isinstance(got, VeilError):
                raise got
            if isinstance(got, (VeilError, Released)):
                results[i] = got
            else:
                work.append(replace(got, index=i))
        work = await self._batch_screen(caller, work, results)
        held: list[_BatchWork] = []
        for w in work:
            try:
                await self._reserve(
                    caller, w.spec, w.request.delta, w.attempt, redraw=_redraw(w.claim)
                )
            except VeilError as exc:
                await self._batch_abandon(caller, w)
                results[w.index] = exc
                continue
            held.append(w)
        work = held
        groups: dict[tuple[int, str], list[_BatchWork]] = {}
        for w in work:  # items of one chunk may differ in steps and complement
            groups.setdefault((w.request.steps, w.request.complement), []).append(w)
        for group in groups.values():
            try:
                images = await self._generate(
                    [w.prepared for w in group],
                    [Draw(w.calibration, release_rng()) for w in group],
                    group[0].request,
                )
            except VeilError as exc:
                for w in group:
                    self.metrics.refused("generation_failed")
                    await self._give_back(caller.tenant, w.attempt, exc)
                    await self._batch_abandon(caller, w)
                    results[w.index] = exc
                continue
            outcomes = await asyncio.gather(
                *(self._batch_finish(caller, w, img) for w, img in zip(group, images, strict=True)),
                return_exceptions=True,
            )
            for w, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, VeilError):
                    raise outcome
                results[w.index] = outcome
        return [r if r is not None else Unavailable("item was not processed") for r in results]

    async def _batch_screen(
        self,
        caller: Caller,
        work: list[_BatchWork],
        results: list[Released | VeilError | None],
    ) -> list[_BatchWork]:
        """The admitted items' faces encoded in one call and screened (:meth:`_in_domain`):
        an item outside the domain, or all of them when the encoder fails, answers its own
        error with its claim given back, before anything is reserved."""
        if not work:
            return work
        try:
            with self.metrics.timed("encode"):
                screened = await self.pipeline.screen([w.prepared for w in work])
        except VeilError as exc:
            for w in work:
                await self._batch_abandon(caller, w)
                results[w.index] = exc
            return []
        kept = []
        for w, prepared in zip(work, screened, strict=True):
            try:
                allow = w.request.allow_out_of_domain
                kept.append(replace(w, prepared=self._in_domain(prepared, allow)))
            except OutOfDomain as exc:
                await self._batch_abandon(caller, w)
                results[w.index] = exc
        return kept

    async def _batch_admit(self, caller: Caller, item: BatchItem) -> _BatchWork | Released:
        """An item up to its reservation: checked, claimed (keyed; a finished key answers
        from the store), its image prepared, its δ checked against the budgets'."""
        _check_id(item.key, "idempotency_key", required=False)
        request = self.check(caller, item.request)
        calibration = self.calibration(item.epsilon, request)
        claim: KeyClaim | None = None
        if item.key:
            got = await self._db(
                self.store.claim_key,
                caller.tenant,
                item.key,
                _sanitize_fingerprint(caller, request, item.epsilon),
                uuid.uuid4().hex,
                self.settings.claim_lease_s,
                self.settings.idempotency_ttl_s,
            )
            if isinstance(got, StoredRelease):
                return Released.from_stored(got)
            if not isinstance(got, KeyClaim):
                raise Aborted(
                    "an item with this idempotency key is in flight; retry it",
                    details={"field": "idempotency_key"},
                )
            claim = got
        attempt = _Attempt()
        try:
            spec = self._spec(caller, request, calibration.mu, "batch", 1, _key_charge(item.key))
            prepared = await self._prepared_and_checked(spec, request, screen=False)
        except BaseException:
            await self._abandon(caller, item.key, claim, attempt)
            raise
        return _BatchWork(-1, item.key, request, calibration, claim, attempt, prepared, spec)

    async def _batch_finish(self, caller: Caller, w: _BatchWork, image: bytes) -> Released:
        try:
            spent = await self._commit(caller, w.attempt)
            released = Released(
                image=image,
                epsilon=w.calibration.epsilon,
                delta=w.calibration.delta,
                per_attribute=w.calibration.per_attribute,
                spend_id="",
                face_box=w.prepared.face.box,
                composed_draws=1,
                complement=w.request.complement,
                rdp_epsilon=w.calibration.rdp_epsilon,
                noise_multiplier=w.calibration.noise_multiplier,
                domain=w.prepared.domain,
            ).charged(spent)
            return await self._finish(caller, released, w.key, w.claim, None, "batch")
        except BaseException:
            await self._batch_abandon(caller, w)
            raise

    async def _batch_abandon(self, caller: Caller, w: _BatchWork) -> None:
        await self._abandon(caller, w.key, w.claim, w.attempt)

    async def _abandon(
        self, caller: Caller, key: str, claim: KeyClaim | None, attempt: _Attempt
    ) -> None:
        """Give a key's claim back after a failure (see :meth:`SessionStore.abandon_key`):
        forgotten only when nothing can have been charged under it — not by this attempt,
        nor by the one whose lapsed claim it took over (whose commit may have landed)."""
        if claim is not None:
            await self._quietly(
                self.store.abandon_key,
                caller.tenant,
                key,
                claim.token,
                forget=not (attempt.maybe_charged or claim.taken_over),
            )

    # -- housekeeping ----------------------------------------------------------------------

    async def purge(self) -> int:
        removed = int(await self._offload(self.store.purge))
        if removed:
            self.metrics.purged.inc(removed)
        return removed


@dataclass
class _BatchWork:
    """One batch item between its reservation and its answer."""

    index: int
    key: str
    request: Request
    calibration: Calibration
    claim: KeyClaim | None
    attempt: _Attempt
    prepared: Prepared
    spec: ChargeSpec


def _sanitize_fingerprint(caller: Caller, request: Request, epsilon: float) -> str:
    return _fingerprint(
        "sanitize", caller.subject, request.dataset, request.subject, request.image,
        sorted(request.weights.items()), request.delta, request.steps,
        request.complement, request.face, epsilon,
        # Only when set: a key claimed before the flag existed keeps its fingerprint.
        *(("allow_out_of_domain",) if request.allow_out_of_domain else ()),
    )  # fmt: skip


def _key_charge(key: str) -> str:
    """The accountant's key of a keyed Sanitize (or batch item): the same on every retry;
    unkeyed, a fresh one (nothing can retry it)."""
    if not key:
        return f"sanitizer/once/{uuid.uuid4().hex}"
    return f"sanitizer/key/{hashlib.sha256(key.encode()).hexdigest()}"


def _session_charge(session_id: str) -> str:
    """The accountant's key of a session's release: one charge per session, whatever key
    (or none) each retry carries."""
    return f"sanitizer/session/{session_id}"


def _redraw(claim: KeyClaim | None) -> bool:
    """Whether a spend already committed under the key may be finished with a new draw:
    only when this call took over a lapsed claim (that holder's image never left)."""
    return claim is not None and claim.taken_over


def _conflict(spec: ChargeSpec, exc: AlreadyExists) -> VeilError:
    if spec.key.startswith("sanitizer/session/"):
        return FailedPrecondition(
            "this session's charge is held or was committed for another choice (a release "
            "of it was interrupted); release that same choice, or wait for its reservation "
            "to lapse",
            details={"reason": "session_charge_conflict"},
        )
    return AlreadyExists(
        "idempotency key already used for another request", details={"field": "idempotency_key"}
    )


def _session_request(session: Session) -> Request:
    params = session.params
    return Request(
        dataset=session.dataset,
        subject=session.subject,
        image=session.original or b"",
        weights=params["weights"],
        delta=params["delta"],
        steps=params["steps"],
        complement=params["complement"],
        face=FaceChoice(box=Box(**params["face_box"])),
        allow_out_of_domain=bool(params.get("allow_out_of_domain", False)),
    )
