"""The figures every unlearning job reports (issue #16, item 4).

* task accuracy on the held-out test set and on the revised training samples;
* attribute leakage: fresh logistic probes on the penultimate features of held-out faces,
  5-fold cross-fitted (:func:`services.kernels.erasure.probe_accuracy`), with the
  majority rate beside each;
* membership inference: a loss-threshold attack (Yeom et al. 2018, "Privacy Risk in
  Machine Learning", §3.2; the model's cross-entropy on the true task label is the score,
  lower loss = "member"), members = the originals of the replaced/removed samples, non-members =
  held-out originals of the same distribution; reported as the ROC AUC (0.5 = no signal).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from services.common.errors import InvalidArgument
from services.kernels.classifiers import Classifier
from services.kernels.erasure import chance, probe_accuracy
from services.kernels.training.data import ImageTable
from services.kernels.unlearning.core import Control, Figures, Leakage
from services.kernels.unlearning.views import Views

EVAL_ROWS = 2000
"""At most this many rows per evaluated set (a seeded subsample): bounded cost."""
BATCH = 256


def subsample(count: int, limit: int, seed: int) -> torch.Tensor:
    """Up to ``limit`` sorted row indices of ``count``, the same for the same seed."""
    if count <= limit:
        return torch.arange(count)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=gen)[:limit].sort().values


@torch.no_grad()
def outputs(
    model: Classifier, table: ImageTable, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) of ``rows`` of ``table``, in eval mode."""
    was = model.training
    model.eval()
    feats, logits = [], []
    for start in range(0, len(rows), BATCH):
        images = table.batch(rows[start : start + BATCH])
        f = model.features(images, "penultimate")
        feats.append(f)
        logits.append(model.head(f))
    model.train(was)
    if not feats:
        return torch.empty(0), torch.empty(0)
    return torch.cat(feats), torch.cat(logits)


def auc(members: torch.Tensor, others: torch.Tensor) -> float:
    """P(score of a member > score of a non-member) + ½ P(tie): the ROC AUC by ranks."""
    if len(members) == 0 or len(others) == 0:
        return float("nan")
    scores = torch.cat([members, others]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique():  # average ranks over ties
        tied = scores == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    n1, n0 = len(members), len(others)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def attribute_columns(views: Views, attributes: Sequence[str]) -> list[int]:
    """Columns of ``attributes`` in the views' tables; unknown names are refused."""
    known = views.attribute_names
    unknown = [a for a in attributes if a not in known]
    if unknown or not attributes:
        raise InvalidArgument(
            f"unknown attributes {unknown}; the data has {list(known)}"
            if unknown
            else f"name at least one attribute to forget; the data has {list(known)}",
            details={"known": ",".join(known)},
        )
    return [known.index(a) for a in attributes]


def leakage(
    model: Classifier, table: ImageTable, columns: Sequence[int], rows: torch.Tensor
) -> tuple[Leakage, ...]:
    feats, _ = outputs(model, table, rows)
    labels = table.attributes[rows][:, list(columns)]
    levels = [max(2, int(labels[:, k].max()) + 1) for k in range(labels.shape[1])]
    accuracy = probe_accuracy(feats, labels, levels)
    base = chance(labels)
    names = [table.attribute_names[c] for c in columns]
    return tuple(Leakage(n, a, c) for n, a, c in zip(names, accuracy, base, strict=True))


def member_scores(model: Classifier, table: ImageTable, rows: torch.Tensor) -> torch.Tensor:
    """−cross-entropy on the true task label: higher = more member-like."""
    _, logits = outputs(model, table, rows)
    if len(rows) == 0:
        return torch.empty(0)
    return -F.cross_entropy(logits, table.tasks[rows], reduction="none")


def accuracy(model: Classifier, table: ImageTable, rows: torch.Tensor) -> float:
    _, logits = outputs(model, table, rows)
    return float((logits.argmax(1) == table.tasks[rows]).float().mean()) if len(rows) else 0.0


def figures(
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    wall_seconds: float,
    control: Control | None = None,
    seed: int = 0,
) -> Figures:
    """Every figure of item 4 for ``model`` on ``views``."""
    columns = attribute_columns(views, attributes)

    def tick(fraction: float) -> None:
        if control is not None:
            control.tick("evaluating", fraction)

    tick(0.0)
    test_rows = subsample(len(views.test), EVAL_ROWS, seed)
    task = accuracy(model, views.test, test_rows)
    tick(0.2)
    revised = accuracy(model, views.revised, subsample(len(views.revised), EVAL_ROWS, seed + 1))
    tick(0.4)
    leaks = leakage(model, views.test, columns, test_rows)
    tick(0.7)
    members = views.forgotten[subsample(len(views.forgotten), EVAL_ROWS, seed + 2)]
    others = subsample(len(views.heldout_original), EVAL_ROWS, seed + 3)
    mia = auc(
        member_scores(model, views.original, members),
        member_scores(model, views.heldout_original, others),
    )
    tick(1.0)
    return Figures(task, revised, leaks, mia, wall_seconds)
