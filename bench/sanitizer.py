"""The sanitizer's evaluation: what attackers read from its releases, what utility is left.

    .venv/bin/python -m bench.sanitizer [--n 256] [--seed 5] [--steps 10] [--quick]
        [--epsilons 0.5,1,2,4,8] [--no-speed] [--triton-url HOST:PORT]
        [--attacker FILE.onnx --attacker-labels ATTR [--attacker-size 32]
         [--attacker-mean 0.5] [--attacker-std 0.5]] [--plot bench/figures/sanitizer.png]

Faces: ``--n`` synthfaces of a seed no model saw (the models were trained on seed 0, the
probes fitted on seed 1; default seed 5), at the model's resolution. Every release takes the
service's code path: ``Pipeline.prepare_pixels(pixels, FaceChoice(whole_image=True))`` (a
32×32 face is the model's crop as it is, copied), ``Pipeline.encode``, then
``Pipeline.generate(z, [Draw(calibrate(ε, δ, all weights 1), release_rng()), …], steps,
complement)`` on the in-process backend: fresh OS-seeded noise and a fresh x_T per image, so two
runs differ by sampling noise. "no noise" decodes the unchanged code from a fresh x_T (the
autoencoder alone); "original" is the faces themselves (each attacker's ceiling here).

What each figure measures:

- **resnet / vgg**: the committed attackers (``attacker-<attr>-<arch>``, trained on 19 000
  original faces) on the releases: what a model built for originals reads from them.
- **adaptive**: a fresh small ResNet (the project's classifier and training loop, one 2-way
  head per attribute, trained jointly) trained on the first ``--train-fraction`` of the
  releases with their true labels, tested on the rest. It adapts to the release
  distribution, but learns from a few hundred images only: the "original" row is its
  ceiling at this size.
- **probe**: logistic regression (``services.kernels.probes.fit_logistic``) on the codes of
  the released images re-encoded, same split: what is still linearly readable in z-space.
- **bal.**: the committed attackers' balanced accuracy (mean recall over the two classes),
  whose chance is 0.5 whatever the labels' balance: an attacker that reads nothing and
  always says "no glasses" scores the majority rate in raw accuracy, one biased the other
  way scores below it, and both score 0.5 balanced.
- **chance**: the majority rate of the labels evaluated (all n; the test part for
  adaptive and probe).
- **task**: ``task-resnet`` (pose, 3 classes) on the releases; **PSNR / SSIM** against the
  originals (``services.kernels.metrics``, images in [-1, 1]).
- **baselines** at the same ε, δ: DP-Pix (Fan 2018: b×b cell means + Laplace noise; b = 4,
  neighbours differ in m = 16 pixels; on RGB an m-pixel change moves 3 channels, so the
  scale is 3·255·m/(b²·ε), not the grey-level 255·m/(b²·ε)) and the Gaussian mechanism on
  the whole image in [0, 1] (L2 sensitivity √(3·R²), σ = Δ/μ with μ from
  ``calibrate_mu``). Their neighbour relations differ from the sanitizer's (m pixels; any
  two images; any two faces in the attribute coordinates), so equal ε is not equal meaning.
- **speed**: releases/s and the latency of one release call (p50, p99; at batch 16 every
  release of a call waits for the whole call), encode + mechanism + decode, no PNG; with
  ``--triton-url`` the in-process and Triton calls alternate, so that a shared machine's
  load swings hit both alike.

What it does not prove: an attacker's accuracy bounds what *that* attacker reads, not what
any attacker could; accuracy near chance is evidence, not a guarantee. The (ε, δ) proof covers
only the clipped attribute coordinates; whatever leaks through (I−P)z is measured here, not
bounded. Synthetic faces with exact labels are not real photos. With n images an accuracy
has a standard error of about 0.5/√n (0.03 at n = 256; 0.044 on a test half of 128).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F

from bench.kernels import table
from services.inference.attributes import attribute_model
from services.inference.backend import InferenceBackend, InferenceSettings
from services.inference.factory import create_backend
from services.inference.local import LocalBackend
from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.defaults import ARCHITECTURES
from services.kernels.mechanism import (
    Calibration,
    Complement,
    calibrate,
    calibrate_mu,
    fresh_noise,
    release_rng,
)
from services.kernels.metrics import psnr, ssim
from services.kernels.models import load_classifier
from services.kernels.probes import fit_logistic
from services.kernels.store import ModelStore
from services.kernels.training.data import load_table
from services.kernels.training.loop import TrainConfig, Trainer
from services.sanitizer.pipeline import Draw, FaceChoice, Pipeline, from_model

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
QUICK_EPSILONS = (1.0, 8.0)
WHOLE = FaceChoice(whole_image=True)
PLOT = Path(__file__).resolve().parent / "figures" / "sanitizer.png"


# -- releases --------------------------------------------------------------------------------


async def sanitize(
    pipeline: Pipeline,
    backend: InferenceBackend,
    z: np.ndarray,
    calibration: Calibration | None,
    complement: Complement,
    steps: int,
    batch: int,
) -> np.ndarray:
    """Releases (n, R, R, 3) uint8 of codes ``z``: the mechanism through
    ``Pipeline.generate``, or (``calibration`` None) the code decoded as it is, fresh x_T."""
    out = []
    for start in range(0, len(z), batch):
        rows = z[start : start + batch]
        if calibration is None:
            x_t = fresh_noise(release_rng(), len(rows), pipeline.model.resolution)
            out.append(from_model(await backend.decode(rows.astype(np.float32), x_t, steps)))
        else:
            draws = [Draw(calibration, release_rng()) for _ in rows]
            out.append(await pipeline.generate(rows, draws, steps, complement))
    return np.concatenate(out)


async def encode(pipeline: Pipeline, pixels: np.ndarray, batch: int) -> np.ndarray:
    """Codes (n, d) of (n, R, R, 3) uint8 faces, through the pipeline's whole-image crop."""
    out = []
    for start in range(0, len(pixels), batch):
        prepared = [pipeline.prepare_pixels(p, WHOLE) for p in pixels[start : start + batch]]
        out.append(np.asarray(await pipeline.encode(prepared)))
    return np.concatenate(out)


def dp_pix(pixels: np.ndarray, epsilon: float, block: int, m: int) -> tuple[np.ndarray, float]:
    """DP-Pix (Fan 2018): each channel's b×b cell means + Laplace(3·255·m / (b²·ε))."""
    n, res = pixels.shape[0], pixels.shape[1]
    if res % block:
        raise SystemExit(f"--dppix-block {block} does not divide the resolution {res}")
    cells = pixels.reshape(n, res // block, block, res // block, block, 3).mean((2, 4))
    scale = 3 * 255 * m / (block * block * epsilon)
    noisy = cells + release_rng().laplace(0.0, scale, cells.shape)
    out = noisy.repeat(block, axis=1).repeat(block, axis=2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), scale


def gaussian_pixels(pixels: np.ndarray, epsilon: float, delta: float) -> tuple[np.ndarray, float]:
    """The Gaussian mechanism on the whole image in [0, 1]: σ = √(3·R²) / μ(ε, δ)."""
    sigma = math.sqrt(pixels[0].size) / calibrate_mu(epsilon, delta)
    noisy = pixels / 255.0 + release_rng().standard_normal(pixels.shape) * sigma
    return np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8), sigma


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(n, R, R, 3) uint8 → (n, 3, R, R) float32 in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# -- attackers -------------------------------------------------------------------------------


@dataclass
class OutsideAttacker:
    """An ONNX classifier from outside the project, predicting one binary attribute."""

    path: Path
    target: str
    size: int
    mean: np.ndarray
    std: np.ndarray
    threshold: float
    session: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(
            str(self.path), providers=["CPUExecutionProvider"]
        )

    @property
    def name(self) -> str:
        return f"onnx:{self.path.stem}"

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """0/1 per image: argmax of 2 outputs, or 1 output > ``threshold``."""
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        x = ((x.numpy() - self.mean[:, None, None]) / self.std[:, None, None]).astype(np.float32)
        spec = self.session.get_inputs()[0]
        step = spec.shape[0] if isinstance(spec.shape[0], int) else len(x)
        outs = [
            self.session.run(None, {spec.name: x[i : i + step]})[0] for i in range(0, len(x), step)
        ]
        scores = np.concatenate(outs).reshape(len(x), -1)
        if scores.shape[1] == 2:
            return scores.argmax(1)
        if scores.shape[1] == 1:
            return (scores[:, 0] > self.threshold).astype(np.int64)
        raise SystemExit(f"{self.path}: expected 1 or 2 outputs per image; got {scores.shape[1]}")


def adaptive_accuracy(
    x: torch.Tensor, y: torch.Tensor, cut: int, steps: int, width: int, threads: int
) -> np.ndarray:
    """(A,) held-out accuracy of a fresh ResNet trained on ``x[:cut]`` (mirrored at random,
    as the committed attackers were), one 2-way head per attribute column of ``y``."""
    count = y.shape[1]
    config = ClassifierConfig(
        arch="resnet",
        num_classes=2 * count,
        resolution=x.shape[-1],
        width=width,
        role="attacker",
        target="all",
    )

    def step_loss(net: torch.nn.Module, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = x[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return F.cross_entropy(net(images).view(-1, 2), y[idx].flatten())

    train = TrainConfig(
        steps=steps,
        batch_size=32,
        lr=1e-3,
        ema_decay=0.99,
        threads=threads,
        checkpoint_every=0,
        progress=False,
    )
    net = Trainer(build_classifier(config), step_loss, cut, train).run().ema.eval()
    with torch.no_grad():
        pred = net(x[cut:]).view(-1, count, 2).argmax(-1)
    return (pred == y[cut:]).double().mean(0).numpy()


def probe_accuracy(z: torch.Tensor, y: torch.Tensor, cut: int) -> np.ndarray:
    """(A,) held-out accuracy of a logistic regression per attribute on codes ``z``."""
    accs = []
    for a in range(y.shape[1]):
        w, b = fit_logistic(z[:cut], y[:cut, a])
        accs.append(float(((z[cut:] @ w + b > 0).long() == y[cut:, a]).double().mean()))
    return np.array(accs)


def balanced_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean recall over the classes present in ``truth``: 0.5 for any guess that ignores the
    image on two classes, however biased, where raw accuracy ranges from 1 − majority rate
    (always the minority class) to the majority rate."""
    recalls = [
        float((predicted[truth == c] == c).double().mean()) for c in torch.unique(truth).tolist()
    ]
    return sum(recalls) / len(recalls)


def majority(labels: torch.Tensor) -> float:
    return float(labels.bincount().max()) / max(len(labels), 1)


# -- evaluation ------------------------------------------------------------------------------


@dataclass
class Row:
    """One kind of release at one ε and what every attacker and utility figure made of it."""

    mechanism: str
    """``original``, ``no noise``, ``keep``, ``erase``, ``DP-Pix`` or ``Gaussian``."""
    epsilon: float
    noise: str = "-"
    committed: dict[str, float] = field(default_factory=dict)
    balanced: dict[str, float] = field(default_factory=dict)
    """The committed attackers' balanced accuracy (mean recall over the classes; chance 0.5)."""
    outside: dict[str, float] = field(default_factory=dict)
    adaptive: dict[str, float] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)
    task: float = float("nan")
    psnr: float = float("nan")
    ssim: float = float("nan")

    @property
    def eps_label(self) -> str:
        return f"{self.epsilon:g}" if math.isfinite(self.epsilon) else "∞"


@dataclass
class Context:
    """What every row is evaluated against: the faces, their labels and the attackers."""

    pipeline: Pipeline
    names: tuple[str, ...]
    originals: np.ndarray
    labels: torch.Tensor
    tasks: torch.Tensor
    cut: int
    attackers: dict[str, tuple[str, Classifier]]
    """store name → (attribute, model)."""
    outside: list[OutsideAttacker]
    task_model: Classifier
    store: ModelStore
    args: argparse.Namespace

    def column(self, name: str) -> torch.Tensor:
        return self.labels[:, self.names.index(name)]


async def evaluate(ctx: Context, row: Row, pixels: np.ndarray, z: np.ndarray | None) -> Row:
    """Fill ``row`` with every figure for ``pixels``; ``z``: their codes when known."""
    x, args = to_tensor(pixels), ctx.args
    for name, (attr, model) in ctx.attackers.items():
        predicted, truth = model.predict(x), ctx.column(attr)
        row.committed[name] = float((predicted == truth).double().mean())
        row.balanced[name] = balanced_accuracy(predicted, truth)
    for outside in ctx.outside:
        hits = outside.predict(pixels) == ctx.column(outside.target).numpy()
        row.outside[outside.name] = float(hits.mean())
    row.task = float((ctx.task_model.predict(x) == ctx.tasks).double().mean())
    if row.mechanism != "original":
        reference = to_tensor(ctx.originals)
        row.psnr, row.ssim = float(psnr(x, reference).mean()), float(ssim(x, reference).mean())
    codes = await encode(ctx.pipeline, pixels, args.batch) if z is None else z
    probe = probe_accuracy(torch.from_numpy(codes).float(), ctx.labels, ctx.cut)
    adaptive = adaptive_accuracy(
        x, ctx.labels, ctx.cut, args.adaptive_steps, args.adaptive_width, args.threads
    )
    row.probe = dict(zip(ctx.names, map(float, probe), strict=True))
    row.adaptive = dict(zip(ctx.names, map(float, adaptive), strict=True))
    return row


def plan(args: argparse.Namespace) -> list[Row]:
    """The rows: original, no noise, the sanitizer per complement and ε, the baselines."""
    rows = [Row("original", math.inf), Row("no noise", math.inf, "σ_c=0")]
    rows += [Row(c, eps) for c in args.complements for eps in args.epsilons]
    return rows + [Row(b, eps) for b in ("DP-Pix", "Gaussian") for eps in args.epsilons]


async def release(ctx: Context, backend: InferenceBackend, z: np.ndarray, row: Row) -> np.ndarray:
    """The released faces of ``row``'s mechanism (its noise noted in ``row.noise``)."""
    args, faces = ctx.args, ctx.originals
    if row.mechanism == "original":
        return faces
    if row.mechanism == "DP-Pix":
        pixels, scale = dp_pix(faces, row.epsilon, args.dppix_block, args.dppix_m)
        row.noise = f"Lap({scale:.3g}) of 255"
        return pixels
    if row.mechanism == "Gaussian":
        pixels, sigma = gaussian_pixels(faces, row.epsilon, args.delta)
        row.noise = f"σ={sigma:.3g} of 1"
        return pixels
    if row.mechanism == "no noise":
        return await sanitize(ctx.pipeline, backend, z, None, "keep", args.steps, args.batch)
    cal = calibrate(ctx.pipeline.space, row.epsilon, args.delta, {})
    row.noise = f"σ_c={cal.sigma:.3g}"
    complement = cast(Complement, row.mechanism)
    return await sanitize(ctx.pipeline, backend, z, cal, complement, args.steps, args.batch)


async def run_rows(ctx: Context, backend: InferenceBackend, began: float) -> list[Row]:
    """Release and evaluate every row of :func:`plan`, logging progress to stderr."""
    z = await encode(ctx.pipeline, ctx.originals, ctx.args.batch)
    rows = plan(ctx.args)
    for row in rows:
        start = time.perf_counter()
        pixels = await release(ctx, backend, z, row)
        made = time.perf_counter()
        await evaluate(ctx, row, pixels, z if row.mechanism == "original" else None)
        print(
            f"[{time.perf_counter() - began:7.1f} s] {row.mechanism:>9} ε={row.eps_label:<4} "
            f"released in {made - start:5.1f} s, evaluated in {time.perf_counter() - made:5.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return rows


# -- speed -----------------------------------------------------------------------------------


async def release_call(
    pipeline: Pipeline, chosen: np.ndarray, cal: Calibration, steps: int
) -> float:
    """Seconds of one whole release call of ``chosen`` faces (prepare, encode, mechanism,
    decode; no PNG)."""
    start = time.perf_counter()
    z = await pipeline.encode([pipeline.prepare_pixels(p, WHOLE) for p in chosen])
    await pipeline.generate(z, [Draw(cal, release_rng()) for _ in chosen], steps, "keep")
    return time.perf_counter() - start


async def speed(
    pipelines: dict[str, Pipeline], faces: np.ndarray, args: argparse.Namespace
) -> list[list[object]]:
    """Rows (backend, steps, batch, calls, releases/s, p50, p99 s per call) at ε = 1.

    The backends' calls alternate (one warm-up call each first), so that the load swings of
    a shared machine hit them alike and their ratio is fair."""
    cal = calibrate(next(iter(pipelines.values())).space, 1.0, args.delta, {})
    rows: list[list[object]] = []
    for steps in args.speed_steps:
        for batch in args.speed_batches:
            calls = max(args.speed_calls, args.speed_releases // batch)
            chosen = faces[np.arange(batch) % len(faces)]
            times: dict[str, list[float]] = {label: [] for label in pipelines}
            for i in range(calls + 1):
                for label, pipeline in pipelines.items():
                    seconds = await release_call(pipeline, chosen, cal, steps)
                    if i:
                        times[label].append(seconds)
            for label, values in times.items():
                t = np.array(values)
                p50, p99 = np.percentile(t, [50, 99])
                rows.append([label, steps, batch, calls, batch * len(t) / t.sum(), p50, p99])
    return rows


# -- report ----------------------------------------------------------------------------------


def mean(values: Sequence[float] | dict[str, float]) -> float:
    vals = list(values.values()) if isinstance(values, dict) else list(values)
    return float(np.mean(vals)) if vals else float("nan")


def number(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def calibration_table(ctx: Context) -> None:
    args, space = ctx.args, ctx.pipeline.space
    rows = []
    for eps in args.epsilons:
        c = calibrate(space, eps, args.delta, {})
        per = sorted(c.per_attribute.values())
        rows.append([
            f"{eps:g}", f"{c.sigma:.3g}", f"{mean(c.noise_scales / space.clip_bounds):.3g}",
            f"{c.mu:.3g}", f"{per[0]:.3g}–{per[-1]:.3g}", f"{c.rdp_epsilon:.3g}",
            f"{3 * 255 * args.dppix_m / (args.dppix_block**2 * eps):.3g}",
            f"{math.sqrt(ctx.originals[0].size) / c.mu:.3g}",
        ])  # fmt: skip
    table(
        f"calibration (δ = {args.delta:g}, all weights 1; C = {np.round(space.clip_bounds, 2)})",
        ["ε", "σ_c", "σ_c/C mean", "μ", "ε per attribute", "RDP (Lemma 1) ε",
         "DP-Pix Laplace (of 255)", "Gaussian σ (of 1)"],
        rows,
    )  # fmt: skip


def attribute_table(ctx: Context, rows: list[Row], a: int, name: str) -> None:
    committed = [m for m, (attr, _) in ctx.attackers.items() if attr == name]
    outside = [o.name for o in ctx.outside if o.target == name]
    test = ctx.labels[ctx.cut :, a]
    table(
        f"{name}: attacker accuracy (chance {majority(ctx.labels[:, a]):.3f} on all "
        f"{len(ctx.labels)}; {majority(test):.3f} on the {len(test)} test images of adaptive "
        "and probe; balanced accuracy, chance 0.5, for the committed attackers)",
        ["release", "ε", *[m.rsplit("-", 1)[-1] for m in committed],
         *[m.rsplit("-", 1)[-1] + " bal." for m in committed], *outside, "adaptive", "probe"],
        [[r.mechanism, r.eps_label, *[r.committed[m] for m in committed],
          *[r.balanced[m] for m in committed], *[r.outside[o] for o in outside],
          r.adaptive[name], r.probe[name]] for r in rows],
    )  # fmt: skip


def utility_table(ctx: Context, rows: list[Row]) -> None:
    table(
        f"utility (task chance {majority(ctx.tasks):.3f}) and attacker accuracy, mean over "
        f"attributes (chance {mean([majority(c) for c in ctx.labels.T]):.3f})",
        ["release", "ε", "noise", "task", "PSNR dB", "SSIM", "resnet+vgg", "balanced",
         "adaptive", "probe"],
        [[r.mechanism, r.eps_label, r.noise, r.task, number(r.psnr, 2), number(r.ssim),
          mean(r.committed), mean(r.balanced), mean(r.adaptive), mean(r.probe)]
         for r in rows],
    )  # fmt: skip


def header(args: argparse.Namespace, ctx: Context, wall: float) -> str:
    model, store = ctx.pipeline.model, ctx.store
    names = [args.diffae, args.probes, args.task, *ctx.attackers]
    shas = ", ".join(f"{m} {store.manifest(m).sha256[:12]}" for m in names)
    lines = [
        f"command: python -m bench.sanitizer {shlex.join(args.argv)}".rstrip(),
        f"models ({store.root}): {shas}",
        *[f"outside attacker {o.name}: {o.path} → {o.target}" for o in ctx.outside],
        f"faces: synthfaces seed {args.seed}, n = {len(ctx.originals)} at "
        f"{model.resolution}×{model.resolution} (models trained on {model.training_data}); "
        f"adaptive and probe: train {ctx.cut}, test {len(ctx.originals) - ctx.cut}",
        f"DDIM steps {args.steps}; ε ∈ {{{', '.join(f'{e:g}' for e in args.epsilons)}}}, "
        f"δ = {args.delta:g}; complements: {', '.join(args.complements)}; adaptive: ResNet "
        f"width {args.adaptive_width}, {args.adaptive_steps} steps; threads {args.threads}",
        f"wall time of the evaluation: {wall:.1f} s",
    ]
    return "\n".join(lines)


# -- plot ------------------------------------------------------------------------------------

MEASURES = (
    ("resnet+vgg (mean)", (31, 119, 180), lambda r: mean(r.committed)),
    ("adaptive", (214, 39, 40), lambda r: mean(r.adaptive)),
    ("probe on codes", (148, 103, 189), lambda r: mean(r.probe)),
    ("task (pose)", (44, 160, 44), lambda r: r.task),
)
MARKERS = {"DP-Pix": ("square", -7), "Gaussian": ("triangle", 7)}
"""Baseline markers, shifted sideways so that they do not hide the sanitizer's points."""
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def marker(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, colour: object) -> None:
    if kind == "circle":
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    elif kind == "square":
        draw.rectangle((x - 4, y - 4, x + 4, y + 4), outline=colour, width=2)
    else:
        draw.polygon((x, y - 5, x - 5, y + 4, x + 5, y + 4), outline=colour, width=2)


def dashed(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float, colour: object) -> None:
    for x in np.arange(x0, x1, 12.0):
        draw.line((x, y, min(x + 6, x1), y), fill=colour, width=2)


@dataclass(frozen=True)
class Panel:
    """One panel's box in pixels and its ε axis: log2 ε from ``lo``; ∞ drawn at ``inf``."""

    x0: float
    x1: float
    y0: float
    y1: float
    lo: float
    inf: float

    def at(self, eps: float, acc: float) -> tuple[float, float]:
        u = ((math.log2(eps) if math.isfinite(eps) else self.inf) - self.lo) / (self.inf - self.lo)
        return self.x0 + 10 + u * (self.x1 - self.x0 - 20), self.y1 - acc * (self.y1 - self.y0)


def draw_axes(draw: ImageDraw.ImageDraw, font: Font, box: Panel, title: str, eps: list) -> None:
    draw.rectangle((box.x0, box.y0, box.x1, box.y1), outline="black")
    draw.text((box.x0, 10), title, fill="black", font=font)
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = box.at(1.0, tick)[1]
        draw.line((box.x0, y, box.x1, y), fill=(230, 230, 230))
        draw.text((box.x0 - 35, y - 7), f"{tick:.2f}", fill="black", font=font)
    for e in eps:
        label = f"{e:g}" if math.isfinite(e) else "∞"
        draw.text((box.at(e, 0)[0] - 6, box.y1 + 6), label, fill="black", font=font)
    draw.text(((box.x0 + box.x1) / 2 - 50, box.y1 + 24), "ε (∞ = no noise)", fill="black",
              font=font)  # fmt: skip


def draw_panel(draw: ImageDraw.ImageDraw, box: Panel, rows: list[Row], complement: str) -> None:
    """The sanitizer's line per measure (ending at no noise) and the baselines' markers."""
    line = sorted((r for r in rows if r.mechanism in (complement, "no noise")),
                  key=lambda r: r.epsilon)  # fmt: skip
    for _, colour, value in MEASURES:
        points = [box.at(r.epsilon, value(r)) for r in line]
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            marker(draw, "circle", x, y, colour)
        for r in rows:
            if r.mechanism in MARKERS:
                kind, dx = MARKERS[r.mechanism]
                x, y = box.at(r.epsilon, value(r))
                marker(draw, kind, x + dx, y, colour)


def draw_legend(draw: ImageDraw.ImageDraw, font: Font, y: float) -> None:
    x = 12.0
    for label, colour, _ in MEASURES:
        draw.line((x, y + 7, x + 20, y + 7), fill=colour, width=3)
        draw.text((x + 25, y), label, fill="black", font=font)
        x += 40 + draw.textlength(label, font=font)
    x, y = 12.0, y + 24
    for kind, label in (("circle", "sanitizer"), ("square", "DP-Pix (b=4, m=16)"),
                        ("triangle", "Gaussian on pixels")):  # fmt: skip
        marker(draw, kind, x + 5, y + 8, "black")
        draw.text((x + 15, y), label, fill="black", font=font)
        x += 35 + draw.textlength(label, font=font)
    draw.text((x, y), "dashed: chance (grey: attributes, green: task)", fill="black", font=font)


def plot_font() -> Font:
    """DejaVu Sans, which has ε and ∞ (Pillow's built-in font draws them as boxes)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", 13)
    except OSError:
        return ImageFont.load_default()


def plot(rows: list[Row], chance: float, task_chance: float, path: Path) -> None:
    """Accuracy vs ε, one panel per complement: the sanitizer's lines (the last point: no
    noise), DP-Pix squares, Gaussian triangles; dashed: the attributes' chance (the mean
    over attributes of the test labels' majority rate) and the task's."""
    font = plot_font()
    panels = [c for c in ("keep", "erase") if any(r.mechanism == c for r in rows)]
    finite = sorted({r.epsilon for r in rows if math.isfinite(r.epsilon)})
    lo, inf = math.log2(finite[0]), math.log2(finite[-1]) + 1.2
    width, height = 470, 360
    image = Image.new("RGB", (len(panels) * width + 10, height + 70), "white")
    draw = ImageDraw.Draw(image)
    for p, complement in enumerate(panels):
        box = Panel(p * width + 55, (p + 1) * width - 15, 36, height - 46, lo, inf)
        draw_axes(draw, font, box, f"complement = {complement}: accuracy vs ε",
                  [*finite, math.inf])  # fmt: skip
        dashed(draw, box.x0, box.x1, box.at(1.0, chance)[1], (120, 120, 120))
        dashed(draw, box.x0, box.x1, box.at(1.0, task_chance)[1], MEASURES[-1][1])
        draw_panel(draw, box, rows, complement)
    draw_legend(draw, font, height + 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# -- command line ----------------------------------------------------------------------------


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(t) for t in text.split(",") if t.strip())


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, help="model store (default: packaged)")
    p.add_argument("--diffae", default="diffae")
    p.add_argument("--probes", default="probes")
    p.add_argument("--task", default="task-resnet")
    p.add_argument("--seed", type=int, default=5, help="synthfaces seed (no model saw it)")
    p.add_argument("--n", type=int, help="faces (default 256; --quick 32)")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps of each release")
    p.add_argument("--epsilons", type=floats, help="default 0.5,1,2,4,8 (--quick 1,8)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--batch", type=int, default=32, help="images per decode call")
    p.add_argument("--train-fraction", type=float, default=0.5,
                   help="the part of the releases adaptive and probe train on")  # fmt: skip
    p.add_argument("--adaptive-steps", type=int, help="default 200 (--quick 30)")
    p.add_argument("--adaptive-width", type=int, default=16)
    p.add_argument("--dppix-block", type=int, default=4, help="DP-Pix cell side b")
    p.add_argument("--dppix-m", type=int, default=16, help="DP-Pix: pixels neighbours differ in")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a smoke run: n 32, ε 1 and 8")
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--speed-steps", type=ints, help="default 10,20 (--quick: --steps)")
    p.add_argument("--speed-batches", type=ints, default=(1, 16))
    p.add_argument("--speed-calls", type=int, help="at least this many calls (default 8)")
    p.add_argument("--speed-releases", type=int, help="and this many releases (default 48)")
    p.add_argument("--triton-url", help="HOST:PORT of Triton's gRPC endpoint: time it too")
    p.add_argument(
        "--triton-timeout",
        type=float,
        default=300.0,
        help="seconds per Triton call (a loaded machine needs more than 30)",
    )
    p.add_argument("--attacker", type=Path, action="append", default=[],
                   help="an outside ONNX attacker (repeatable); the options below: once for "
                   "every --attacker, or once each")  # fmt: skip
    for flag, kind, text in (
        ("--attacker-labels", str, "the attribute it predicts (required)"),
        ("--attacker-size", int, "its input side in pixels (default: the model's resolution)"),
        ("--attacker-mean", floats, "per-channel mean of [0, 1] pixels (default 0.5)"),
        ("--attacker-std", floats, "per-channel std (default 0.5: inputs in [-1, 1])"),
        ("--attacker-threshold", float, "1 output: says 1 above it (default 0: a logit)"),
    ):
        p.add_argument(flag, type=kind, action="append", default=[], help=text)
    p.add_argument("--plot", type=Path, default=PLOT)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quick = args.quick
    args.n = args.n or (32 if quick else 256)
    args.epsilons = args.epsilons or (QUICK_EPSILONS if quick else EPSILONS)
    args.adaptive_steps = args.adaptive_steps or (30 if quick else 200)
    args.speed_steps = args.speed_steps or ((args.steps,) if quick else (10, 20))
    args.speed_calls = args.speed_calls or (2 if quick else 8)
    args.speed_releases = args.speed_releases or (0 if quick else 48)
    cut = round(args.n * args.train_fraction)
    if not (cut >= 8 and args.n - cut >= 4):
        p.error("--n × --train-fraction must leave >= 8 images to train on and >= 4 to test")
    if args.attacker and not args.attacker_labels:
        p.error("--attacker needs --attacker-labels ATTR (the attribute it predicts)")
    return args


def per_attacker(values: list, count: int, default: object, flag: str) -> list:
    """A repeatable option's value for each attacker: one for all, or one each."""
    if not values:
        return [default] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise SystemExit(f"{flag}: give it once, or once per --attacker ({count})")
    return values


def outside_attackers(args: argparse.Namespace, names: Sequence[str], res: int) -> list:
    count = len(args.attacker)
    targets = per_attacker(args.attacker_labels, count, "", "--attacker-labels")
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise SystemExit(f"--attacker-labels {unknown}: not among the attributes {names}")
    return [
        OutsideAttacker(
            path,
            target,
            size,
            np.resize(np.array(m, float), 3),
            np.resize(np.array(s, float), 3),
            threshold,
        )
        for path, target, size, m, s, threshold in zip(
            args.attacker,
            targets,
            per_attacker(args.attacker_size, count, res, "--attacker-size"),
            per_attacker(args.attacker_mean, count, (0.5,), "--attacker-mean"),
            per_attacker(args.attacker_std, count, (0.5,), "--attacker-std"),
            per_attacker(args.attacker_threshold, count, 0.0, "--attacker-threshold"),
            strict=True,
        )
    ]


async def context(args: argparse.Namespace, backend: LocalBackend) -> Context:
    """The held-out faces, the attribute model and every attacker, from the store."""
    model = attribute_model(backend.settings, args.probes)
    args.complements = ["keep", "erase"] if model.space.can_erase else ["keep"]
    faces = load_table(f"synthfaces://?n={args.n}&seed={args.seed}", model.resolution)
    names, store = model.space.names, backend.store
    attackers = {
        f"attacker-{name}-{arch}": (name, load_classifier(f"attacker-{name}-{arch}", store))
        for name in names
        for arch in ARCHITECTURES
        if (store.root / f"attacker-{name}-{arch}").is_dir()
    }
    return Context(
        pipeline=Pipeline(lambda: backend, model),
        names=names,
        originals=faces.images.permute(0, 2, 3, 1).numpy(),
        labels=faces.attributes[:, [faces.attribute_names.index(n) for n in names]],
        tasks=faces.tasks,
        cut=round(args.n * args.train_fraction),
        attackers=attackers,
        outside=outside_attackers(args, names, model.resolution),
        task_model=load_classifier(args.task, store),
        store=store,
        args=args,
    )


async def run(args: argparse.Namespace, began: float) -> None:
    """Every row and the plot, printed as soon as they are done; then the speed section (a
    failed speed run, e.g. a Triton deadline on a loaded machine, loses no evaluation)."""
    backend = LocalBackend(InferenceSettings(store=args.store, diffae=args.diffae))
    try:
        ctx = await context(args, backend)
        rows = await run_rows(ctx, backend, began)
        chance = mean([majority(c[ctx.cut :]) for c in ctx.labels.T])
        plot(rows, chance, majority(ctx.tasks), args.plot)
        print(header(args, ctx, time.perf_counter() - began))
        if "erase" not in args.complements:
            print("erase: not available (probes carry no eraser)")
        calibration_table(ctx)
        for a, name in enumerate(ctx.names):
            attribute_table(ctx, rows, a, name)
        utility_table(ctx, rows)
        print(f"\nplot → {args.plot}", flush=True)
        timings: list[list[object]] = []
        if args.speed:
            pipelines = {"local": ctx.pipeline}
            remotes: list[InferenceBackend] = []
            if args.triton_url:
                settings = InferenceSettings(
                    backend="triton", triton_url=args.triton_url, timeout_s=args.triton_timeout
                )
                remote = create_backend(settings)
                remotes.append(remote)
                pipelines["triton"] = Pipeline(lambda: remote, ctx.pipeline.model)
            try:
                timings = await speed(pipelines, ctx.originals, args)
            finally:
                for opened in remotes:
                    await opened.close()
    finally:
        await backend.close()
    if timings:
        table(
            "speed: whole release calls (prepare, encode, mechanism at ε = 1, decode)",
            ["backend", "DDIM steps", "batch", "calls", "releases/s", "p50 s/call",
             "p99 s/call"],
            timings,
        )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    asyncio.run(run(args, time.perf_counter()))


if __name__ == "__main__":
    main()
