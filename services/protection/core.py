"""The protection service's core: protect images for one authorized model, evaluate how
well protection works, without any transport.

A photo of any size is protected at the authorized model's resolution R: it is resized to
R×R, perturbed there (FMD or the fast generator, ‖δ‖∞ ≤ ε), and the perturbation δ is
resized back (bilinear: every value stays within [−ε, ε]) and added to the photo at its own
resolution, which is kept. The result is rounded to 8 bits and clipped again to the ε-ball
around the original, so ``linf`` ≤ ε holds for the bytes returned losslessly (PNG, the
default). For an R×R image the perturbation is exactly the kernel's.

A caller may ask for JPEG instead, at a quality the protection was optimised for (70–95,
robustness ``jpeg`` or ``full``); the codec's error then comes on top of the perturbation and
``linf`` measures the decoded JPEG. Every answer says what the protection was optimised for and
the authorized model's margin on the returned image and after the edges of that range
(:mod:`services.protection.transforms`), measured through the authorized model's backend.

The kernels and the worker pool are ports (:mod:`services.protection.ports`) that
:mod:`services.protection.app` wires: the core imports no grpc, no generated stubs, no
runtime, and loads no torch (docs/ARCHITECTURE.md, "Cores without transport").
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfDomain
from services.common.imaging import ImageLimits, decode_image, encode_image
from services.inference.backend import ROBUSTNESS, ProtectParams
from services.inference.catalog import ClassifierInfo
from services.kernels.domain import DomainModel, DomainScore
from services.protection.metrics import ProtectionMetrics
from services.protection.models import SharedBase
from services.protection.ports import AuthorizedModels, Kernels, Offload, Resolved
from services.protection.settings import ProtectionSettings
from services.protection.transforms import (
    AS_RETURNED,
    CHECKS,
    DEFAULT_JPEG_QUALITY,
    JPEG_QUALITIES,
    OPTIMISED_FOR,
    covers_jpeg,
    margins,
    operation,
)

MODES = ("fmd", "fast")
ENCODINGS = ("", "png", "jpeg")
"""A request's output encoding: "" = the server's lossless default."""


@dataclass(frozen=True)
class Params:
    """FMD parameters in [0, 1] pixel units; zero values were filled with defaults."""

    epsilon: float = 16 / 255
    step_size: float = 4 / 255
    iterations: int = 100
    ce_weight: float = 10.0
    feature_layer: str = ""
    robustness: str = "full"
    """What FMD optimises the result to survive (one of
    ``services.inference.backend.ROBUSTNESS``): ``full`` by default (JPEG 70-95, resizes,
    shifts), since a platform's JPEG re-encode undoes the authorized label of a ``none``
    protection (32 held-out faces of seed 17, 100 steps, after JPEG 90 / 75: 0.906 / 0.719
    with ``none``, 0.969 / 0.969 with ``jpeg``) and a 0.5x resize that of a ``jpeg`` one
    (0.812 of 1.000); README "Measured on held-out faces". The fast mode ignores it: its
    generator's training fixes what it survives."""


@dataclass(frozen=True)
class ProtectJob:
    image: bytes
    label: int | None = None
    mode: str = ""
    params: Params = field(default_factory=Params)
    model: str = ""
    version: int = 0
    request_id: str = ""
    time_budget_s: float | None = None
    tenant: str = ""
    """Whose versions ``version`` names (0 = the tenant's production alias)."""
    encoding: str = ""
    """One of :data:`ENCODINGS`."""
    jpeg_quality: int = 0
    """For ``jpeg``: 0 = :data:`~services.protection.transforms.DEFAULT_JPEG_QUALITY`."""
    allow_out_of_domain: bool = False


@dataclass(frozen=True)
class Check:
    """The authorized model on one transformation of the returned image."""

    transform: str
    prediction: int
    margin: float
    """Logit of y minus the largest other logit."""


@dataclass(frozen=True)
class Protected:
    image: bytes
    linf: float
    feature_distortion: float
    authorized_label: int
    authorized_prediction_after: int
    steps_run: int
    early_stopped: bool
    mode: str
    psnr_db: float
    model: str
    version: int
    request_id: str = ""
    robustness: str = "none"
    """What the protection was optimised to survive (for the fast mode, what its generator
    was trained for)."""
    format: str = "PNG"
    """The returned image's encoding: PNG, WEBP (lossless) or JPEG."""
    optimised_for: tuple[str, ...] = ()
    checks: tuple[Check, ...] = ()
    margin: float = 0.0
    """The smallest margin over ``checks``."""
    domain: DomainScore | None = None
    """The image's in-domain score, only when the caller set ``allow_out_of_domain`` (a
    function of the input for the caller alone: never logged or counted)."""


@dataclass(frozen=True)
class Pair:
    original: bytes
    protected: bytes
    label: int


@dataclass(frozen=True)
class Accuracy:
    model: str
    version: int
    original: float
    protected: float


@dataclass(frozen=True)
class Evaluation:
    authorized_original: float
    authorized_protected: float
    unauthorized: list[Accuracy]
    mean_linf: float
    mean_psnr_db: float
    count: int


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def to_model(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """(H, W, 3) uint8 → (3, R, R) float32 in [-1, 1] (area resize when shrinking)."""
    if pixels.shape[:2] != (resolution, resolution):
        shrink = pixels.shape[0] > resolution or pixels.shape[1] > resolution
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        pixels = cv2.resize(pixels, (resolution, resolution), interpolation=interpolation)
    return (pixels.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def apply_perturbation(original: np.ndarray, delta: np.ndarray, epsilon: float) -> np.ndarray:
    """The original (H, W, 3) uint8 plus δ (3, R, R) in [-1, 1] units, resized to the
    original, rounded, and clipped to the ε-ball ([0, 1] units) and to [0, 255]."""
    height, width = original.shape[:2]
    step = np.asarray(delta.transpose(1, 2, 0) * 127.5, dtype=np.float32)  # pixel units
    if step.shape[:2] != (height, width):
        step = np.asarray(
            cv2.resize(step, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.float32
        )
    bound = math.floor(epsilon * 255 + 1e-9)
    step = np.clip(np.rint(step), -bound, bound)
    return np.clip(original.astype(np.int16) + step.astype(np.int16), 0, 255).astype(np.uint8)


class Protection:
    """Protect and evaluate; one instance per server."""

    def __init__(
        self,
        settings: ProtectionSettings,
        backend: Callable[[], Kernels],
        authorized: ClassifierInfo,
        evaluation: Callable[[], Kernels],
        unauthorized: dict[str, ClassifierInfo],
        metrics: ProtectionMetrics,
        offload: Offload,
        limits: ImageLimits | None = None,
        models: AuthorizedModels | None = None,
        fast_robustness: str | None = "none",
        domain: DomainModel | None = None,
    ) -> None:
        self.settings = settings
        self._backend = backend
        self._evaluation = evaluation
        self.authorized = authorized
        self.unauthorized = unauthorized
        self.metrics = metrics
        self._offload = offload
        self.limits = limits or ImageLimits()
        self.models = models or SharedBase()
        self.fast_robustness = fast_robustness
        self.domain = domain
        """The authorized model's in-domain score on its penultimate features (None: no
        check)."""
        """What the fast mode's generator was trained to survive (its manifest says); None:
        it was trained for another authorized model, and the fast mode is refused."""

    # -- validation ------------------------------------------------------------------------

    async def check_model(self, tenant: str, name: str, version: int) -> Resolved:
        """The tenant's version of the authorized model (0 = its production alias);
        NOT_FOUND for another model, and for an unknown version or another tenant's
        (the same answer)."""
        if name and name != self.authorized.name:
            raise NotFound(
                f"authorized model {name!r} is not served; this server protects for "
                f"{self.authorized.name!r}"
            )
        if version < 0:
            raise InvalidArgument("version must be >= 0", details={"field": "authorized_model"})
        return await self.models.resolve(tenant, self.authorized.name, version)

    def check_params(self, params: Params, mode: str) -> Params:
        s = self.settings
        if not 0 < params.epsilon <= s.max_epsilon:
            raise InvalidArgument(
                f"params.epsilon must be in (0, {s.max_epsilon:.4f}]; got {params.epsilon!r}",
                details={"field": "params.epsilon"},
            )
        if not 0 < params.step_size <= 1:
            raise InvalidArgument(
                "params.step_size must be in (0, 1]", details={"field": "params.step_size"}
            )
        if not 1 <= params.iterations <= s.max_iterations:
            raise InvalidArgument(
                f"params.iterations must be in [1, {s.max_iterations}]; got {params.iterations}",
                details={"field": "params.iterations"},
            )
        if not (math.isfinite(params.ce_weight) and 0 <= params.ce_weight <= 1e6):
            raise InvalidArgument(
                "params.ce_weight must be in [0, 1e6]", details={"field": "params.ce_weight"}
            )
        if params.robustness not in ROBUSTNESS:
            raise InvalidArgument(
                f"params.robustness must be one of {ROBUSTNESS}; got {params.robustness!r}",
                details={"field": "params.robustness"},
            )
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {MODES}", details={"field": "mode"})
        return params

    def check_output(self, encoding: str, quality: int, robustness: str) -> tuple[str, int]:
        """(format, JPEG quality) of the answer: lossless unless JPEG is asked for, and JPEG
        only at a quality the protection (optimised for ``robustness``) covers."""
        if encoding not in ENCODINGS:
            raise InvalidArgument(
                f"output_encoding must be one of {ENCODINGS[1:]} or unset; got {encoding!r}",
                details={"field": "output_encoding"},
            )
        if encoding != "jpeg":
            if quality:
                raise InvalidArgument(
                    "jpeg_quality is only for output_encoding JPEG",
                    details={"field": "jpeg_quality"},
                )
            return ("PNG" if encoding == "png" else self.settings.output_format), 0
        if not covers_jpeg(robustness):
            raise InvalidArgument(
                f"JPEG output needs a protection optimised for JPEG (robustness jpeg or "
                f"full); this one is {robustness!r}, so a JPEG could undo the authorized "
                "label: ask for PNG",
                details={"field": "output_encoding"},
            )
        quality = quality or DEFAULT_JPEG_QUALITY
        low, high = JPEG_QUALITIES
        if not low <= quality <= high:
            raise InvalidArgument(
                f"jpeg_quality must be in [{low}, {high}], the qualities the protection is "
                f"optimised for; got {quality}",
                details={"field": "jpeg_quality"},
            )
        return "JPEG", quality

    def check_label(self, label: int | None) -> int | None:
        if label is None or label < 0:
            return None
        if label >= self.authorized.num_classes:
            raise InvalidArgument(
                f"label must be in [0, {self.authorized.num_classes}) or unset",
                details={"field": "label"},
            )
        return label

    # -- protect ---------------------------------------------------------------------------

    async def protect(self, job: ProtectJob) -> Protected:
        start = time.perf_counter()
        mode = job.mode or self.settings.default_mode
        params = self.check_params(job.params, mode)
        label = self.check_label(job.label)
        robustness = params.robustness
        if mode == "fast":
            if self.fast_robustness is None:
                raise FailedPrecondition(
                    f"the fast mode's generator was not trained for the authorized model "
                    f"({self.authorized.entry}): ask for PROTECTION_MODE_FMD",
                    details={"field": "mode"},
                )
            robustness = self.fast_robustness
        fmt, quality = self.check_output(job.encoding, job.jpeg_quality, robustness)
        resolved = await self.check_model(job.tenant, job.model, job.version)
        resolution = self.authorized.resolution
        pixels = (await self._offload(decode_image, job.image, self.limits)).pixels
        x = to_model(pixels, resolution)[None]
        backend = self._backend()
        domain = await self.screen(backend, x, job.allow_out_of_domain)
        if mode == "fast":
            out = await backend.protect_fast(x)
            steps, early = 0, False
        else:
            budget = None
            if job.time_budget_s is not None:
                # Keep room to verify, encode and answer: the margin, or a quarter of the
                # time left when that is more (a loaded machine is slower at both).
                reserve = max(self.settings.deadline_margin_s, 0.25 * job.time_budget_s)
                budget = max(job.time_budget_s - reserve, 1e-3)
            kernel = ProtectParams(
                epsilon=params.epsilon,
                step_size=params.step_size,
                iterations=params.iterations,
                ce_weight=params.ce_weight,
                robustness=robustness,
            )
            labels = None if label is None else np.array([label])
            out = await backend.protect(
                x, labels, kernel, time_budget_s=budget, version=resolved.serving
            )
            steps = int(np.asarray(out.steps_run).reshape(-1)[0])
            early = steps < params.iterations
            self.metrics.steps.observe(steps)
            if early:
                self.metrics.early_stops.inc()
        protected_model = np.asarray(out.protected, dtype=np.float32)
        delta = protected_model[0] - x[0]
        result = await self._offload(apply_perturbation, pixels, delta, params.epsilon)
        data, returned, variants = await self._offload(
            encoded_and_checked, result, fmt, quality, CHECKS[robustness], resolution, self.limits
        )
        logits, _ = await backend.classify(
            np.stack([x[0], *variants]), model=self.authorized.name, version=resolved.serving
        )
        logits = np.asarray(logits)
        before = int(logits[0].argmax())
        y = before if label is None else label
        names = (AS_RETURNED, *CHECKS[robustness])
        checks = tuple(
            Check(name, int(row.argmax()), float(m))
            for name, row, m in zip(names, logits[1:], margins(logits[1:], y), strict=True)
        )
        after = checks[0].prediction
        linf = float(np.abs(returned.astype(np.int16) - pixels.astype(np.int16)).max()) / 255
        self.metrics.protections.labels(mode=mode).inc()
        self.metrics.latency.labels(mode=mode).observe(time.perf_counter() - start)
        return Protected(
            image=data,
            linf=linf,
            feature_distortion=float(np.asarray(out.feature_distortion).reshape(-1)[0]),
            authorized_label=before if label is None else label,
            authorized_prediction_after=after,
            steps_run=steps,
            early_stopped=early,
            mode=mode,
            psnr_db=psnr(pixels, returned),
            model=self.authorized.name,
            version=resolved.number,
            request_id=job.request_id,
            robustness=robustness,
            format=fmt,
            optimised_for=OPTIMISED_FOR[robustness],
            checks=checks,
            margin=min(c.margin for c in checks),
            domain=domain,
        )

    async def screen(self, backend: Kernels, x: np.ndarray, allow: bool) -> DomainScore | None:
        """The image's score on the authorized model's base version (the one its domain was
        fitted on); OutOfDomain above the threshold unless ``allow``; the score for the
        answer only when ``allow``. Nothing of it is logged or counted."""
        if self.domain is None:
            return None
        _, features = await backend.classify(x, model=self.authorized.name, version=1)
        score = self.domain.judge(np.asarray(features).reshape(1, -1))[0]
        if not score.in_domain and not allow:
            raise OutOfDomain(
                f"the image lies outside what the authorized model {self.authorized.entry!r} "
                "was trained on: the reading the protection would keep means little. Set "
                "allow_out_of_domain to protect it anyway",
                details=score.details(),
            )
        return score if allow else None

    # -- evaluate --------------------------------------------------------------------------

    def known_unauthorized(self, names: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        if not names:
            return [(name, 1) for name in self.unauthorized]
        out = []
        for name, version in names:
            if name not in self.unauthorized:
                raise InvalidArgument(
                    f"unknown unauthorized model {name!r}; known: {sorted(self.unauthorized)}",
                    details={"field": "unauthorized_models"},
                )
            if version not in (0, *self.unauthorized[name].versions):
                raise NotFound(f"{name!r} has no version {version}")
            out.append((name, version or max(self.unauthorized[name].versions)))
        return out

    async def evaluate(
        self,
        pairs: Sequence[Pair],
        model: str,
        version: int,
        unauthorized: Sequence[tuple[str, int]],
        tenant: str = "",
    ) -> Evaluation:
        if not pairs:
            raise InvalidArgument("give at least one labelled pair", details={"field": "images"})
        if len(pairs) > 1024:
            raise InvalidArgument("at most 1024 pairs per call", details={"field": "images"})
        resolved = await self.check_model(tenant, model, version)
        others = self.known_unauthorized(unauthorized)

        def decode(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
            a = decode_image(pair.original, self.limits).pixels
            b = decode_image(pair.protected, self.limits).pixels
            if a.shape != b.shape:
                raise InvalidArgument("an original and its protected image differ in size")
            return a, b

        decoded = await asyncio.gather(*(self._offload(decode, p) for p in pairs))
        labels = np.array([p.label for p in pairs])
        linf = [float(np.abs(a.astype(int) - b.astype(int)).max()) / 255 for a, b in decoded]
        psnrs = [psnr(a, b) for a, b in decoded]

        async def accuracy(backend: Kernels, info: ClassifierInfo, v: int) -> tuple[float, float]:
            res = info.resolution
            originals = np.stack([to_model(a, res) for a, _ in decoded])
            protected = np.stack([to_model(b, res) for _, b in decoded])
            before, _ = await backend.classify(originals, model=info.name, version=v)
            after, _ = await backend.classify(protected, model=info.name, version=v)
            return (
                float(np.mean(np.asarray(before).argmax(1) == labels)),
                float(np.mean(np.asarray(after).argmax(1) == labels)),
            )

        auth = await accuracy(self._backend(), self.authorized, resolved.serving)
        results = []
        for name, v in others:
            info = self.unauthorized[name]
            original, protected = await accuracy(self._evaluation(), info, v)
            results.append(Accuracy(name, v, original, protected))
        self.metrics.evaluations.inc()
        finite = [p for p in psnrs if math.isfinite(p)]
        return Evaluation(
            authorized_original=auth[0],
            authorized_protected=auth[1],
            unauthorized=results,
            mean_linf=float(np.mean(linf)),
            mean_psnr_db=float(np.mean(finite)) if finite else math.inf,
            count=len(pairs),
        )


def encoded_and_checked(
    result: np.ndarray,
    fmt: str,
    quality: int,
    checks: Sequence[str],
    resolution: int,
    limits: ImageLimits,
) -> tuple[bytes, np.ndarray, list[np.ndarray]]:
    """(the answer's bytes, its pixels as a client decodes them, the authorized model's
    inputs: those pixels and each of ``checks`` applied to them)."""
    if fmt == "JPEG":
        data = encode_image(result, "JPEG", quality=quality)
        returned = decode_image(data, limits).pixels
    else:
        data, returned = encode_image(result, fmt), result
    variants = [returned, *(operation(name, resolution)(returned) for name in checks)]
    return data, returned, [to_model(v, resolution) for v in variants]


def with_defaults(params: Params) -> Params:
    """Zero values of the wire's FmdParams mean the paper's defaults (and an empty
    robustness the service's, ``jpeg``)."""
    d = Params()
    return replace(
        params,
        epsilon=params.epsilon or d.epsilon,
        step_size=params.step_size or d.step_size,
        iterations=params.iterations or d.iterations,
        robustness=params.robustness or d.robustness,
    )
