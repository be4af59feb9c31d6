"""``veil audit --service``: the sanitizer's release-integrity promises, checked over gRPC.

``veil audit`` measures the mechanism in-process; this mode drives a live sanitizer and its
accountant as a client does, so that a defect at the edges (sessions, idempotency keys,
charges, batches) fails a check. One row per check, ``pass`` or ``FLAGGED``, against the
service comment of ``proto/veil/v1/sanitizer.proto``:

1. **seeded candidates** — releasing a candidate of a seeded preview is FAILED_PRECONDITION
   and charges nothing (a released one is flagged, and the detail says whether it was
   reproducible from the caller's seed: byte-identical across two sessions or a re-run); a
   fresh release of a seeded session differs from every candidate.
2. **retries charge once** — a keyed Sanitize retried in sequence, another key sent by
   several threads at once: per key one image, one spend id, one ledger event.
3. **receipts match the ledger** — fresh release, candidate release, Sanitize, SanitizeBatch
   items: the receipt's spend is a ledger event with its noise multiplier and δ, and its
   ``ledger_cost`` is the event's cost; on each of those paths a δ other than the budgets'
   is INVALID_ARGUMENT and neither charges nor holds budget.
4. **fresh noise** — unkeyed releases of one input are pairwise different.
5. **batch charges before work** — a batch on a subject whose budget admits m of n items
   answers m results and n−m RESOURCE_EXHAUSTED, the subject's spend stays within its limit
   (and, on the audit's own servers, only m images were generated).

Every charge lands on a dataset the audit creates (``veil-audit-<hex>``, a subject per
check); the tenant's own budget is charged for them too (the ledger keeps every event), but
its limits are only read, never changed. Without
``--target`` the audit starts its own accountant and sanitizer on loopback (SQLite in a
temporary directory, the in-process backend); the hidden ``--canary`` breaks that
sanitizer on purpose through ``build_app``'s replacements, and the audit must flag it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import secrets
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import (
    accountant_pb2_grpc,
    common_pb2,
    diagnostics_pb2,
    diagnostics_pb2_grpc,
    sanitizer_pb2_grpc,
)
from services._proto.veil.v1 import sanitizer_pb2 as spb
from services.cli.audit import SERVICE_CANARIES
from services.common.errors import FailedPrecondition, InvalidArgument, VeilError
from services.kernels.mechanism import calibrate_mu, gaussian_epsilon

if TYPE_CHECKING:
    pass

QUICK: dict[str, Any] = {"steps": 2, "fresh": 4, "threads": 4, "batch": 4, "admitted": 2}
"""``--quick``: DDIM steps 2; the whole audit, its own servers included, in seconds."""

TIMEOUT_S = 60.0
"""Deadline of every call the audit makes."""


@dataclass(frozen=True)
class ServicePlan:
    """What one service audit runs (``veil audit --service``'s options)."""

    target: str | None = None
    """The sanitizer's ``host:port``; None: start an accountant and a sanitizer here."""
    token: str = ""
    accountant: str | None = None
    accountant_token: str = ""
    epsilon: float = 1.0
    """ε of each release (a preview's strengths: ε and 2ε)."""
    steps: int = 0
    """DDIM steps of each request; 0: the server's default."""
    fresh: int = 8
    """Unkeyed releases compared by the fresh-noise check."""
    threads: int = 8
    """Concurrent callers of one idempotency key."""
    batch: int = 6
    """Items of the over-budget batch, of which its subject's budget admits ``admitted``."""
    admitted: int = 3
    canary: str | None = None
    store: Path | None = None
    diffae: str | None = None
    probes: str | None = None


@dataclass(frozen=True)
class Finding:
    """One check's row."""

    name: str
    flagged: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class ServiceReport:
    plan: ServicePlan
    findings: list[Finding]
    where: str
    """What was audited, in words."""
    seconds: float

    @property
    def flagged(self) -> bool:
        return any(f.flagged for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        plan = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.plan).items()}
        del plan["token"], plan["accountant_token"]
        checks = [
            {"check": f.name, "verdict": _verdict(f), "flagged": f.flagged, "detail": f.detail,
             "seconds": round(f.seconds, 3)}
            for f in self.findings
        ]  # fmt: skip
        return {"mode": "service", "plan": plan, "where": self.where, "checks": checks,
                "flagged": self.flagged, "seconds": round(self.seconds, 2)}  # fmt: skip


def _verdict(finding: Finding) -> str:
    return "FLAGGED" if finding.flagged else "pass"


def render(report: ServiceReport) -> str:
    """The report as a table: one line per check."""
    plan = report.plan
    lines = [
        f"veil audit --service: {report.where}",
        f"ε = {plan.epsilon:g} per release, DDIM steps {plan.steps or 'server default'}"
        + (f", CANARY {plan.canary}" if plan.canary else ""),
        "",
        f"{'check':<26} {'verdict':<8} {'wall s':>7}  detail",
    ]
    for f in report.findings:
        lines.append(f"{f.name:<26} {_verdict(f):<8} {f.seconds:>7.1f}  {f.detail}")
    verdict = "FLAGGED: a release-integrity check failed" if report.flagged else "passed"
    lines += ["", f"{verdict} (wall time {report.seconds:.1f} s)"]
    return "\n".join(lines)


# -- the client -----------------------------------------------------------------------------


class CallFailed(Exception):
    """An RPC answered an error; ``code`` is its status name, e.g. ``FAILED_PRECONDITION``."""

    def __init__(self, method: str, error: grpc.RpcError) -> None:
        self.code = error.code().name
        super().__init__(f"{method} answered {self.code}: {error.details()}")


@dataclass(frozen=True)
class ItemFailed:
    """A SanitizeBatch item's error."""

    code: str
    message: str


STATUS_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


@dataclass(frozen=True)
class Endpoints:
    """Where the audit's clients go, with what tokens."""

    sanitizer: str
    token: str
    accountant: str
    accountant_token: str
    where: str
    generated: Callable[[], float] | None = None
    """Images the sanitizer generated so far (own servers: read from its registry)."""


class Rig:
    """The audit's client of a sanitizer and its accountant, on a dataset of its own."""

    def __init__(self, ends: Endpoints, plan: ServicePlan) -> None:
        self.plan, self.ends = plan, ends
        self.channels = [grpc.insecure_channel(t) for t in (ends.sanitizer, ends.accountant)]
        self.sanitizer = sanitizer_pb2_grpc.SanitizerStub(self.channels[0])
        self.ledger = accountant_pb2_grpc.AccountantStub(self.channels[1])
        self.dataset = f"veil-audit-{uuid.uuid4().hex[:12]}"
        self.tenant, self.delta, self.tenant_left = "", 0.0, 0.0

    @functools.cached_property
    def image(self) -> bytes:
        """The face every request sends: a synthfaces face at 48×48 (PNG), whole image."""
        from services.common.imaging import encode_image
        from services.kernels.data.synthfaces import SynthFaces

        return encode_image(SynthFaces(n=1, seed=7, resolution=48).pixels(0))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    @staticmethod
    def _call(stub: Any, method: str, request: Any, token: str) -> Any:
        metadata = (("authorization", f"Bearer {token}"),)
        try:
            return getattr(stub, method)(request, metadata=metadata, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            raise CallFailed(method, exc) from None

    def _sanitizer(self, method: str, request: Any) -> Any:
        return self._call(self.sanitizer, method, request, self.ends.token)

    def _accountant(self, method: str, request: Any) -> Any:
        return self._call(self.ledger, method, request, self.ends.accountant_token)

    def set_up(self, *, own: bool) -> None:
        """Check that both tokens act for one tenant; read the tenant's budget (on the
        audit's own accountant: create it), whose δ every release asks for; create the
        audit's dataset with a default subject budget."""
        who = [
            self._call(diagnostics_pb2_grpc.DiagnosticsStub(ch), "WhoAmI", request, token)
            for ch, request, token in zip(
                self.channels, [diagnostics_pb2.WhoAmIRequest()] * 2,
                (self.ends.token, self.ends.accountant_token), strict=True,
            )
        ]  # fmt: skip
        if who[0].tenant_id != who[1].tenant_id:
            raise FailedPrecondition(
                f"the sanitizer token acts for tenant {who[0].tenant_id!r}, the accountant "
                f"token for {who[1].tenant_id!r}: give tokens of one tenant"
            )
        self.tenant = who[0].tenant_id
        tenant = apb.BudgetScope(tenant_id=self.tenant)
        if own:
            self._put(tenant, 1000.0, 1e-5)
        try:
            status = self._accountant("GetBudget", apb.GetBudgetRequest(scope=tenant))
        except CallFailed as exc:
            if exc.code != "NOT_FOUND":
                raise
            raise FailedPrecondition(
                f"tenant {self.tenant!r} has no budget; the audit charges its releases to the "
                "tenant's budget and never creates or changes it"
            ) from None
        self.delta, self.tenant_left = status.delta, status.epsilon_remaining
        dataset = apb.BudgetScope(tenant_id=self.tenant, dataset_id=self.dataset)
        self._put(dataset, 1000.0, self.delta, apb.SubjectDefault(epsilon=50.0, delta=self.delta))

    def _put(
        self, scope: apb.BudgetScope, epsilon: float, delta: float, default: Any = None
    ) -> None:
        budget = apb.Budget(scope=scope, epsilon=epsilon, delta=delta, subject_default=default)
        self._accountant("PutBudget", apb.PutBudgetRequest(budget=budget))

    def limit_subject(self, subject: str, epsilon: float) -> None:
        self._put(self.scope(subject), epsilon, self.delta)

    # -- the sanitizer ---------------------------------------------------------------------

    def _fields(self, subject: str, delta: float | None) -> dict[str, Any]:
        return {
            "dataset_id": self.dataset, "subject_id": subject,
            "image": common_pb2.Image(data=self.image), "delta": delta or self.delta,
            "ddim_steps": self.plan.steps, "face": spb.FaceSelection(whole_image=True),
        }  # fmt: skip

    def _one_shot(self, subject: str, key: str = "", delta: float | None = None) -> Any:
        fields = self._fields(subject, delta)
        return spb.SanitizeRequest(epsilon=self.plan.epsilon, idempotency_key=key, **fields)

    def sanitize(self, subject: str, key: str = "", delta: float | None = None) -> Any:
        return self._sanitizer("Sanitize", self._one_shot(subject, key, delta))

    def sanitize_keyed(self, subject: str, key: str, tries: int = 5) -> Any:
        """Sanitize with ``key``, retried with it while ABORTED (a call with the key is in
        flight: the contract says that a retry gets that call's answer)."""
        for left in range(tries, 0, -1):
            try:
                return self.sanitize(subject, key)
            except CallFailed as exc:
                if exc.code != "ABORTED" or left == 1:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def preview(
        self, subject: str, seed: int | None = None, delta: float | None = None
    ) -> spb.CreatePreviewResponse:
        eps = self.plan.epsilon
        request = spb.CreatePreviewRequest(
            strengths=[eps, 2 * eps], seed=seed, **self._fields(subject, delta)
        )
        response: spb.CreatePreviewResponse = self._sanitizer("CreatePreview", request)
        return response

    def release(self, session_id: str, *, candidate: int | None = None) -> Any:
        """A fresh release at ε (or the candidate ``candidate``) of a preview session."""
        request = spb.ReleaseRequest(session_id=session_id)
        if candidate is None:
            request.epsilon = self.plan.epsilon
        else:
            request.candidate_index = candidate
        return self._sanitizer("Release", request)

    def batch(self, subject: str, n: int, delta: float | None = None) -> list[Any]:
        """A SanitizeBatch of ``n`` unkeyed items of one subject: each item's
        ReleaseResponse or :class:`ItemFailed`, in item order."""
        items = [
            spb.SanitizeBatchRequest(item_id=str(i), request=self._one_shot(subject, delta=delta))
            for i in range(n)
        ]
        got: dict[str, Any] = {}
        try:
            for a in self._sanitizer("SanitizeBatch", iter(items)):
                error = ItemFailed(STATUS_NAMES.get(a.error.code, "?"), a.error.message)
                got[a.item_id] = a.result if a.HasField("result") else error
        except grpc.RpcError as exc:
            raise CallFailed("SanitizeBatch", exc) from None
        missing = ItemFailed("MISSING", "no answer for this item")
        return [got.get(str(i), missing) for i in range(n)]

    # -- the ledger ------------------------------------------------------------------------

    def scope(self, subject: str) -> apb.BudgetScope:
        return apb.BudgetScope(tenant_id=self.tenant, dataset_id=self.dataset, subject_id=subject)

    def events(self, subject: str) -> list[apb.LedgerEvent]:
        """Every ledger event that touches ``subject`` of the audit's dataset (none while
        the subject has no budget: it is created by the subject's first charge)."""
        found: list[apb.LedgerEvent] = []
        page = common_pb2.PageRequest(page_size=100)
        while True:
            request = apb.ListEventsRequest(scope=self.scope(subject), page=page)
            try:
                out = self._accountant("ListEvents", request)
            except CallFailed as exc:
                if exc.code == "NOT_FOUND" and not found:
                    return found
                raise
            found += out.events
            if not out.page.next_page_token:
                return found
            page.page_token = out.page.next_page_token

    def budget(self, subject: str) -> apb.BudgetStatus | None:
        """The subject's budget; None before its first charge."""
        try:
            status: apb.BudgetStatus = self._accountant(
                "GetBudget", apb.GetBudgetRequest(scope=self.scope(subject))
            )
        except CallFailed as exc:
            if exc.code == "NOT_FOUND":
                return None
            raise
        return status


# -- the checks -----------------------------------------------------------------------------


@dataclass
class Notes:
    """What one check found: problems flag it; facts describe a pass."""

    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def _outcome(call: Callable[[], Any]) -> Any:
    """The call's answer, or its :class:`CallFailed`."""
    try:
        return call()
    except CallFailed as exc:
        return exc


def _codes(failed: list[Any]) -> str:
    return ", ".join(sorted({f.code for f in failed}))


def seeded_candidates(rig: Rig, notes: Notes) -> None:
    seed = secrets.randbits(63)
    previews = [rig.preview("seeded", seed) for _ in range(3)]
    candidates = [[c.image.data for c in p.candidates] for p in previews]
    same = candidates[0] == candidates[1] == candidates[2]
    notes.facts.append("the seed reproduces the candidates" if same else "the seed is ignored")
    released = []
    for p in previews[:2]:
        got = _outcome(functools.partial(rig.release, p.session_id, candidate=0))
        if not isinstance(got, CallFailed):
            released.append(got.image.data)
        elif got.code != "FAILED_PRECONDITION":
            notes.problems.append(f"candidate release: {got} (expected FAILED_PRECONDITION)")
    if released:
        again = len(released) == 2 and released[0] == released[1]
        rerun = candidates[2][0] in released
        notes.problems.append(
            f"{len(released)} of 2 seeded candidates released (expected FAILED_PRECONDITION)"
            + ("; byte-identical across sessions" if again else "")
            + ("; equal to a re-run of the seeded preview" if rerun else "")
            + ("; the release was reproducible from the caller's seed" if again or rerun else "")
        )
    notes.facts.append("2/2 candidate releases FAILED_PRECONDITION")
    fresh = rig.release(previews[2].session_id).image.data
    notes.expect(
        all(fresh not in c for c in candidates),
        "a fresh release of a seeded session is a candidate",
    )
    notes.facts.append("the fresh release differs from all 6 candidates")
    charged = len(rig.events("seeded"))
    notes.expect(charged == 1 + len(released), f"{charged} events for {1 + len(released)} releases")


def retries_charge_once(rig: Rig, notes: Notes) -> None:
    keys = {name: f"veil-audit-{uuid.uuid4().hex}" for name in ("sequential", "concurrent")}
    once = {
        name: functools.partial(rig.sanitize_keyed, f"retry-{name}", key)
        for name, key in keys.items()
    }
    answers = {
        "sequential": [_outcome(once["sequential"]) for _ in range(3)],
        "concurrent": _at_once(rig.plan.threads, once["concurrent"]),
    }
    for name, key in keys.items():
        got = answers[name]
        failed = [a for a in got if isinstance(a, CallFailed)]
        ok = [a for a in got if not isinstance(a, CallFailed)]
        notes.expect(not failed, f"{name}: {len(failed)} of {len(got)} failed ({_codes(failed)})")
        images, spends = {a.image.data for a in ok}, {a.spend_id for a in ok}
        notes.expect(len(images) <= 1, f"{name}: {len(images)} different images for one key")
        notes.expect(len(spends) <= 1, f"{name}: {len(spends)} different spend ids for one key")
        first = sum(not a.replayed for a in ok)
        notes.expect(first <= 1, f"{name}: {first} answers not marked replayed (at most 1)")
        events = rig.events(f"retry-{name}")
        notes.expect(len(events) == 1, f"{name}: {len(events)} ledger events for one key")
        notes.expect(
            spends <= {e.spend_id for e in events}, f"{name}: a spend id is not a ledger event"
        )
        ours = f"sanitizer/key/{hashlib.sha256(key.encode()).hexdigest()}"
        keyed = sum(e.charge.idempotency_key == ours for e in events)
        notes.facts.append(
            f"{name}: {len(ok)}/{len(got)} answers, {len(events)} event ({keyed} keyed)"
        )


def _at_once(n: int, call: Callable[[], Any]) -> list[Any]:
    """``call`` from ``n`` threads let go together; each answer or CallFailed."""
    gate = threading.Barrier(n)

    def one(_: int) -> Any:
        gate.wait(timeout=TIMEOUT_S)
        return _outcome(call)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def receipts_match_ledger(rig: Rig, notes: Notes) -> None:
    fresh, unseeded = rig.preview("receipt-fresh"), rig.preview("receipt-candidate")
    items = rig.batch("receipt-batch", 2)
    failed = [i for i in items if isinstance(i, ItemFailed)]
    notes.expect(not failed, f"SanitizeBatch: {len(failed)} of 2 items failed ({_codes(failed)})")
    paths = {
        "fresh release": ("receipt-fresh", [rig.release(fresh.session_id)]),
        "candidate release": ("receipt-candidate", [rig.release(unseeded.session_id, candidate=1)]),
        "Sanitize": ("receipt-sanitize", [rig.sanitize("receipt-sanitize")]),
        "SanitizeBatch": ("receipt-batch", [i for i in items if not isinstance(i, ItemFailed)]),
    }  # fmt: skip
    for path, (subject, receipts) in paths.items():
        _agree(notes, path, receipts, rig.events(subject))
    notes.facts.append(f"{sum(len(r) for _, r in paths.values())} receipts agree with the ledger")
    _wrong_delta(rig, notes)


def _agree(notes: Notes, path: str, receipts: list[Any], events: list[Any]) -> None:
    """Each receipt against its ledger event; the subject holds one event per receipt."""
    by_id = {e.spend_id: e for e in events}
    notes.expect(
        len(events) == len(receipts), f"{path}: {len(events)} events for {len(receipts)} receipts"
    )
    for r in receipts:
        e = by_id.get(r.spend_id)
        if e is None:
            notes.problems.append(f"{path}: spend {r.spend_id!r} is not a ledger event")
            continue
        lc, ec, nm = r.ledger_cost, e.cost, e.charge.event.gaussian.noise_multiplier
        notes.expect(
            _close(ec.delta, r.cost.delta), f"{path}: event δ {ec.delta:g} ≠ {r.cost.delta:g}"
        )
        notes.expect(
            _close(lc.epsilon, ec.epsilon) and _close(lc.delta, ec.delta)
            and lc.accountant == ec.accountant,
            f"{path}: ledger_cost ({lc.epsilon:.6g}, {lc.delta:g}, {lc.accountant!r}) is not the "
            f"event's cost ({ec.epsilon:.6g}, {ec.delta:g}, {ec.accountant!r})",
        )  # fmt: skip
        notes.expect(
            _close(nm, r.noise_multiplier),
            f"{path}: event noise multiplier {nm:.6g} ≠ receipt {r.noise_multiplier:.6g}",
        )
        notes.expect(
            lc.epsilon >= r.cost.epsilon * (1 - 1e-9),
            f"{path}: ledger_cost ε {lc.epsilon:.6g} below cost ε {r.cost.epsilon:.6g}",
        )


def _wrong_delta(rig: Rig, notes: Notes) -> None:
    """Half the budgets' δ on every path: INVALID_ARGUMENT, no event, nothing held."""
    wrong = rig.delta / 2
    fresh, candidate = (rig.preview(f"delta-{p}", delta=wrong) for p in ("fresh", "candidate"))
    paths: dict[str, Callable[[], Any]] = {
        "sanitize": functools.partial(rig.sanitize, "delta-sanitize", delta=wrong),
        "batch": lambda: rig.batch("delta-batch", 1, delta=wrong)[0],
        "fresh": functools.partial(rig.release, fresh.session_id),
        "candidate": functools.partial(rig.release, candidate.session_id, candidate=0),
    }
    for path, call in paths.items():
        got = _outcome(call)
        code = getattr(got, "code", "OK")
        notes.expect(code == "INVALID_ARGUMENT", f"δ {wrong:g} ({path}) answered {code}")
        charged = len(rig.events(f"delta-{path}"))
        notes.expect(not charged, f"δ {wrong:g} ({path}) refused, yet {charged} events")
        status = rig.budget(f"delta-{path}")
        held = status.epsilon_reserved if status is not None else 0.0
        notes.expect(held == 0, f"δ {wrong:g} ({path}) refused, yet ε {held:.3g} reserved")
    notes.facts.append(f"a wrong δ is INVALID_ARGUMENT on {len(paths)} paths, nothing held")


def fresh_noise(rig: Rig, notes: Notes) -> None:
    k = rig.plan.fresh
    images = [rig.sanitize("fresh-noise").image.data for _ in range(k)]
    same = [(i, j) for i in range(k) for j in range(i + 1, k) if images[i] == images[j]]
    notes.expect(not same, f"identical releases {same} of {k}")
    charged = len(rig.events("fresh-noise"))
    notes.expect(charged == k, f"{charged} ledger events for {k} releases")
    notes.facts.append(f"{k} releases pairwise different, {charged} events")


def batch_charges_first(rig: Rig, notes: Notes) -> None:
    """The subject's limit lies halfway between the exact ε of m and of m+1 items: an
    accountant that enforces its tight (PLD/PRV) figure admits m; every valid figure bounds
    the exact one from above, so none may admit more."""
    n, m, subject = rig.plan.batch, rig.plan.admitted, "batch-limit"
    mu = calibrate_mu(rig.plan.epsilon, rig.delta)
    limit = sum(gaussian_epsilon(mu * math.sqrt(k), rig.delta) for k in (m, m + 1)) / 2
    rig.limit_subject(subject, limit)
    before = rig.ends.generated() if rig.ends.generated else 0.0
    items = rig.batch(subject, n)
    results = [i for i in items if not isinstance(i, ItemFailed)]
    refused = [i for i in items if isinstance(i, ItemFailed) and i.code == "RESOURCE_EXHAUSTED"]
    other = [i for i in items if isinstance(i, ItemFailed) and i not in refused]
    notes.expect(len(results) == m, f"{len(results)} of {n} items released (budget admits {m})")
    notes.expect(len(refused) == n - m, f"{len(refused)} RESOURCE_EXHAUSTED (expected {n - m})")
    notes.expect(not other, f"{len(other)} items failed otherwise ({_codes(other)})")
    status = rig.budget(subject)
    spent = status.epsilon_spent if status is not None else 0.0
    notes.expect(spent <= limit * (1 + 1e-9), f"subject spent ε {spent:.4g} > limit {limit:.4g}")
    events = rig.events(subject)
    notes.expect(
        {e.spend_id for e in events} == {r.spend_id for r in results},
        f"{len(events)} ledger events for {len(results)} released items",
    )
    notes.facts.append(
        f"{len(results)} released, {len(refused)} RESOURCE_EXHAUSTED, spent ε {spent:.3f} of "
        f"{limit:.3f}"
    )
    if rig.ends.generated is not None:
        made = rig.ends.generated() - before
        notes.expect(made == len(results), f"{made:g} images generated for {len(results)} items")
        notes.facts.append(f"{made:g} images generated")


CHECKS: tuple[tuple[str, Callable[[Rig, Notes], None]], ...] = (
    ("seeded candidates", seeded_candidates),
    ("retries charge once", retries_charge_once),
    ("receipts match the ledger", receipts_match_ledger),
    ("fresh noise", fresh_noise),
    ("batch charges before work", batch_charges_first),
)


def run_checks(rig: Rig, log: Callable[[str], None] | None = None) -> list[Finding]:
    """Every check in order; an unexpected error answer flags the check it broke."""
    findings = []
    for name, check in CHECKS:
        notes, began = Notes(), time.perf_counter()
        try:
            check(rig, notes)
        except CallFailed as exc:
            notes.problems.append(str(exc))
        flagged = bool(notes.problems)
        detail = "; ".join(notes.problems if flagged else notes.facts)
        findings.append(Finding(name, flagged, detail, time.perf_counter() - began))
        if log is not None:
            log(f"{name}: {_verdict(findings[-1])} in {findings[-1].seconds:.1f} s")
    return findings


@contextmanager
def external(plan: ServicePlan) -> Iterator[Endpoints]:
    assert plan.target is not None and plan.accountant is not None
    where = f"sanitizer {plan.target}, accountant {plan.accountant}"
    yield Endpoints(plan.target, plan.token, plan.accountant, plan.accountant_token, where)


def check(plan: ServicePlan) -> None:
    """InvalidArgument for a plan that cannot run, before anything starts."""
    if plan.target is not None:
        if not (plan.token and plan.accountant and plan.accountant_token):
            raise InvalidArgument("--target needs --token, --accountant and --accountant-token")
        if plan.canary is not None:
            raise InvalidArgument("a canary runs on the audit's own servers only (no --target)")
    elif plan.accountant or plan.token or plan.accountant_token:
        raise InvalidArgument("--token, --accountant and --accountant-token need --target")
    if plan.canary not in (None, *SERVICE_CANARIES):
        raise InvalidArgument(f"with --service, canary must be one of {SERVICE_CANARIES}")
    if not (plan.threads >= 2 and plan.fresh >= 2 and 1 <= plan.admitted < plan.batch):
        raise InvalidArgument("sizes: threads, fresh >= 2 and 1 <= admitted < batch")
    if not (math.isfinite(plan.epsilon) and plan.epsilon > 0 and plan.steps >= 0):
        raise InvalidArgument("epsilon must be > 0 and steps >= 0")


def run_service_audit(plan: ServicePlan, log: Callable[[str], None] | None = None) -> ServiceReport:
    """:func:`check`, then every check, against ``plan.target`` or the audit's own servers."""
    check(plan)
    began = time.perf_counter()
    from services.cli.audit_servers import own_servers

    with (external if plan.target else own_servers)(plan) as ends:
        rig = Rig(ends, plan)
        try:
            rig.set_up(own=plan.target is None)
            where = (
                f"{ends.where}; tenant {rig.tenant!r} (ε {rig.tenant_left:.4g} left before the "
                f"audit), dataset {rig.dataset}, δ {rig.delta:g}"
            )
            findings = run_checks(rig, log)
        finally:
            rig.close()
    return ServiceReport(plan, findings, where, time.perf_counter() - began)


# -- the command ----------------------------------------------------------------------------


def plan_from(args: argparse.Namespace) -> ServicePlan:
    """``veil audit --service``'s options: sizes from ``--quick`` or the defaults."""
    sizes: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.steps is not None:
        sizes["steps"] = args.steps
    return ServicePlan(
        target=args.target, token=args.token or "", accountant=args.accountant,
        accountant_token=args.accountant_token or "", epsilon=(args.epsilon or [1.0])[0],
        canary=args.canary, store=args.store, diffae=args.diffae, probes=args.probes, **sizes,
    )  # fmt: skip


def run_service_command(args: argparse.Namespace) -> int:
    """Exit 0: every check passed; 1: one FLAGGED; 2: the audit could not run."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        report = run_service_audit(plan_from(args), None if args.json else _progress)
    except VeilError as exc:
        print(f"veil audit: {exc.message}", file=sys.stderr)
        return 2
    except (CallFailed, TimeoutError, RuntimeError) as exc:
        print(f"veil audit: could not set the audit up: {exc}", file=sys.stderr)
        return 2
    except Exception:  # the audit itself broke: never read as "flagged" (exit 1)
        traceback.print_exc()
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else render(report))
    return 1 if report.flagged else 0


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
