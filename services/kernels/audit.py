"""Auditing the weighted mechanism from outside: empirical lower bounds on its ε.

A DP claim is only as good as its implementation: a wrong sensitivity, a noise scale off by
a factor, a clip applied after the noise or a repeating seed keep unit tests green and still
break the guarantee. An audit plays the distinguishing game (Jagielski et al. 2020; Nasr et
al. 2021, 2023): run the mechanism many times on each of two neighbouring inputs, let a test
guess which input produced each output, and turn its error rates into a statistical lower
bound on ε. If the mechanism is (ε, δ)-DP, every test satisfies

    FPR + e^ε · FNR ≥ 1 − δ   and   FNR + e^ε · FPR ≥ 1 − δ,

so ε ≥ max(log((1 − δ − FNR) / FPR), log((1 − δ − FPR) / FNR)). With Clopper–Pearson
upper bounds on FPR and FNR (each at 1 − α/2, so both hold together with confidence
1 − α), the bound holds with that confidence. The threshold is chosen on one half of the
samples and the bound is computed on the other half (choosing it on the same samples would
bias the bound up).

What this proves and what it does not: a lower bound above the claim proves the
implementation broken (with the stated confidence); a lower bound below the claim proves
nothing about the claim — only that this test, with these samples, could not see more. How
close the white-box bound comes to the claim is the tightness check: the likelihood-ratio
test on the noisy coordinates is the optimal test for the Gaussian mechanism, so an honest
implementation's bound approaches ε as the number of samples grows.

Two attackers play it:

- **white-box** (:func:`audit_white_box`): the attacker reads the noisy attribute coordinates
  themselves, before the post-processing clip, with the likelihood-ratio test. It calls the
  sanitizer's own mechanism function (:func:`services.kernels.mechanism.privatize`), never a
  re-implementation, and comes close to the claim: it sees the noise really added.
- **black-box** (:func:`black_box`): the attacker sees released images only and trains a
  small CNN (:func:`distinguisher`) on half of them to tell which neighbour each came from;
  its logits on the other half are the scores. It covers what the white-box test cannot see
  (the decoder, the x_T, everything between the mechanism and the bytes) and is loose: a few
  hundred releases bound ε by about log(N/15) at best (:func:`best_possible`).

The releases themselves are made elsewhere (``services.cli.audit`` runs the sanitizer's
``Pipeline``); this module needs numpy, scipy and torch, no backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from services.kernels.mechanism import (
    AttributeSpace,
    Calibration,
    privatize,
    release_rng,
)

if TYPE_CHECKING:
    from services.kernels.diffae import DiffAE

RngFactory = Callable[[], np.random.Generator]
Privatize = Callable[..., np.ndarray]


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for k successes in n trials."""
    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper–Pearson upper bound at 1 − alpha."""
    return 1.0 if k >= n else float(stats.beta.ppf(1 - alpha, k + 1, n - k))


def _epsilon(fpr: float, fnr: float, delta: float) -> float:
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if a > 0 and 1 - delta - b > 0:
            best = max(best, math.log((1 - delta - b) / a))
    return best


@dataclass(frozen=True)
class Bound:
    """An empirical lower bound on ε from one distinguishing test."""

    epsilon: float
    """The lower bound, holding with ``confidence`` (0 when the test saw nothing)."""
    confidence: float
    samples: int
    """Outputs per neighbour (both halves)."""
    fpr: float
    """Observed false-positive rate at the chosen threshold (evaluation half)."""
    fnr: float
    threshold: float
    point: float
    """The ε the observed rates give without the confidence correction (not a bound)."""

    def flags(self, claim: float) -> bool:
        """True when the bound proves the claim false (it lies above it)."""
        return self.epsilon > claim


def lower_bound(
    scores0: np.ndarray,
    scores1: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> Bound:
    """The ε lower bound of threshold tests on ``scores`` (higher = "neighbour 1"): the
    threshold is picked on a random half of each sample, the bound computed on the other."""
    rng = rng or np.random.default_rng(0)
    s0, s1 = rng.permutation(np.asarray(scores0)), rng.permutation(np.asarray(scores1))
    h0, h1 = len(s0) // 2, len(s1) // 2
    pick0, eval0 = np.sort(s0[:h0]), np.sort(s0[h0:])
    pick1, eval1 = np.sort(s1[:h1]), np.sort(s1[h1:])
    alpha = (1.0 - confidence) / 2  # two bounds hold together (Bonferroni)
    candidates = np.unique(np.quantile(np.concatenate([pick0, pick1]), np.linspace(0, 1, 513)))

    def rates(t: float, a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
        fp = len(a) - int(np.searchsorted(a, t, side="left"))  # a >= t
        fn = int(np.searchsorted(b, t, side="left"))  # b < t
        return fp, fn

    best_t, best = float(candidates[0]), -1.0
    for t in candidates:
        fp, fn = rates(float(t), pick0, pick1)
        value = _epsilon(_upper(fp, len(pick0), alpha), _upper(fn, len(pick1), alpha), delta)
        if value > best:
            best, best_t = value, float(t)
    fp, fn = rates(best_t, eval0, eval1)
    fpr, fnr = fp / max(len(eval0), 1), fn / max(len(eval1), 1)
    bound = _epsilon(_upper(fp, len(eval0), alpha), _upper(fn, len(eval1), alpha), delta)
    return Bound(
        epsilon=bound,
        confidence=confidence,
        samples=min(len(s0), len(s1)),
        fpr=fpr,
        fnr=fnr,
        threshold=best_t,
        point=_epsilon(max(fpr, 1e-300), max(fnr, 1e-300), delta) if fpr or fnr else math.inf,
    )


# -- neighbours and the white-box test ------------------------------------------------------


def neighbours(space: AttributeSpace, z: np.ndarray, reach: float = 1.0) -> np.ndarray:
    """Two codes (2, d) that share ``z``'s complement and whose attribute coordinates sit at
    ``−reach·C_a`` and ``+reach·C_a``: the neighbours that differ most in every protected
    attribute (``reach`` > 1 puts them beyond the clip bound, to catch a skipped clip)."""
    z = np.asarray(z, dtype=np.float64).reshape(1, -1)
    u = space.directions
    rest = z - (z @ u) @ u.T
    low = rest - reach * space.clip_bounds @ u.T
    high = rest + reach * space.clip_bounds @ u.T
    return np.concatenate([low, high])


def lr_scores(
    noisy: np.ndarray, space: AttributeSpace, calibration: Calibration, pair: np.ndarray
) -> np.ndarray:
    """The likelihood-ratio statistic of the Gaussian mechanism as claimed: the noisy
    coordinates projected on the claimed mean difference, each scaled by its claimed
    variance (the optimal test between two Gaussians of equal covariance)."""
    u = space.directions
    mean = np.clip(pair @ u, -space.clip_bounds, space.clip_bounds)
    weight = (mean[1] - mean[0]) / calibration.noise_scales**2
    centre = (mean[0] + mean[1]) / 2
    return ((noisy @ u) - centre) @ weight


def white_box(
    space: AttributeSpace,
    calibration: Calibration,
    pair: np.ndarray,
    samples: int,
    *,
    per_release: bool = False,
    mechanism: Privatize = privatize,
    rng_factory: RngFactory = release_rng,
    chunk: int = 200_000,
    confidence: float = 0.95,
) -> Bound:
    """Run ``mechanism`` ``samples`` times on each code of ``pair`` and bound ε from the
    likelihood-ratio test on the noisy coordinates (read before the post-processing clip).

    ``per_release``: one generator from ``rng_factory`` per output, exactly as a release
    draws (catches repeated randomness such as a fixed seed; ~100 µs per output); else one
    generator per chunk of ``chunk`` outputs (the same distribution when the factory is
    honest, and fast enough for the millions of samples a tight bound needs).
    """
    scores = []
    for row in pair:
        parts = []
        if per_release:
            one = row.reshape(1, -1)
            noisy = np.concatenate(
                [
                    mechanism(one, space, calibration, rng_factory(), post_clip=False)
                    for _ in range(samples)
                ]
            )
            parts.append(lr_scores(noisy, space, calibration, pair))
        else:
            done = 0
            while done < samples:
                size = min(chunk, samples - done)
                batch = np.repeat(row.reshape(1, -1), size, axis=0)
                noisy = mechanism(batch, space, calibration, rng_factory(), post_clip=False)
                parts.append(lr_scores(noisy, space, calibration, pair))
                done += size
        scores.append(np.concatenate(parts))
    return lower_bound(scores[0], scores[1], calibration.delta, confidence)


# -- broken variants (the canaries) ---------------------------------------------------------


def halved_noise(
    z: np.ndarray,
    space: AttributeSpace,
    calibration: Calibration,
    rng: np.random.Generator,
    **kw: Any,
) -> np.ndarray:
    """Canary: the noise is half what the calibration asks for."""
    return privatize(z, space, replace(calibration, sigma=calibration.sigma / 2), rng, **kw)


def skipped_clip(
    z: np.ndarray,
    space: AttributeSpace,
    calibration: Calibration,
    rng: np.random.Generator,
    **kw: Any,
) -> np.ndarray:
    """Canary: the coordinates are not clipped before the noise (unbounded sensitivity)."""
    unclipped = replace(space, clip_bounds=np.full_like(space.clip_bounds, np.inf))
    return privatize(z, unclipped, calibration, rng, **kw)


def fixed_seed() -> np.random.Generator:
    """Canary: every release draws from the same seed (its noise repeats)."""
    return np.random.default_rng(1234)


@dataclass(frozen=True)
class WhiteBoxReport:
    claim: float
    delta: float
    batched: Bound
    per_release: Bound
    seconds: float

    @property
    def epsilon(self) -> float:
        return max(self.batched.epsilon, self.per_release.epsilon)

    @property
    def flagged(self) -> bool:
        return self.epsilon > self.claim


def audit_white_box(
    space: AttributeSpace,
    calibration: Calibration,
    z: np.ndarray,
    samples: int,
    per_release_samples: int,
    *,
    mechanism: Privatize = privatize,
    rng_factory: RngFactory = release_rng,
    reach: float = 3.0,
    confidence: float = 0.95,
) -> WhiteBoxReport:
    """Both white-box tests on the neighbours of ``z``: batched (tightness) and one
    generator per release (fresh randomness). The neighbours sit at ±``reach``·C_a: an
    honest mechanism clips them to the bounds, one that skips the clip shows it."""
    start = time.perf_counter()
    pair = neighbours(space, z, reach)
    batched = white_box(
        space, calibration, pair, samples,
        mechanism=mechanism, rng_factory=rng_factory, confidence=confidence,
    )  # fmt: skip
    single = white_box(
        space, calibration, pair, per_release_samples, per_release=True,
        mechanism=mechanism, rng_factory=rng_factory, confidence=confidence,
    )  # fmt: skip
    return WhiteBoxReport(
        calibration.epsilon, calibration.delta, batched, single, time.perf_counter() - start
    )


# -- the black-box test: a classifier on released images ------------------------------------


@dataclass(frozen=True)
class Distinguisher:
    """How the black-box attacker is trained: a small CNN from scratch, on the first half of
    each neighbour's releases (the second half is held out for the scores)."""

    steps: int = 300
    batch: int = 64
    width: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0


def distinguisher(width: int = 16) -> nn.Module:
    """Three conv–ReLU–pool stages, a 4×4 map and one linear logit ("neighbour 1").

    The head keeps where things are: with a global average pool instead (measured at 2 DDIM
    steps, 64 releases per neighbour, 3 seeds) the reused-x_T canary's held-out releases were
    told apart 91–97 % of the time, with this head 98–100 %; on honest releases at ε = 8 both
    reach the same accuracy (0.74–0.76)."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Linear(4 * w * 16, 1),
    )  # fmt: skip


def _images(pixels: np.ndarray) -> torch.Tensor:
    """(N, R, R, 3) uint8 → (N, 3, R, R) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1


def distinguish(
    images0: np.ndarray, images1: np.ndarray, config: Distinguisher = Distinguisher()
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out scores (the logit; higher = "neighbour 1") of the second half of each
    neighbour's released images (N, R, R, 3) uint8, from a CNN trained on the first halves."""
    x0, x1 = _images(images0), _images(images1)
    h0, h1 = len(x0) // 2, len(x1) // 2
    x = torch.cat([x0[:h0], x1[:h1]])
    y = torch.cat([torch.zeros(h0), torch.ones(h1)])
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        net = distinguisher(config.width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.steps):
        idx = torch.randint(0, len(x), (min(config.batch, len(x)),), generator=generator)
        loss = F.binary_cross_entropy_with_logits(net(x[idx])[:, 0], y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        return net(x0[h0:])[:, 0].numpy(), net(x1[h1:])[:, 0].numpy()


def black_box(
    images0: np.ndarray,
    images1: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    config: Distinguisher = Distinguisher(),
) -> Bound:
    """The ε lower bound of a CNN told to tell the releases of two neighbours apart: trained
    on half of each, its held-out logits go to :func:`lower_bound` (which halves them again:
    one half picks the threshold, the other is counted)."""
    if min(len(images0), len(images1)) < 8:
        raise ValueError("the black-box test needs at least 8 releases of each neighbour")
    s0, s1 = distinguish(images0, images1, config)
    return lower_bound(s0, s1, delta, confidence)


def best_possible(releases: int, delta: float, confidence: float = 0.95) -> float:
    """The largest bound :func:`black_box` can give with ``releases`` per neighbour: a test
    that is never wrong on the counted quarter, whose Clopper–Pearson upper bound on a zero
    error rate is 1 − (α/2)^(1/n) ≈ 3.7/n at 95 % (n = N/4 counted): about log(N / 15)."""
    held_out = releases - releases // 2
    never = _upper(0, held_out - held_out // 2, (1 - confidence) / 2)
    return _epsilon(never, never, delta)


def inverted_noise(model: DiffAE, originals: np.ndarray, steps: int) -> np.ndarray:
    """Canary ``reused_xt``: the x_T (B, 3, R, R) a broken sanitizer would decode with, each
    original image (B, 3, R, R) in [-1, 1] DDIM-inverted with its own code — the x_T the
    mechanism must never reuse, because it carries the image (DESIGN.md, step 5)."""
    x = torch.from_numpy(np.asarray(originals, dtype=np.float32))
    with torch.no_grad():
        z = model.encode(x)
    return model.stochastic_encode(x, z, steps).numpy()
