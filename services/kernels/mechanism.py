"""The weighted diffusion mechanism's privacy math, in numpy (no torch, no transport).

DESIGN.md, "The weighted diffusion mechanism": the attribute coordinates c = Uᵀz of a
semantic code z are clipped to [−C_a, C_a] (sensitivity Δ_a = 2C_a, any two faces being
neighbours) and each gets Gaussian noise of standard deviation σ·w_a. That is one Gaussian
mechanism on the vector (c_a / w_a)_a with L2 sensitivity ‖(Δ_a / w_a)_a‖₂ and noise σ, so
its effective noise multiplier is m = σ / ‖(Δ_a / w_a)_a‖₂; attribute a alone (neighbours
that differ only in a) is a Gaussian mechanism with m_a = σ·w_a / Δ_a ≥ m.

A Gaussian mechanism with μ = 1/m is exactly μ-GDP; its privacy profile is (Balle & Wang
2018, "Improving the Gaussian Mechanism for Differential Privacy", Theorem 8)

    δ(ε; μ) = Φ(μ/2 − ε/μ) − e^ε · Φ(−μ/2 − ε/μ),

and :func:`calibrate_mu` solves it for the largest μ (smallest σ) that meets a target
(ε, δ): the tightest honest noise. The accountant's PLD figure for one such Gaussian event
is this same curve up to its discretisation (pinned in tests). The seed's Lemma 1 figure,
RDP ε(α) = αμ²/2 converted by ε(α) + log(1/δ)/(α−1) and minimised over real α > 1
(= μ²/2 + μ·√(2 log(1/δ))), is reported beside it and never used to claim less.

Randomness: a release draws its noise and its x_T from a PCG64 generator seeded with 256
bits of the OS CSPRNG (:func:`release_rng`), fresh per release and never reused; a caller's
seed is honoured for previews
only (:func:`preview_rng`). The noise is float64 numpy Gaussian noise: the proof assumes
exact real-valued Gaussians, and floating-point sampling is not hardened against the
low-bit attacks of Mironov (CCS 2012): that gap is not covered.

What the proof covers and what it does not: only the clipped attribute coordinates. The
complement (I−P)z is decoded as it is (``keep``) or with every attribute's linearly
decodable information removed by a LEACE eraser fitted on training codes (``erase``); in
both cases its leakage is measured, not proved.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import optimize, special

from services.common.errors import FailedPrecondition, InvalidArgument

Complement = Literal["keep", "erase"]
COMPLEMENTS: tuple[Complement, ...] = ("keep", "erase")

MAX_EPSILON = 100.0
"""Largest target ε a release may ask for: beyond it the noise is negligible anyway, and the
profile's e^ε term stops being representable."""
MIN_DELTA = 1e-15
"""Smallest δ: below it Φ's tail is lost to rounding and the calibration is meaningless."""


# -- the Gaussian mechanism's exact privacy profile -----------------------------------------


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of the μ-GDP Gaussian mechanism (Balle & Wang 2018, Theorem 8)."""
    if mu <= 0:
        return 0.0
    a = mu / 2 - epsilon / mu
    b = -mu / 2 - epsilon / mu
    second = math.exp(epsilon + float(special.log_ndtr(b)))
    return max(float(special.ndtr(a)) - second, 0.0)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest ε with δ(ε; μ) ≤ ``delta``: the exact ε of a Gaussian with μ = Δ/σ."""
    _check_delta(delta)
    if mu <= 0 or gaussian_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while gaussian_delta(hi, mu) > delta:
        hi *= 2
    return float(
        optimize.brentq(lambda e: gaussian_delta(e, mu) - delta, 0.0, hi, xtol=1e-13, rtol=1e-13)
    )


def calibrate_mu(epsilon: float, delta: float) -> float:
    """The largest μ = Δ/σ whose Gaussian mechanism is (ε, δ)-DP (analytic calibration)."""
    _check_epsilon(epsilon)
    _check_delta(delta)
    lo, hi = 1e-6, 1.0
    while gaussian_delta(epsilon, hi) < delta:
        hi *= 2
    while gaussian_delta(epsilon, lo) > delta:  # only for absurdly large δ
        lo /= 2
    return float(
        optimize.brentq(
            lambda m: gaussian_delta(epsilon, m) - delta, lo, hi, xtol=1e-14, rtol=1e-14
        )
    )


def rdp_epsilon(mu: float, delta: float) -> float:
    """The seed's Lemma 1 figure: min over real α > 1 of αμ²/2 + log(1/δ)/(α − 1)."""
    _check_delta(delta)
    return mu * mu / 2 + mu * math.sqrt(2 * math.log(1 / delta))


def composed_mu(mus: list[float] | tuple[float, ...]) -> float:
    """μ of the composition of Gaussian mechanisms: √(Σ μ_i²) (GDP composes exactly)."""
    return math.sqrt(sum(m * m for m in mus))


def _check_epsilon(epsilon: float) -> None:
    if not (isinstance(epsilon, (int, float)) and 0 < epsilon <= MAX_EPSILON):
        raise InvalidArgument(
            f"epsilon must be a number in (0, {MAX_EPSILON:g}]; got {epsilon!r}",
            details={"field": "epsilon"},
        )


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and MIN_DELTA <= delta < 1):
        raise InvalidArgument(
            f"delta must be a number in [{MIN_DELTA:g}, 1); got {delta!r}",
            details={"field": "delta"},
        )


# -- the attribute subspace -----------------------------------------------------------------


def orthonormal(directions: np.ndarray) -> np.ndarray:
    """Directions re-orthonormalised in float64 (QR, columns keep their sign and order).

    Probes are stored in float32, whose UᵀU is the identity only to ~1e-7: the complement
    z − UUᵀz would then keep ~1e-7·c of each attribute coordinate, a deterministic trace of
    the un-noised value. In float64 it is ~1e-16, below what the float32 decoder resolves.
    """
    q, r = np.linalg.qr(np.asarray(directions, dtype=np.float64))
    return q * np.sign(np.diag(r))


@dataclass(frozen=True)
class AttributeSpace:
    """The probes' attribute subspace as the mechanism uses it (float64 numpy)."""

    names: tuple[str, ...]
    directions: np.ndarray
    """U, (d, A), orthonormal columns in the order of ``names``."""
    clip_bounds: np.ndarray
    """C, (A,), > 0: coordinate a is clipped to [−C_a, C_a]; Δ_a = 2C_a."""
    eraser_matrix: np.ndarray | None = None
    """LEACE on the complement, (d, d): r ↦ r − (r − bias) @ matrix (``erase``)."""
    eraser_bias: np.ndarray | None = None
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d, a = self.directions.shape
        if a != len(self.names) or self.clip_bounds.shape != (a,):
            raise FailedPrecondition("attribute space: names, directions and bounds disagree")
        if not np.all(self.clip_bounds > 0):
            raise FailedPrecondition("attribute space: clip bounds must be > 0")
        gram = self.directions.T @ self.directions
        if not np.allclose(gram, np.eye(a), atol=1e-4):
            raise FailedPrecondition("attribute space: directions are not orthonormal")
        if (self.eraser_matrix is None) != (self.eraser_bias is None):
            raise FailedPrecondition("attribute space: eraser matrix and bias come together")
        if self.eraser_matrix is not None and self.eraser_matrix.shape != (d, d):
            raise FailedPrecondition(f"attribute space: eraser must be ({d}, {d})")

    @property
    def z_dim(self) -> int:
        return int(self.directions.shape[0])

    @property
    def sensitivities(self) -> np.ndarray:
        """Δ_a = 2C_a."""
        return 2 * self.clip_bounds

    @property
    def can_erase(self) -> bool:
        return self.eraser_matrix is not None

    def weights(self, given: Mapping[str, float]) -> np.ndarray:
        """(A,) weights in the space's order: the given ones, 1 for the others; unknown
        names, and weights that are not finite and > 0, are InvalidArgument."""
        unknown = sorted(set(given) - set(self.names))
        if unknown:
            raise InvalidArgument(
                f"unknown attribute(s) {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(self.names)}",
                details={"field": "weights"},
            )
        out = np.ones(len(self.names))
        for i, name in enumerate(self.names):
            w = given.get(name, 1.0)
            if not (isinstance(w, (int, float)) and math.isfinite(w) and 0 < w <= 1e6):
                raise InvalidArgument(
                    f"weight of {name!r} must be a finite number in (0, 1e6]; got {w!r}",
                    details={"field": "weights"},
                )
            out[i] = w
        return out


# -- calibration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """σ for a target (ε, δ) and weights, with the figures a receipt states."""

    epsilon: float
    """The target, and the exact ε of this Gaussian mechanism at ``delta``."""
    delta: float
    weights: tuple[float, ...]
    sigma: float
    """Noise of coordinate a is σ·w_a."""
    mu: float
    """Δ/σ of the whole mechanism: 1 / noise multiplier."""
    per_attribute: dict[str, float]
    """ε of each attribute alone, at ``delta``."""
    rdp_epsilon: float
    """The seed's Lemma 1 figure for the same mechanism (≥ ``epsilon``)."""

    @property
    def noise_multiplier(self) -> float:
        return 1.0 / self.mu

    @property
    def noise_scales(self) -> np.ndarray:
        return self.sigma * np.asarray(self.weights)


def calibrate(
    space: AttributeSpace, epsilon: float, delta: float, weights: Mapping[str, float]
) -> Calibration:
    """The smallest σ that makes the weighted mechanism (ε, δ)-DP (exactly, not a bound)."""
    w = space.weights(weights)
    mu = calibrate_mu(epsilon, delta)
    scaled = space.sensitivities / w
    sigma = float(np.linalg.norm(scaled)) / mu
    per = {
        name: gaussian_epsilon(float(space.sensitivities[a] / (sigma * w[a])), delta)
        for a, name in enumerate(space.names)
    }
    return Calibration(
        epsilon=float(epsilon),
        delta=float(delta),
        weights=tuple(float(x) for x in w),
        sigma=sigma,
        mu=mu,
        per_attribute=per,
        rdp_epsilon=rdp_epsilon(mu, delta),
    )


def attribute_mus(space: AttributeSpace, calibration: Calibration) -> np.ndarray:
    """(A,) μ_a = Δ_a / (σ·w_a) of each attribute alone."""
    return space.sensitivities / calibration.noise_scales


def composition(
    space: AttributeSpace, calibrations: list[Calibration], delta: float
) -> tuple[float, dict[str, float], float]:
    """(ε, per-attribute ε, RDP figure) at ``delta`` of the outcomes of all ``calibrations``
    released together (a chosen preview candidate depended on every candidate)."""
    mu = composed_mu([c.mu for c in calibrations])
    mus = np.sqrt(sum(attribute_mus(space, c) ** 2 for c in calibrations))
    per = {n: gaussian_epsilon(float(mus[a]), delta) for a, n in enumerate(space.names)}
    return gaussian_epsilon(mu, delta), per, rdp_epsilon(mu, delta)


# -- the mechanism itself -------------------------------------------------------------------


def release_rng() -> np.random.Generator:
    """A PCG64 generator seeded with 256 bits of the OS CSPRNG (``secrets``), for one
    release's noise and x_T. PCG64 is not a CSPRNG; it is sound here because its seed is
    256 fresh OS-random bits per release (no guessable state, never reused) and its output
    is never disclosed except through the noisy release itself."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(256))))


def preview_rngs(count: int, seed: int | None) -> list[np.random.Generator]:
    """One generator per preview candidate: independent streams from the caller's seed
    (reproducible previews), or from 256 OS-random bits when no seed is given."""
    root = np.random.SeedSequence(secrets.randbits(256) if seed is None else seed)
    return [np.random.Generator(np.random.PCG64(s)) for s in root.spawn(count)]


def privatize(
    z: np.ndarray,
    space: AttributeSpace,
    calibration: Calibration,
    rng: np.random.Generator,
    complement: Complement = "keep",
    *,
    post_clip: bool = True,
) -> np.ndarray:
    """z̃ = Σ_a c̃_a u_a + (I−P)z' for codes ``z`` (B, d), where c̃_a = clip(u_aᵀz, ±C_a) +
    N(0, (σ·w_a)²) and z' is z (``keep``) or its complement passed through the LEACE
    eraser and projected back onto the complement (``erase``).

    ``post_clip`` clips the noisy coordinates to [−C_a, C_a] again: post-processing of the
    noisy release, so the guarantee is unchanged, and it keeps z̃ where the decoder was
    trained (at ε = 1 the noise is σ·w_a ≈ 16·C_a, and an unclipped coordinate of ±80 on a
    code of norm ≈ 8 decodes to nothing like a face). The audit reads the coordinates
    before it (``post_clip=False``) to test the Gaussian mechanism itself."""
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != space.z_dim:
        raise InvalidArgument(f"codes must be (B, {space.z_dim}); got {z.shape}")
    if len(calibration.weights) != len(space.names):
        raise InvalidArgument("calibration does not match the attribute space")
    u = space.directions
    coords = z @ u
    clipped = np.clip(coords, -space.clip_bounds, space.clip_bounds)
    noisy = clipped + rng.standard_normal(coords.shape) * calibration.noise_scales
    if post_clip:
        noisy = np.clip(noisy, -space.clip_bounds, space.clip_bounds)
    rest = z - coords @ u.T
    if complement == "erase":
        if space.eraser_matrix is None or space.eraser_bias is None:
            raise FailedPrecondition("complement 'erase': the loaded probes carry no eraser")
        rest = rest - (rest - space.eraser_bias) @ space.eraser_matrix
        rest = rest - (rest @ u) @ u.T
    elif complement != "keep":
        raise InvalidArgument(f"complement must be one of {COMPLEMENTS}; got {complement!r}")
    return noisy @ u.T + rest


def fresh_noise(rng: np.random.Generator, batch: int, resolution: int) -> np.ndarray:
    """x_T ~ N(0, I), (B, 3, R, R) float32: drawn fresh for every release, never inverted
    from the original (the inverted x_T carries the attributes)."""
    return rng.standard_normal((batch, 3, resolution, resolution)).astype(np.float32)
