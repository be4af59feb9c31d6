"""Is an input inside what a model was trained on? The in-domain score, in numpy.

A model trained on one kind of image (the defaults: procedural 32×32 faces) still returns
*something* for any other: the sanitizer pastes back a synthetic-looking stand-in for a
real photograph, private but useless, and nothing would tell the caller. The score says
how far an input lies from the model's training images, in the representation the model
itself computes (the sanitizer: the semantic code z its mechanism privatizes; protection:
the authorized classifier's penultimate features), so it costs no extra kernel call:

    score(z) = ‖(z − μ) L‖₂ = √((z − μ)ᵀ Σ⁻¹ (z − μ)),   Σ⁻¹ = L Lᵀ (Cholesky)

the Mahalanobis distance from a Gaussian fitted to the training representations, i.e. the
negative log-likelihood of that Gaussian up to constants (Lee et al., "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018,
§2, with one class). Σ is shrunk towards its mean variance (``SHRINK``) so that a direction
the training data never varies along is not divided by zero.

The threshold is the ``quantile`` of the scores of held-out rows of the same data, so about
1 − quantile of in-domain inputs are refused; ``bench/domain.py`` measures that rate on other
held-out faces and the separation (AUC) from real photographs, and the README reports it.

**Privacy.** The score is a deterministic function of the private input that the
mechanism's DP guarantee does not cover. A service returns it only to the caller who sent
the image (in the refusal, or in the response when the caller allowed an out-of-domain
input) and writes it nowhere else: not into the released image, the ledger, logs or metrics.

numpy only: the sanitizer and the protection service import this module without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument

METHOD = "mahalanobis"
"""The score's name as services report it."""
DEFAULT_QUANTILE = 0.995
SHRINK = 1e-3
"""Σ + SHRINK · tr(Σ)/d · I: a ridge relative to the mean variance."""


@dataclass(frozen=True)
class DomainScore:
    """One input's score against a model's threshold."""

    score: float
    threshold: float
    method: str = METHOD

    @property
    def in_domain(self) -> bool:
        return self.score <= self.threshold

    def fields(self) -> dict[str, Any]:
        """The wire message's fields (``veil.v1.DomainScore``)."""
        return {**asdict(self), "in_domain": self.in_domain}

    def details(self) -> dict[str, str]:
        """An OUT_OF_DOMAIN refusal's ErrorInfo metadata (for the caller who sent the input)."""
        return {
            "score": f"{self.score:.4f}",
            "threshold": f"{self.threshold:.4f}",
            "method": self.method,
        }


@dataclass(frozen=True)
class DomainModel:
    """A Gaussian of a model's training representations, and the largest score accepted."""

    mean: np.ndarray
    """(d,) float64."""
    whitening: np.ndarray
    """(d, d) float64: L with Σ⁻¹ = L Lᵀ."""
    threshold: float
    representation: str = ""
    """What the rows are, as the entry's config says (e.g. ``penultimate features``)."""

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """(B, d) representations → (B,) Mahalanobis distances."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.mean.shape[0]:
            raise InvalidArgument(
                f"domain: expected (B, {self.mean.shape[0]}) rows; got {tuple(rows.shape)}"
            )
        return np.linalg.norm((rows - self.mean) @ self.whitening, axis=1)

    def judge(self, rows: np.ndarray) -> list[DomainScore]:
        return [DomainScore(float(s), self.threshold) for s in self.scores(rows)]

    def arrays(self) -> dict[str, np.ndarray]:
        """What a store entry keeps (float64: the threshold is a quantile of these scores)."""
        return {"mean": self.mean, "whitening": self.whitening}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], config: Mapping[str, Any]
    ) -> DomainModel:
        mean = np.asarray(arrays["mean"], dtype=np.float64)
        whitening = np.asarray(arrays["whitening"], dtype=np.float64)
        if mean.ndim != 1 or whitening.shape != (mean.shape[0], mean.shape[0]):
            raise InvalidArgument(
                f"domain entry: mean {mean.shape} and whitening {whitening.shape} do not match"
            )
        return cls(
            mean, whitening, float(config["threshold"]), str(config.get("representation", ""))
        )


def gaussian(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening (L, Σ⁻¹ = L Lᵀ) of ``rows`` (N, d), Σ shrunk by :data:`SHRINK`."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] <= rows.shape[1]:
        raise InvalidArgument(
            f"domain: need more rows than dimensions to fit; got {tuple(rows.shape)}"
        )
    mean = rows.mean(axis=0)
    cov = np.cov(rows, rowvar=False)
    d = cov.shape[0]
    cov += SHRINK * float(np.trace(cov)) / d * np.eye(d)
    return mean, np.linalg.cholesky(np.linalg.inv(cov))


def fit_domain(
    train: np.ndarray, held_out: np.ndarray, quantile: float = DEFAULT_QUANTILE
) -> DomainModel:
    """The Gaussian of ``train``, thresholded at ``quantile`` of ``held_out``'s scores."""
    if not 0.5 <= quantile < 1.0:
        raise InvalidArgument(f"quantile must be in [0.5, 1); got {quantile}")
    mean, whitening = gaussian(train)
    model = DomainModel(mean, whitening, threshold=0.0)
    threshold = float(np.quantile(model.scores(held_out), quantile))
    return DomainModel(mean, whitening, threshold)


def auc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside input > score of an inside one), ties counting one half:
    the area under the ROC curve of the score as a detector of ``outside`` (Mann–Whitney)."""
    inside, outside = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    if inside.size == 0 or outside.size == 0:
        raise InvalidArgument("auc: both sets need at least one score")
    greater = (outside[:, None] > inside[None, :]).sum()
    ties = (outside[:, None] == inside[None, :]).sum()
    return float((greater + 0.5 * ties) / (inside.size * outside.size))
