"""``veil audit``: measure from outside that a release leaks no more than its receipt says.

For each target ε it plays the distinguishing game (``services.kernels.audit``) on two
neighbouring codes — a held-out synthetic face's code with its attribute coordinates moved
to ±3·C_a, so that they share the complement — and reports empirical lower bounds on ε:

- **white-box**, batched and one OS-seeded PCG64 generator per release: the likelihood-ratio test on
  the noisy coordinates the sanitizer's own ``privatize`` returns;
- **black-box keep / erase**: a fresh CNN on images released through the sanitizer's own
  ``Pipeline`` (in-process backend, fresh x_T, an OS-seeded PCG64 per release), per complement;
- **real faces keep / erase**, *not covered by the proof*: two held-out faces that differ in
  the protected attributes, and hence in their complements, so the bound includes what leaks
  through (I−P)z (with ``keep``, the complement is released as it is).

Each bound holds with ``--confidence``. Exit 1 when a covered bound lies above its claim:
the implementation is broken. A bound below the claim proves nothing about the claim; how
close the white-box bound comes is the audit's tightness. The hidden ``--canary`` runs the
same audit against a deliberately broken variant, which must exit 1.

``--service`` audits the sanitizer's release-integrity promises through a live sanitizer
over gRPC instead (:mod:`services.cli.audit_service`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from services.inference.backend import InferenceBackend, InferenceSettings
    from services.kernels.audit import Bound
    from services.kernels.mechanism import AttributeSpace, Calibration, Complement
    from services.sanitizer.pipeline import Pipeline

CANARIES = ("halved_noise", "skipped_clip", "fixed_seed", "reused_xt")
SERVICE_CANARIES = ("seeded_release", "double_charge")
"""``--service``'s broken sanitizers (built in :mod:`services.cli.audit_service`)."""
FACES = 64
"""Held-out faces rendered: the first is audited; the real-faces pair is found among them."""


@dataclass(frozen=True)
class Plan:
    """What one audit runs (``veil audit``'s options; ``bench/audit.py`` builds its own)."""

    epsilons: tuple[float, ...] = (1.0,)
    delta: float = 1e-5
    weights: dict[str, float] = field(default_factory=dict)
    samples: int = 8_000_000
    """White-box batched outputs per neighbour (0: skip)."""
    per_release_samples: int = 20_000
    """White-box outputs per neighbour with one generator each (0: skip)."""
    blackbox_samples: int = 256
    """Released images per neighbour for each black-box test (0: skip them)."""
    real_faces: bool = True
    steps: int = 10
    """DDIM steps of each release."""
    seed: int = 9
    """synthfaces seed of the held-out faces (models: seed 0, probes: seed 1)."""
    confidence: float = 0.95
    classifier_steps: int = 300
    batch: int = 64
    canary: str | None = None
    store: Path | None = None
    """Model store; None: the inference settings' (``VEIL_INFERENCE_STORE``, then
    ``VEIL_MODEL_STORE``, then the packaged one)."""
    diffae: str | None = None
    """Store entry of the encoder and decoder; None: the inference settings'."""
    probes: str = "probes"


@dataclass(frozen=True)
class Measured:
    """One test's bound at one claim."""

    name: str
    covered: bool
    """False for the real-faces tests: the proof says nothing about them."""
    bound: Bound
    samples: int
    """Outputs per neighbour (both halves; a black-box test trains on half of them)."""
    seconds: float
    ceiling: float | None = None
    """Black-box: the largest bound this many releases can give (a perfect classifier)."""

    def flags(self, claim: float) -> bool:
        return self.covered and self.bound.epsilon > claim


@dataclass(frozen=True)
class Row:
    claim: float
    tests: list[Measured]

    @property
    def flagged(self) -> bool:
        return any(t.flags(self.claim) for t in self.tests)

    def get(self, name: str) -> Measured | None:
        return next((t for t in self.tests if t.name == name), None)


@dataclass(frozen=True)
class Report:
    plan: Plan
    rows: list[Row]
    face: str
    """Which faces were audited, in words."""
    seconds: float

    @property
    def flagged(self) -> bool:
        return any(r.flagged for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        plan = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.plan).items()}
        rows = [
            {"claim": r.claim, "flagged": r.flagged,
             "tests": [_test_json(t, r.claim) for t in r.tests]}
            for r in self.rows
        ]  # fmt: skip
        return {"plan": plan, "face": self.face, "rows": rows, "flagged": self.flagged,
                "seconds": round(self.seconds, 2)}  # fmt: skip


def _test_json(test: Measured, claim: float) -> dict[str, Any]:
    b = test.bound
    return {
        "test": test.name, "covered": test.covered, "epsilon_lower_bound": b.epsilon,
        "confidence": b.confidence, "samples": test.samples, "seconds": round(test.seconds, 3),
        "flagged": test.flags(claim), "fpr": b.fpr, "fnr": b.fnr, "ceiling": test.ceiling,
    }  # fmt: skip


# -- releases through the sanitizer's own code path -----------------------------------------


async def releases(
    pipeline: Pipeline,
    backend: InferenceBackend,
    code: np.ndarray,
    calibration: Calibration,
    count: int,
    plan: Plan,
    complement: Complement,
    x_T: np.ndarray | None = None,
) -> np.ndarray:
    """``count`` releases (N, R, R, 3) uint8 of one code (d,): ``Pipeline.generate`` with a
    OS-seeded draw each; with ``x_T`` (canary ``reused_xt``) the same noisy codes decoded from
    that x_T instead of the fresh one."""
    from services.kernels.mechanism import release_rng
    from services.sanitizer.pipeline import Draw, from_model

    out = []
    for start in range(0, count, plan.batch):
        rows = np.repeat(code[None], min(plan.batch, count - start), axis=0)
        draws = [Draw(calibration, release_rng()) for _ in rows]
        if x_T is None:
            out.append(await pipeline.generate(rows, draws, plan.steps, complement))
        else:
            noisy, _ = pipeline.noisy_codes(rows, draws, complement)
            fixed = np.repeat(x_T[None], len(rows), axis=0)
            out.append(from_model(np.asarray(await backend.decode(noisy, fixed, plan.steps))))
    return np.concatenate(out)


async def reused_noise(
    backend: InferenceBackend, pair: np.ndarray, resolution: int, plan: Plan
) -> np.ndarray:
    """Canary ``reused_xt``: each neighbour's "original image" is decode(z_i, x) for one
    fixed x; the broken sanitizer DDIM-inverts it (with its own code) and decodes from that."""
    from services.kernels.audit import inverted_noise
    from services.kernels.models import load_diffae
    from services.serving.loading import resolve_store

    x = np.random.default_rng(plan.seed).standard_normal((1, 3, resolution, resolution))
    fixed = np.repeat(x.astype(np.float32), len(pair), axis=0)
    originals = np.asarray(await backend.decode(pair.astype(np.float32), fixed, plan.steps))
    settings = inference_settings(plan)
    model = load_diffae(settings.diffae, resolve_store(settings.store))
    return inverted_noise(model, originals, plan.steps)


# -- the audit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Faces:
    """The held-out faces' codes, the audited one and its real-faces partner."""

    codes: np.ndarray
    audited: int
    partner: int
    described: str


async def held_out_faces(pipeline: Pipeline, plan: Plan) -> Faces:
    """Encode ``FACES`` synthfaces of ``plan.seed`` through the pipeline (whole image); the
    partner of face 0 is the first face whose labels differ from it in the most protected
    attributes (ideally all)."""
    from services.kernels.data import open_dataset
    from services.sanitizer.pipeline import FaceChoice

    uri = f"synthfaces://?n={FACES}&seed={plan.seed}"
    data = open_dataset(uri, resolution=pipeline.model.resolution)
    whole = FaceChoice(whole_image=True)
    prepared = [pipeline.prepare_pixels(data.pixels(i), whole) for i in range(FACES)]
    codes = np.asarray(await pipeline.encode(prepared), dtype=np.float64)
    names = [n for n in pipeline.space.names if n in data.attribute_names]
    labels = data.attributes[:, [data.attribute_names.index(n) for n in names]]
    differ = (labels != labels[0]).sum(axis=1)
    partner = int(np.argmax(differ))
    flipped = [n for n, a, b in zip(names, labels[0], labels[partner], strict=True) if a != b]
    model = pipeline.model
    described = (
        f"probes {model.probes!r} on diffae {model.diffae!r}; {uri} face 0 at "
        f"{model.resolution}×{model.resolution}; real-faces partner: face {partner} (differs "
        f"in {', '.join(flipped) or 'nothing'})"
    )
    return Faces(codes, 0, partner, described)


def white_box_tests(
    space: AttributeSpace, calibration: Calibration, z: np.ndarray, plan: Plan
) -> Iterator[Measured]:
    """The white-box tests (batched, per release) on the neighbours of ``z``."""
    from services.kernels import audit

    canaries: dict[str, dict[str, Any]] = {
        "halved_noise": {"mechanism": audit.halved_noise},
        "skipped_clip": {"mechanism": audit.skipped_clip},
        "fixed_seed": {"rng_factory": audit.fixed_seed},
    }
    broken = canaries.get(plan.canary or "", {})
    pair = audit.neighbours(space, z, reach=3.0)
    for name, samples, per_release in (
        ("white-box batched", plan.samples, False),
        ("white-box per release", plan.per_release_samples, True),
    ):
        if samples <= 0:
            continue
        start = time.perf_counter()
        bound = audit.white_box(
            space, calibration, pair, samples, per_release=per_release,
            confidence=plan.confidence, **broken,
        )  # fmt: skip
        yield Measured(name, True, bound, samples, time.perf_counter() - start)


async def black_box_tests(
    pipeline: Pipeline,
    backend: InferenceBackend,
    faces: Faces,
    calibration: Calibration,
    plan: Plan,
    reused: np.ndarray | None,
) -> AsyncIterator[Measured]:
    """Black-box keep / erase on the neighbours (x_T ``reused`` by the canary when given),
    then, uncovered, the real-faces pair; ``plan.blackbox_samples`` releases each."""
    from services.kernels import audit

    space, n = pipeline.space, plan.blackbox_samples
    complements: tuple[Complement, ...] = ("keep", "erase") if space.can_erase else ("keep",)
    pair = audit.neighbours(space, faces.codes[faces.audited], reach=3.0)
    real = faces.codes[[faces.audited, faces.partner]]
    config = audit.Distinguisher(steps=plan.classifier_steps, seed=plan.seed)
    runs = [(f"black-box {c}", True, pair, c) for c in complements]
    if plan.real_faces:
        runs += [(f"real faces {c}", False, real, c) for c in complements]
    for name, covered, codes, complement in runs:
        start = time.perf_counter()
        images = [
            await releases(
                pipeline, backend, code, calibration, n, plan, complement,
                None if reused is None or not covered else reused[i],
            )
            for i, code in enumerate(codes)
        ]  # fmt: skip
        bound = audit.black_box(images[0], images[1], plan.delta, plan.confidence, config)
        ceiling = audit.best_possible(n, plan.delta, plan.confidence)
        yield Measured(name, covered, bound, n, time.perf_counter() - start, ceiling)


@dataclass(frozen=True)
class Session:
    """What every audit of one model shares: the backend, the sanitizer's pipeline on it and
    the held-out faces (``Plan.store``, ``diffae``, ``probes`` and ``seed`` choose them)."""

    backend: InferenceBackend
    pipeline: Pipeline
    faces: Faces


def inference_settings(plan: Plan) -> InferenceSettings:
    """The in-process backend's settings: the environment's, but for what ``plan`` names."""
    from services.inference.backend import InferenceSettings

    named: dict[str, Any] = {"store": plan.store, "diffae": plan.diffae}
    return InferenceSettings(**{k: v for k, v in named.items() if v is not None})


@asynccontextmanager
async def session(plan: Plan) -> AsyncIterator[Session]:
    """An in-process backend with the sanitizer's pipeline on it, closed on exit."""
    from services.inference.attributes import attribute_model
    from services.inference.local import LocalBackend
    from services.sanitizer.pipeline import Pipeline

    settings = inference_settings(plan)
    backend = LocalBackend(settings)
    try:
        pipeline = Pipeline(lambda: backend, attribute_model(settings, plan.probes))
        yield Session(backend, pipeline, await held_out_faces(pipeline, plan))
    finally:
        await backend.close()


async def audit_with(s: Session, plan: Plan, log: Callable[[str], None] | None = None) -> Report:
    """Every test of ``plan`` at every claim; ``log(text)`` hears of each as it ends."""
    from services.kernels.audit import neighbours
    from services.kernels.mechanism import calibrate

    began = time.perf_counter()
    space, faces = s.pipeline.space, s.faces
    z = faces.codes[faces.audited]
    reused = None
    if plan.canary == "reused_xt" and plan.blackbox_samples > 0:
        pair = neighbours(space, z, reach=3.0)
        reused = await reused_noise(s.backend, pair, s.pipeline.model.resolution, plan)
    rows = []
    for eps in plan.epsilons:
        calibration = calibrate(space, eps, plan.delta, plan.weights)
        tests: list[Measured] = []
        async for t in tests_at(s, plan, calibration, reused):
            tests.append(t)
            if log is not None:
                log(f"ε={eps:g} {t.name}: {t.bound.epsilon:.3f} in {t.seconds:.1f} s")
        rows.append(Row(eps, tests))
    return Report(plan, rows, faces.described, time.perf_counter() - began)


async def tests_at(
    s: Session, plan: Plan, calibration: Calibration, reused: np.ndarray | None
) -> AsyncIterator[Measured]:
    """The white-box tests, then the black-box ones, at one calibration, as each ends."""
    z = s.faces.codes[s.faces.audited]
    for t in white_box_tests(s.pipeline.space, calibration, z, plan):
        yield t
    if plan.blackbox_samples > 0:
        async for t in black_box_tests(s.pipeline, s.backend, s.faces, calibration, plan, reused):
            yield t


def check(plan: Plan) -> None:
    """InvalidArgument for a plan that cannot run, before any model is loaded but the
    probes (every claim is calibrated once, which checks ε, δ and the weights)."""
    from services.common.errors import InvalidArgument
    from services.inference.attributes import attribute_model
    from services.kernels.mechanism import calibrate

    sizes = (plan.samples, plan.per_release_samples, plan.blackbox_samples)
    if min(sizes) < 0 or 0 < plan.blackbox_samples < 16 or plan.steps < 1:
        raise InvalidArgument("sample sizes must be >= 0 (black-box: 0 or >= 16), steps >= 1")
    if not 0 < plan.confidence < 1 or plan.canary not in (None, *CANARIES):
        raise InvalidArgument(f"confidence must lie in (0, 1), canary in {CANARIES}")
    space = attribute_model(inference_settings(plan), plan.probes).space
    for eps in plan.epsilons:
        calibrate(space, eps, plan.delta, plan.weights)


async def run_audit(plan: Plan, log: Callable[[str], None] | None = None) -> Report:
    """:func:`check`, then :func:`audit_with` in a :func:`session` of its own."""
    check(plan)
    began = time.perf_counter()
    async with session(plan) as s:
        report = await audit_with(s, plan, log)
    return replace(report, seconds=time.perf_counter() - began)


# -- the command ----------------------------------------------------------------------------

QUICK: dict[str, Any] = {
    "samples": 1_000_000, "per_release_samples": 1_000, "blackbox_samples": 128,
    "classifier_steps": 150, "steps": 2,
}  # fmt: skip
"""``--quick`` (CI, ε = 1): sizes at which every canary is flagged with margin. Measured by
``python -m bench.audit`` (two runs of 3 repeats each), the smallest bound at these sizes:
halved_noise 1.49, skipped_clip 2.37, fixed_seed 4.91, reused_xt 2.10 (= the ceiling of 128
releases); at 64 releases reused_xt fell to 1.10, at 48 to 0.48."""


def _weight(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError(text)
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected attr=weight; got {text!r}") from None


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``veil audit``."""
    p = subparsers.add_parser(
        "audit", help="lower-bound each release's ε from outside (exit 1: broken)",
        description=__doc__.split("\n\n")[0],
    )  # fmt: skip
    p.add_argument("--store", type=Path, help="model store (default: the inference settings')")
    p.add_argument("--probes", help="probes entry (default: the sanitizer's settings)")
    p.add_argument("--diffae", help="encoder/decoder entry (default: the inference settings')")
    p.add_argument("--epsilon", type=float, action="append", help="target ε (repeatable; 1)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument(
        "--weight",
        type=_weight,
        action="append",
        default=[],
        help="attr=w, the release's weight of attribute attr (repeatable)",
    )
    p.add_argument(
        "--samples", type=int, help=f"white-box batched outputs per neighbour ({Plan.samples:,})"
    )
    p.add_argument(
        "--per-release-samples",
        type=int,
        help=f"white-box, one generator each ({Plan.per_release_samples:,})",
    )
    p.add_argument(
        "--blackbox-samples",
        type=int,
        help=f"releases per neighbour and test, 0: none ({Plan.blackbox_samples})",
    )
    p.add_argument(
        "--real-faces",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the real-faces tests (not covered by the proof)",
    )
    p.add_argument("--steps", type=int, help="DDIM steps (default: the sanitizer's)")
    p.add_argument("--seed", type=int, default=9, help="synthfaces seed of the audited face")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument(
        "--classifier-steps",
        type=int,
        help=f"black-box CNN training steps ({Plan.classifier_steps})",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="CI sizes: " + ", ".join(
        f"{k} {v:,}" for k, v in QUICK.items()))  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument(
        "--service",
        action="store_true",
        help="check release integrity through a live sanitizer over gRPC (own servers "
        "unless --target)",
    )
    p.add_argument("--target", help="--service: the sanitizer's host:port")
    p.add_argument("--token", help="--service --target: bearer token at the sanitizer")
    p.add_argument("--accountant", help="--service --target: the accountant's host:port")
    p.add_argument("--accountant-token", help="--service --target: same tenant's token there")
    p.add_argument("--canary", choices=CANARIES + SERVICE_CANARIES, help=argparse.SUPPRESS)
    p.set_defaults(handler=run_audit_command)
    return p


def plan_from(args: argparse.Namespace) -> Plan:
    """The plan of ``veil audit``'s options: sizes from ``--quick`` or the defaults, each
    overridden by its own option; the probes and DDIM steps from the sanitizer's settings."""
    from services.sanitizer.settings import SanitizerSettings

    settings = SanitizerSettings()
    sizes: dict[str, Any] = dict(QUICK) if args.quick else {"steps": settings.default_ddim_steps}
    for name in ("samples", "per_release_samples", "blackbox_samples", "classifier_steps",
                 "steps"):  # fmt: skip
        if getattr(args, name) is not None:
            sizes[name] = getattr(args, name)
    return Plan(
        epsilons=tuple(args.epsilon or (1.0,)), delta=args.delta, weights=dict(args.weight),
        real_faces=args.real_faces, seed=args.seed, confidence=args.confidence,
        canary=args.canary, store=args.store, diffae=args.diffae,
        probes=args.probes or settings.probes, **sizes,
    )  # fmt: skip


def run_audit_command(args: argparse.Namespace) -> int:
    """Exit 0: every covered bound within its claim; 1: one above it (broken); 2: the
    audit could not run (bad option, model store)."""
    from services.common.errors import VeilError

    if args.service:
        from services.cli.audit_service import run_service_command

        return run_service_command(args)
    if args.target or args.canary in SERVICE_CANARIES:
        print("veil audit: --target and the service canaries need --service", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    plan = plan_from(args)
    try:
        report = asyncio.run(run_audit(plan, None if args.json else _progress))
    except VeilError as exc:
        print(f"veil audit: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=1) if args.json else render(report))
    return 1 if report.flagged else 0


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def render(report: Report) -> str:
    """The report as a table: one line per (claim, test)."""
    plan = report.plan
    lines = [
        f"veil audit: {report.face}",
        f"δ = {plan.delta:g}, weights {plan.weights or 'all 1'}, DDIM steps {plan.steps}, "
        f"confidence {plan.confidence:g}" + (f", CANARY {plan.canary}" if plan.canary else ""),
        "",
        f"{'claim ε':>8}  {'test':<22} {'lower bound':>11} {'/claim':>7} {'samples':>10} "
        f"{'ceiling':>7} {'wall s':>7}  verdict",
    ]
    for row in report.rows:
        for t in row.tests:
            verdict = ("ABOVE CLAIM" if t.flags(row.claim) else "ok") if t.covered else (
                "not covered by the proof")  # fmt: skip
            ceiling = "-" if t.ceiling is None else f"{t.ceiling:.2f}"
            lines.append(
                f"{row.claim:>8g}  {t.name:<22} {t.bound.epsilon:>11.3f} "
                f"{t.bound.epsilon / row.claim:>7.2f} {t.samples:>10,} {ceiling:>7} "
                f"{t.seconds:>7.1f}  {verdict}"
            )
    verdict = "FLAGGED: a bound lies above its claim" if report.flagged else "passed"
    lines += ["", f"{verdict} (wall time {report.seconds:.1f} s)"]
    return "\n".join(lines)
