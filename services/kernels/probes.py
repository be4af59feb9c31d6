"""Linear attribute probes on semantic codes, and the attribute subspace they span.

The weighted DP mechanism (DESIGN.md, steps 2–3) needs, per sensitive attribute a, a
unit direction u_a in z-space and a clipping bound C_a. A probe is a logistic
regression (binary attributes) or a ridge regression (levelled attributes such as a
skin-tone bin) on z; its weight vector, normalised, is the attribute's direction.

Directions are orthonormalised with a QR decomposition (Gram–Schmidt) **in the order
given**: u_1 is probe 1's direction, u_2 is probe 2's direction minus its component
along u_1, and so on. So later attributes' directions change with the order, and an
attribute whose probe lies (almost) in the span of the earlier ones is refused, since it
would have no direction of its own. C_a is a high quantile of |u_aᵀz| over training
codes: clipping at it changes few codes yet bounds the sensitivity Δ_a = 2C_a.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from services.common.errors import FailedPrecondition
from services.kernels.checks import KernelInputError, check_codes
from services.kernels.defaults import DEFAULT_QUANTILE, DEFAULT_THRESHOLD

HOLDOUT = 0.2
"""The fraction of rows :func:`fit_probes` holds out (the last ones)."""
MIN_INDEPENDENT = 1e-3
"""|R_aa| / ‖w_a‖ below this: probe a is (almost) a combination of the earlier ones."""


@dataclass
class ProbeSet:
    """Fitted probes and the attribute subspace, saved as one store entry."""

    names: tuple[str, ...]
    weights: torch.Tensor
    """(A, d) probe weight vectors (not normalised)."""
    biases: torch.Tensor
    directions: torch.Tensor
    """U, (d, A), orthonormal columns in the order of ``names``."""
    clip_bounds: torch.Tensor
    """C, (A,), > 0."""
    levels: torch.Tensor
    """(A,) number of label values per attribute (2 = binary, logistic probe)."""
    train_accuracy: dict[str, float] = field(default_factory=dict)
    heldout_accuracy: dict[str, float] = field(default_factory=dict)
    eraser_matrix: torch.Tensor | None = None
    """M (d, d) of the LEACE eraser on the complement, r ↦ r − (r − b) @ M
    (:mod:`services.kernels.erasure`); None in entries fitted without one."""
    eraser_bias: torch.Tensor | None = None
    """b (d,) of that eraser; set exactly when ``eraser_matrix`` is."""

    @property
    def projection(self) -> torch.Tensor:
        """P = UUᵀ, the orthogonal projection onto the attribute subspace."""
        return projection(self.directions)

    def coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """c = Uᵀz, (B, A)."""
        return check_codes(z, self.directions.shape[0]) @ self.directions

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """(B, A) predicted label per attribute."""
        scores = check_codes(z, self.weights.shape[1]) @ self.weights.T + self.biases
        binary = self.levels == 2
        top = (self.levels - 1).to(scores.dtype)
        levelled = scores.round().clamp(min=torch.zeros_like(top), max=top)
        return torch.where(binary, (scores > 0).to(scores.dtype), levelled).long()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The store entry's tensors; the eraser's two only when it is set."""
        tensors = {
            "weights": self.weights,
            "biases": self.biases,
            "directions": self.directions,
            "clip_bounds": self.clip_bounds,
            "levels": self.levels,
        }
        if (self.eraser_matrix is None) != (self.eraser_bias is None):
            raise KernelInputError("the eraser's matrix and bias come together")
        if self.eraser_matrix is not None and self.eraser_bias is not None:
            tensors["eraser_matrix"] = self.eraser_matrix
            tensors["eraser_bias"] = self.eraser_bias
        return tensors

    @classmethod
    def from_tensors(
        cls, names: Sequence[str], tensors: dict[str, torch.Tensor], metrics: dict | None = None
    ) -> ProbeSet:
        metrics = metrics or {}
        return cls(
            tuple(names),
            tensors["weights"],
            tensors["biases"],
            tensors["directions"],
            tensors["clip_bounds"],
            tensors["levels"],
            dict(metrics.get("train_accuracy", {})),
            dict(metrics.get("heldout_accuracy", {})),
            tensors.get("eraser_matrix"),
            tensors.get("eraser_bias"),
        )


def fit_logistic(
    z: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, iters: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary logistic regression by full-batch L-BFGS: (weight (d,), bias)."""
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    x, target = z.double(), y.double()
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, target) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def fit_ridge(
    z: torch.Tensor, y: torch.Tensor, l2: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge regression of a levelled label on z: (weight (d,), bias)."""
    x = z.double()
    mean_x, mean_y = x.mean(0), y.double().mean()
    xc, yc = x - mean_x, y.double() - mean_y
    gram = xc.T @ xc / len(x) + l2 * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, xc.T @ yc / len(x))
    return w.float(), (mean_y - mean_x @ w).float()


def orthonormalize(weights: torch.Tensor, names: Sequence[str] = ()) -> torch.Tensor:
    """U (d, A): QR of the (d, A) probe weights, columns signed like the probes.

    Refuses probes that are (nearly) linear combinations of earlier ones, and more
    attributes than dimensions.
    """
    count, dim = weights.shape
    if count > dim:
        raise KernelInputError(f"{count} attribute directions do not fit in z of {dim} dims")
    q, r = torch.linalg.qr(weights.T.double())
    diag = r.diagonal()
    norms = weights.double().norm(dim=1).clamp_min(1e-12)
    for a in range(count):
        if abs(float(diag[a])) / float(norms[a]) < MIN_INDEPENDENT:
            name = names[a] if a < len(names) else str(a)
            raise FailedPrecondition(f"probe {name!r} lies in the span of the earlier probes")
    return (q * diag.sign()).float()


def projection(directions: torch.Tensor) -> torch.Tensor:
    """P = UUᵀ."""
    return directions @ directions.T


def clip_bounds(
    z: torch.Tensor, directions: torch.Tensor, quantile: float = DEFAULT_QUANTILE
) -> torch.Tensor:
    """C_a = the ``quantile`` of |u_aᵀz| over ``z`` (floored at a tiny positive value)."""
    if not 0.0 < quantile <= 1.0:
        raise KernelInputError(f"quantile must be in (0, 1]; got {quantile}")
    coords = (z @ directions).abs()
    return torch.quantile(coords, quantile, dim=0).clamp_min(1e-6)


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")


def training_rows(count: int, holdout: float = HOLDOUT) -> int:
    """How many leading rows of ``count`` :func:`fit_probes` fits on (the rest: held out)."""
    return count - round(count * holdout)


def fit_probes(
    z: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    holdout: float = HOLDOUT,
    quantile: float = DEFAULT_QUANTILE,
    l2: float = 1e-3,
) -> ProbeSet:
    """Fit one probe per column of ``labels`` (N, A) on codes ``z`` (N, d).

    The last ``holdout`` fraction of rows is held out for the reported accuracy; the
    probes, directions and bounds use the rest only.
    """
    z = check_codes(z, z.shape[-1] if z.ndim == 2 else -1).detach().float()
    if labels.shape != (z.shape[0], len(names)):
        raise KernelInputError(
            f"labels: expected ({z.shape[0]}, {len(names)}); got {tuple(labels.shape)}"
        )
    cut = training_rows(z.shape[0], holdout)
    weights, biases, levels = [], [], []
    for a in range(len(names)):
        y = labels[:cut, a]
        count = int(labels[:, a].max()) + 1
        w, b = fit_logistic(z[:cut], y, l2) if count <= 2 else fit_ridge(z[:cut], y, l2)
        weights.append(w)
        biases.append(b)
        levels.append(max(count, 2))
    weight = torch.stack(weights)
    directions = orthonormalize(weight, names)
    probes = ProbeSet(
        tuple(names),
        weight,
        torch.stack(biases),
        directions,
        clip_bounds(z[:cut], directions, quantile),
        torch.tensor(levels),
    )
    pred = probes.predict(z)
    for a, name in enumerate(names):
        probes.train_accuracy[name] = _accuracy(pred[:cut, a], labels[:cut, a])
        probes.heldout_accuracy[name] = _accuracy(pred[cut:, a], labels[cut:, a])
    return probes


def unreadable(probes: ProbeSet, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """Attributes whose held-out probe accuracy is below ``threshold`` → that accuracy."""
    return {n: acc for n, acc in probes.heldout_accuracy.items() if not acc >= threshold}


def require_readable(probes: ProbeSet, threshold: float = DEFAULT_THRESHOLD) -> None:
    """Refuse an encoder that does not expose every sensitive attribute linearly: the
    mechanism can only protect what lies along a probe direction."""
    missing = unreadable(probes, threshold)
    if missing:
        listed = ", ".join(f"{n} ({acc:.0%})" for n, acc in missing.items())
        raise FailedPrecondition(
            f"attributes not linearly readable from z (held-out accuracy < {threshold:.0%}): "
            f"{listed}",
            details={name: f"{acc:.4f}" for name, acc in missing.items()},
        )
