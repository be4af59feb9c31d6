"""Feature map distortion (FMD): authorized-inference protection by a PGD loop.

Maximise J(x*) = MSE(f_feat(x), f_feat(x*)) − λ·CE(f(x*), y) over ‖x* − x‖∞ ≤ ε with
signed-gradient steps of size α for N iterations (DESIGN.md, "Authorized-inference
protection"; the PGD form is Madry et al. 2018, eq. 2). f is the authorized classifier,
f_feat one of its named feature maps, y the authorized label (given, or f's own
prediction on x). Pushing the features away from the original makes other models, which
share low-level features, fail; the CE term keeps the authorized model right.

That alone does not carry to outside models here: on the 32×32 pose task the unauthorized
models' average falls from 0.995 to 0.958 (``python -m bench.protection``, row "FMD-100
alone"; chance 0.352). So :class:`Transfer` adds what transfer attacks use: the defender's
own surrogate models of the task in J (pushed off y), momentum and input diversity; with the
committed surrogates the average falls to 0.365 while the authorized model keeps 1.000
(row "FMD-100"). And ``keep_prediction`` returns, per image, the last iterate the authorized
model still labels y. The defaults (λ = 10, μ = 1, momentum 1, diversity 4 px) were chosen
on that bench's faces, the ones it reports on; tests/protection checks them on other faces
(seed 21). The unauthorized models are never in J.

ε and α are in [0, 1] pixel units, as in the paper (16/255, 4/255); images live in
[-1, 1], where one pixel unit is two, so both are doubled here. Every step is projected
back onto the ε-ball and onto [-1, 1]. Each image's objective depends on that image only
(the model runs in eval mode), so a batch gives the same result as its images one by one.
Deterministic: no random start unless ``seed`` is given (where the MSE gradient vanishes,
at x* = x, a step along the gradient of the logits' energy starts the walk instead).

Images travel through pipelines that re-encode them, and plain FMD does not survive one
JPEG save: on the bench's 32 held-out faces (synthfaces seed 7, 100 steps, the committed
surrogates) Pillow's JPEG at quality 90 / 75 takes the authorized model from 1.000 to
0.375 / 0.281. ``robustness="jpeg"`` optimises J in expectation over a differentiable JPEG
(``services.kernels.pipeline``: quality 70–95, then 8 bits; Athalye et al. 2018's EOT with
Shin & Song 2017's rounding) and keeps only iterates the authorized model still labels y
as they are, as the step's draw and after Pillow's real JPEG at quality 70: then 0.969 /
0.906 after JPEG 90 / 75, the unauthorized models' average 0.365 / 0.312 (as returned:
0.417; chance 0.453), at 1.4× the time per image (2200 against 1524 ms at batch 16).
Measured 2026-12-07, one thread: ``python -m bench.protection --images 64 --fmd-images 32
--steps 100 --fmd-robustness none,jpeg --no-alone`` (README, "Robustness"). ``"full"`` adds
resizes (0.5–2×) and 2-pixel shifts to the draws, and keeps an iterate only while the
authorized model also reads y after Pillow's bilinear 0.5× resize and a 2-pixel shift
(:func:`_edges`), each wherever it read the original so: on the held-out faces of seed 17
a 0.5× resize then leaves it 0.969 of 1.000, against 0.812 for ``"jpeg"`` (README,
"Measured on held-out faces").

A caller with a deadline (a gRPC call's) passes ``deadline`` (a ``time.monotonic()`` value)
or ``time_budget_s``: the loop stops before the step that would end past it, its cost
estimated from the steps done (before the first one, from the two clean forward passes: a
step, a forward and a backward pass, costs about three). Every iterate is projected, so an
early stop returns a valid protection, only a weaker one; :attr:`FMDStats.steps` says how
many steps it took. With a deadline the result is deterministic given ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from time import monotonic

import torch
from torch.nn import functional as F

from services.kernels.checks import KernelInputError, check_images
from services.kernels.classifiers import Classifier
from services.kernels.pipeline import (
    EOT_MAX_SHIFT,
    EOT_QUALITIES,
    EOT_SCALES,
    ROBUSTNESS,
    jpeg,
    quantize,
    resize,
    sample_transform,
    shift_approx,
)

MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class FMDStats:
    """Per-image results of one :func:`protect` call (tensors of shape (B,))."""

    feature_distortion: torch.Tensor
    """MSE between the feature maps of the original and the protected image."""
    cross_entropy: torch.Tensor
    """CE of the authorized model on the protected image against ``labels``."""
    labels: torch.Tensor
    """The authorized labels used (given, or the model's predictions on the originals)."""
    predictions: torch.Tensor
    """The authorized model's predictions on the protected images."""
    steps: int = 0
    """Gradient steps taken (the whole batch takes the same): ``iterations`` unless the
    deadline stopped the loop early."""


def _check_scalar(value: object, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KernelInputError(f"{name}: expected a number in [{low}, {high}]; got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise KernelInputError(f"{name}: expected a number in [{low}, {high}]; got {value!r}")
    return number


def check_labels(labels: object, batch: int, num_classes: int) -> torch.Tensor:
    """Integer labels (B,) in [0, num_classes), or −1 for "use the model's prediction"."""
    expected = f"integer tensor ({batch},) in [-1, {num_classes})"
    if (
        not isinstance(labels, torch.Tensor)
        or labels.is_floating_point()
        or labels.dtype == torch.bool
        or tuple(labels.shape) != (batch,)
    ):
        raise KernelInputError(f"labels: expected {expected}; got {labels!r:.80}")
    if labels.numel() and (int(labels.min()) < -1 or int(labels.max()) >= num_classes):
        raise KernelInputError(f"labels: expected {expected}; got values outside")
    return labels.long()


def objective(
    model: Classifier,
    x_adv: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    ce_weight: float,
    layer: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (J, MSE, CE) at ``x_adv``: J = MSE(f_feat(x), f_feat(x*)) − λ·CE(f(x*), y),
    with ``target`` = f_feat(x). FMD ascends J by signed steps; the fast generator
    (:mod:`services.kernels.protector`) is trained to maximise it."""
    value, mse, ce, _ = _terms(model, x_adv, target, labels, ce_weight, layer)
    return value, mse, ce


def _terms(
    model: Classifier,
    x_adv: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    ce_weight: float,
    layer: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`objective`'s (J, MSE, CE) and the authorized logits at ``x_adv``."""
    feats = model.features(x_adv, layer)
    mse = (feats - target).flatten(1).pow(2).mean(1)
    logits = model.head(feats) if layer == "penultimate" else model(x_adv)
    ce = F.cross_entropy(logits, labels, reduction="none")
    return mse - ce_weight * ce, mse, ce, logits


def _escape(model: Classifier, x_adv: torch.Tensor) -> torch.Tensor:
    """Gradient of ‖f_feat(x*)‖² with respect to the input: at x* = x the MSE term is at its
    minimum and its gradient vanishes (sign(0) = 0 would never move), so the first step of a
    start without random noise grows the features instead; deterministic."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        energy = model(x_adv).pow(2).sum()
        (grad,) = torch.autograd.grad(energy, x_adv)
    return grad


def check_deadline(deadline: float | None, time_budget_s: float | None) -> float | None:
    """The earlier of ``deadline`` (a ``time.monotonic()`` value) and now + ``time_budget_s``
    (seconds, ≥ 0); None when neither is given."""
    ends = []
    if deadline is not None:
        ends.append(_check_scalar(deadline, "deadline", -math.inf, math.inf))
    if time_budget_s is not None:
        ends.append(monotonic() + _check_scalar(time_budget_s, "time_budget_s", 0.0, 1e9))
    return min(ends) if ends else None


@dataclass(frozen=True)
class Transfer:
    """The transfer terms FMD adds to DESIGN.md's objective (all off: the paper's FMD).

    With surrogates S (the defender's own classifiers of the task, trained on its data; never
    the unauthorized models evaluated), J gains +μ·mean_s CE(s(T(x*)), y): the surrogates are
    pushed away from the authorized label while the −λ·CE term holds the authorized model on
    it, so that outside models, which resemble the surrogates more than they resemble each
    other's quirks, fail with them (an ensemble transfer attack, Liu et al., ICLR 2017). T is
    input diversity (Xie et al., CVPR 2019): a random shrink by up to ``diversity`` pixels and
    a random pad back, one draw per step for the whole batch, applied to the surrogates'
    input only; ``momentum`` accumulates the per-image L1-normalised gradient (MI-FGSM, Dong
    et al., CVPR 2018). Both make the step follow what models share rather than one model's
    quirks."""

    surrogates: tuple[Classifier, ...] = ()
    weight: float = 1.0
    momentum: float = 0.0
    diversity: int = 0

    @property
    def active(self) -> bool:
        return bool(self.surrogates) and self.weight > 0


def _diverse(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Input diversity: shrink by 0..pixels and pad back at a random offset (value −1)."""
    if pixels <= 0:
        return x
    size = x.shape[-1]
    shrink = int(torch.randint(0, pixels + 1, (), generator=generator))
    left, top = (int(v) for v in torch.randint(0, shrink + 1, (2,), generator=generator))
    if shrink == 0:
        return x
    small = F.interpolate(x, size=size - shrink, mode="bilinear", align_corners=False)
    return F.pad(small, (left, shrink - left, top, shrink - top), value=-1.0)


@dataclass
class _Walk:
    """What one protect call's steps share."""

    x: torch.Tensor
    target: torch.Tensor
    labels: torch.Tensor
    hyper: tuple[float, float, float]
    layer: str
    transfer: Transfer
    generator: torch.Generator
    robustness: str = "none"
    velocity: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    """The latest iterate of each image that the authorized model still labels y (None:
    not kept, ``keep_prediction=False``)."""
    held: torch.Tensor | None = None
    """(edges, B): whether the authorized model labels the original y through each of
    :func:`_edges`' operations (an edge the original fails is not asked of an iterate)."""

    def keep(
        self, x_adv: torch.Tensor, *logits: torch.Tensor, edges: torch.Tensor | None = None
    ) -> None:
        """``x_adv`` becomes the kept iterate of each image that every ``logits`` (the
        authorized model's, on ``x_adv`` and on the views of it a step saw) labels y, and
        ``edges`` (the logits of :func:`_edges`' views, stacked (edges, B, C)) too wherever
        the original held."""
        if self.kept is None:
            return
        right = torch.stack([lg.detach().argmax(1) == self.labels for lg in logits]).all(0)
        if edges is not None and self.held is not None:
            through = (edges.detach().argmax(2) == self.labels) | ~self.held
            right = right & through.all(0)
        self.kept = torch.where(right[:, None, None, None], x_adv.detach(), self.kept)


def _edges(model: Classifier, images: torch.Tensor, robustness: str) -> torch.Tensor:
    """The authorized model's logits (edges, B, C) on ``images`` as the service returns them
    (8 bits) through the real operations at the edges of what ``robustness`` covers, not
    the approximations the steps follow: Pillow's JPEG at the lowest quality (70); for
    ``full`` also Pillow's bilinear resize to 0.5× and back, and a 2-pixel shift."""
    out = quantize(images.detach().cpu())
    views = [jpeg(out, EOT_QUALITIES[0])]
    if robustness == "full":
        views += [resize(out, EOT_SCALES[0]), shift_approx(out, EOT_MAX_SHIFT, EOT_MAX_SHIFT)]
    logits = model(torch.cat(views).to(images.device))
    return logits.reshape(len(views), len(images), -1)


def _step(model: Classifier, walk: _Walk, x_adv: torch.Tensor) -> torch.Tensor:
    """One signed-gradient ascent step on J, projected onto the ε-ball and [-1, 1]; with
    ``robustness``, J is taken at one draw T(x*) of the pipeline (expectation over
    transformation, one draw per step for the whole batch)."""
    eps, alpha, lam = walk.hyper
    transfer = walk.transfer
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        robust = walk.robustness != "none"
        view = sample_transform(walk.robustness, walk.generator)(x_adv) if robust else x_adv
        value, _, _, logits = _terms(model, view, walk.target, walk.labels, lam, walk.layer)
        if robust and walk.kept is not None:
            with torch.no_grad():
                edges = _edges(model, x_adv, walk.robustness)
                walk.keep(x_adv, logits, model(x_adv), edges=edges)
        else:
            walk.keep(x_adv, logits)
        if transfer.active:
            seen = _diverse(view, transfer.diversity, walk.generator)
            y = walk.labels
            fooled = torch.stack(
                [F.cross_entropy(s(seen), y, reduction="none") for s in transfer.surrogates]
            ).mean(0)
            value = value + transfer.weight * fooled
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        stuck = grad.flatten(1).abs().amax(1) == 0
        if bool(stuck.any()):
            grad = torch.where(stuck[:, None, None, None], _escape(model, x_adv), grad)
    with torch.no_grad():
        if transfer.momentum > 0:
            scale = grad.flatten(1).abs().mean(1).clamp_min(1e-12)[:, None, None, None]
            previous = 0 if walk.velocity is None else transfer.momentum * walk.velocity
            walk.velocity = grad = previous + grad / scale
        x = walk.x
        step = x_adv + alpha * grad.sign()
        return torch.min(torch.max(step, x - eps), x + eps).clamp(-1.0, 1.0)


def check_transfer(
    model: Classifier,
    surrogates: Sequence[Classifier],
    weight: float,
    momentum: float,
    diversity: int,
) -> Transfer:
    """The transfer terms, checked: surrogates of ``model``'s resolution and classes."""
    found = tuple(surrogates)
    for s in found:
        if not isinstance(s, Classifier) or (
            s.config.resolution,
            s.config.num_classes,
        ) != (model.config.resolution, model.config.num_classes):
            raise KernelInputError(
                "surrogates: expected classifiers of the authorized model's resolution "
                f"({model.config.resolution}) and classes ({model.config.num_classes})"
            )
    if isinstance(diversity, bool) or not isinstance(diversity, int):
        raise KernelInputError(f"diversity: expected an integer; got {diversity!r}")
    if not 0 <= diversity < model.config.resolution:
        raise KernelInputError(
            f"diversity: expected [0, {model.config.resolution - 1}] pixels; got {diversity}"
        )
    return Transfer(
        found,
        _check_scalar(weight, "surrogate_weight", 0.0, 1e6),
        _check_scalar(momentum, "momentum", 0.0, 1.0),
        diversity,
    )


def _check_iterations(iterations: object) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise KernelInputError(f"iterations: expected an integer; got {iterations!r}")
    if not 0 <= iterations <= MAX_ITERATIONS:
        raise KernelInputError(f"iterations: expected [0, {MAX_ITERATIONS}]; got {iterations}")
    return iterations


def protect(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    epsilon: float = 16 / 255,
    step_size: float = 4 / 255,
    iterations: int = 100,
    ce_weight: float = 10.0,
    feature_layer: str = "penultimate",
    seed: int | None = None,
    deadline: float | None = None,
    time_budget_s: float | None = None,
    surrogates: Sequence[Classifier] = (),
    surrogate_weight: float = 1.0,
    momentum: float = 1.0,
    diversity: int = 4,
    keep_prediction: bool = True,
    robustness: str = "none",
) -> tuple[torch.Tensor, FMDStats]:
    """Protected images (B, 3, R, R) in [-1, 1] with ‖x* − x‖∞ ≤ 2ε, and their stats.

    ``labels`` (B,) may hold −1 (or be None) to use the model's own prediction.
    ``deadline`` / ``time_budget_s``: stop early rather than end past it (module docstring).
    ``surrogates`` (none by default: J is then DESIGN.md's), ``surrogate_weight`` (μ),
    ``momentum`` (acts with or without surrogates; 0 gives DESIGN.md's plain signed steps) and
    ``diversity`` (on the surrogates' input only): :class:`Transfer`. ``seed`` also keys the
    diversity draws (0 when None; only a given seed adds a random start).
    ``keep_prediction``: return, per image, the last iterate the authorized model still
    labels y (the original when none is), so the CE term's aim holds whenever it can; off,
    the last iterate whatever it reads (DESIGN.md's loop).
    ``robustness`` (:data:`services.kernels.pipeline.ROBUSTNESS`): ``none`` is the loop
    above; ``jpeg`` / ``full`` take every step's J, the authorized model's and the
    surrogates', at a random differentiable re-encoding of x* (``pipeline.sample_transform``:
    JPEG of quality 70–95; ``full`` also resizes 0.5–2× and shifts ≤ 2 px), each step a new
    draw keyed by ``seed``, and keep an iterate only while the authorized model labels it y
    as it is, as that step's draw and through :func:`_edges`' real operations (Pillow's JPEG
    at the lowest quality covered, 70; for ``full`` also a 0.5× resize and a 2-pixel shift),
    each of those wherever it labels the original y through it.
    """
    x = check_images(images, model.config.resolution).detach()
    eps = 2 * _check_scalar(epsilon, "epsilon", 0.0, 1.0)
    alpha = 2 * _check_scalar(step_size, "step_size", 0.0, 1.0)
    lam = _check_scalar(ce_weight, "ce_weight", 0.0, 1e6)
    iterations = _check_iterations(iterations)
    end = check_deadline(deadline, time_budget_s)
    if feature_layer not in model.feature_layers:
        raise KernelInputError(
            f"feature_layer: expected one of {model.feature_layers}; got {feature_layer!r}"
        )
    transfer = check_transfer(model, surrogates, surrogate_weight, momentum, diversity)
    if robustness not in ROBUSTNESS:
        raise KernelInputError(f"robustness: expected one of {ROBUSTNESS}; got {robustness!r}")
    batch = x.shape[0]
    given = torch.full((batch,), -1) if labels is None else labels
    y = check_labels(given, batch, model.config.num_classes).to(x.device)
    modes = [(m, m.training) for m in (model, *transfer.surrogates)]
    for m, _ in modes:
        m.eval()
    try:
        started = monotonic()
        with torch.no_grad():
            y = torch.where(y < 0, model(x).argmax(1), y)
            target = model.features(x, feature_layer)
            own = monotonic()
            for s in transfer.surrogates if transfer.active else ():
                s(x)
        # two forwards of the model, one of each surrogate; a step ≈ three of each (fwd + bwd)
        step_cost = 1.5 * (own - started) + 3 * (monotonic() - own)
        held = None
        if keep_prediction and robustness != "none":
            with torch.no_grad():
                held = _edges(model, x, robustness).argmax(2) == y
        key = 0 if seed is None else seed
        walk = _Walk(
            x, target, y, (eps, alpha, lam), feature_layer, transfer,
            torch.Generator().manual_seed(key), robustness,
            kept=x.clone() if keep_prediction else None, held=held,
        )  # fmt: skip
        x_adv = x.clone()
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
            x_adv = (x + eps * noise).clamp(-1.0, 1.0)
        steps, loop_start = 0, monotonic()
        while steps < iterations:
            if end is not None and monotonic() + step_cost > end:
                break
            x_adv = _step(model, walk, x_adv)
            steps += 1
            step_cost = (monotonic() - loop_start) / steps
        with torch.no_grad():
            _, mse, ce, logits = _terms(model, x_adv, target, y, lam, feature_layer)
            if walk.kept is not None:
                robust = walk.robustness != "none"
                edges = _edges(model, x_adv, walk.robustness) if robust else None
                walk.keep(x_adv, logits, edges=edges)
                if not torch.equal(walk.kept, x_adv):  # some images went back: their stats
                    x_adv = walk.kept
                    _, mse, ce, logits = _terms(model, x_adv, target, y, lam, feature_layer)
            predictions = logits.argmax(1)
    finally:
        for m, training in modes:
            m.train(training)
    stats = FMDStats(
        feature_distortion=mse, cross_entropy=ce, labels=y, predictions=predictions, steps=steps
    )
    return x_adv.detach(), stats
