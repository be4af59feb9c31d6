"""LEACE on the complement (I−P)z: the ``complement = erase`` option of the mechanism.

The weighted mechanism (DESIGN.md, "The weighted diffusion mechanism", steps 3–5) noises
only the attribute coordinates c = Uᵀz and decodes the complement r = (I−P)z as it is, so
whatever r says about an attribute is released unprotected. With the committed autoencoder
r says almost everything: each probe direction is only the *best* single direction, and the
attributes are spread over many more. ``erase`` removes every attribute's *linearly*
decodable information from r with LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept
erasure in closed form", Thm. 3.1 and §4): the affine map of least change whose output has
zero cross-covariance with the concept labels, so no linear predictor beats a constant one
(for every convex loss) on the fitting distribution. It is fitted once, on the codes of the
probes' training rows against all attributes at once (binary: one column; levelled: one-hot),
and stored with the probes as a (d, d) matrix M and a (d,) bias b, applied as

    E(r) = r − (r − b) @ M        (numpy or torch alike)

which is ``concept_erasure.LeaceEraser.__call__`` (x − ((x − bias) @ proj_rightᴴ) @
proj_leftᴴ) with M = proj_rightᵀ proj_leftᵀ, of rank ≤ the number of concept columns.
E maps the complement into itself (the shrunk covariance has span(U) as an eigenspace, so
the whitening and both factors stay in the complement), so the mechanism's re-projection
with (I−P) after E changes nothing but rounding.

Measured on the committed entry (``veil train probes --diffae diffae --name probes --data
'synthfaces://?n=5000&seed=1' --quantile 0.98 --threshold 0.8 --seed 0``; eraser fitted on
the 4 000 training rows; fresh logistic probes, 5-fold cross-fitted on the 1 000 held-out
rows, see :func:`complement_leakage`):

    attribute   chance  before  after  after + (I−P)
    male        0.518   0.973   0.497  0.497
    old         0.587   0.940   0.544  0.544
    dark_skin   0.680   0.974   0.677  0.677
    glasses     0.728   0.973   0.727  0.727
    smiling     0.505   0.982   0.515  0.515

E changes the held-out complement by 40 % of its variance (the complement holds 38 % of
z's variance), through a rank-5 map. LEACE is *linear* erasure only: a two-layer MLP
(256 hidden units, trained on the erased training rows) still read 84–96 % from the erased
complement on the same held-out rows. The receipt's ε does not cover the complement either
way; ``erase`` narrows what a linear reader gets, and the attacker classifiers measure the
rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from concept_erasure import LeaceFitter

from services.kernels.checks import KernelInputError
from services.kernels.probes import fit_logistic

FOLDS = 5
"""Cross-fitting folds of the held-out rows for a fresh probe's accuracy."""


def complement(z: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(I−P)z for codes ``z`` (N, d) and orthonormal ``directions`` U (d, A)."""
    u = directions.to(z.dtype)
    return z - (z @ u) @ u.T


def _levels(levels: torch.Tensor | Sequence[int], count: int) -> list[int]:
    values = [int(v) for v in levels]
    if len(values) != count or min(values, default=2) < 2:
        raise KernelInputError(f"levels: expected {count} values >= 2; got {values}")
    return values


def concept_columns(labels: torch.Tensor, levels: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The concept matrix LEACE erases, (N, K) float64: a binary attribute is one 0/1
    column, an attribute of k > 2 levels k one-hot columns."""
    if labels.ndim != 2:
        raise KernelInputError(f"labels must be (N, A); got {tuple(labels.shape)}")
    columns = []
    for a, count in enumerate(_levels(levels, labels.shape[1])):
        y = labels[:, a].long()
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= count):
            raise KernelInputError(f"labels of attribute {a} must lie in [0, {count})")
        if count == 2:
            columns.append(y[:, None].double())
        else:
            columns.append(torch.nn.functional.one_hot(y, count).double())
    return torch.cat(columns, dim=1)


def fit_complement_eraser(
    z: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    levels: torch.Tensor | Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """LEACE fitted on r = (I−P)z of training codes ``z`` (N, d) against every column of
    ``labels`` (N, A) at once: (matrix M (d, d), bias b (d,)), both float32, for
    E(r) = r − (r − b) @ M. Fitted in float64 with the package's defaults (shrunk
    covariance, trace never increased: E's output goes back into the decoder)."""
    if z.ndim != 2 or directions.ndim != 2 or directions.shape[0] != z.shape[1]:
        raise KernelInputError(
            f"codes (N, d) and directions (d, A) must agree; got {tuple(z.shape)}, "
            f"{tuple(directions.shape)}"
        )
    if labels.shape != (z.shape[0], directions.shape[1]):
        raise KernelInputError(
            f"labels: expected ({z.shape[0]}, {directions.shape[1]}); got {tuple(labels.shape)}"
        )
    if z.shape[0] < 2:
        raise KernelInputError("the eraser needs at least two codes")
    rest = complement(z.detach().double(), directions.double())
    eraser = LeaceFitter.fit(rest, concept_columns(labels, levels)).eraser
    matrix = eraser.proj_right.T @ eraser.proj_left.T
    bias = eraser.bias if eraser.bias is not None else torch.zeros_like(rest[0])
    return matrix.float(), bias.float()


def apply_eraser(r: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """E(r) = r − (r − b) @ M, in ``r``'s dtype."""
    return r - (r - bias.to(r.dtype)) @ matrix.to(r.dtype)


def chance(labels: torch.Tensor) -> list[float]:
    """Per column of ``labels`` (N, A): the majority rate, what a constant guess scores."""
    return [float(torch.bincount(y.long()).max()) / len(y) for y in labels.T]


def _fresh_probe(
    x_fit: torch.Tensor, y_fit: torch.Tensor, x: torch.Tensor, count: int
) -> torch.Tensor:
    """Predicted labels of ``x`` by a logistic probe fitted on (x_fit, y_fit); one-vs-rest
    with arg-max for k > 2 levels."""
    if count == 2:
        w, b = fit_logistic(x_fit, y_fit)
        return (x @ w + b > 0).long()
    scores = []
    for level in range(count):
        w, b = fit_logistic(x_fit, (y_fit == level).long())
        scores.append(x @ w + b)
    return torch.stack(scores, dim=1).argmax(dim=1)


def probe_accuracy(
    x: torch.Tensor,
    labels: torch.Tensor,
    levels: torch.Tensor | Sequence[int],
    folds: int = FOLDS,
) -> list[float]:
    """Per attribute, the accuracy of fresh logistic probes on ``x`` (N, d), cross-fitted:
    rows i ≡ f (mod ``folds``) are predicted by a probe fitted on the others. The attacker
    this models has fresh codes of its own, none of which the eraser was fitted on."""
    x = x.detach().float()
    if len(x) < 2 * folds:
        raise KernelInputError(f"need at least {2 * folds} rows for {folds} folds")
    fold = torch.arange(len(x)) % folds
    counts = _levels(levels, labels.shape[1])
    result = []
    for a, count in enumerate(counts):
        y = labels[:, a].long()
        predicted = torch.empty_like(y)
        for f in range(folds):
            held = fold == f
            predicted[held] = _fresh_probe(x[~held], y[~held], x[held], count)
        result.append(float((predicted == y).float().mean()))
    return result


@dataclass
class ComplementLeakage:
    """Held-out accuracy of fresh linear probes, per attribute."""

    chance: dict[str, float]
    before: dict[str, float]
    """On (I−P)z."""
    after: dict[str, float]
    """On E((I−P)z)."""
    reprojected: dict[str, float]
    """On (I−P)E((I−P)z): what the mechanism decodes."""


def complement_leakage(
    z: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    directions: torch.Tensor,
    levels: torch.Tensor | Sequence[int],
    matrix: torch.Tensor,
    bias: torch.Tensor,
    folds: int = FOLDS,
) -> ComplementLeakage:
    """Measure the eraser on held-out codes ``z`` (rows it was not fitted on)."""
    rest = complement(z.detach().double(), directions.double())
    erased = apply_eraser(rest, matrix, bias)
    again = complement(erased, directions.double())

    def named(values: list[float]) -> dict[str, float]:
        return dict(zip(names, values, strict=True))

    return ComplementLeakage(
        chance=named(chance(labels)),
        before=named(probe_accuracy(rest, labels, levels, folds)),
        after=named(probe_accuracy(erased, labels, levels, folds)),
        reprojected=named(probe_accuracy(again, labels, levels, folds)),
    )
