"""``feature``: feature unlearning by closed-form concept erasure, then a head repair.

1. **Erase.** On the revised samples (where the attributes no longer go with the task),
   take the pre-activations h of the penultimate layer (its last ``Linear``, before the
   ReLU) and fit LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in
   closed form", Thm. 3.1) of the forgotten attributes on them: E(h) = h − (h − b) M, the
   least-change affine map after which no linear predictor of the attributes beats a
   constant one (on that distribution). E is affine, so it **folds into the layer**:
   W' = (I − M)ᵀ W and c' = c (I − M) + b M + β, where the shift β (per unit, the fitted
   minimum plus ``shift_std`` standard deviations) keeps the erased units above the ReLU, so
   that the ReLU passes them unchanged and the released penultimate features are
   E(h) + β: linearly erased, not re-encoded by the clipping. The model keeps its class,
   config and parameter names (the store loads it like any classifier).
2. **Repair.** The features changed, so the head is fitted again, on cached features of
   the same revised samples (the backbone is frozen, one forward pass in all): a short
   Adam run on (1 − λ)·CE(labels) + λ·T²·KL(old model's tempered task outputs ‖ new),
   starting from the old head (Hinton et al. 2015 for the distillation term).

Only linear information at the penultimate layer is erased: earlier layers still hold
the attributes, and a nonlinear reader of the features may still find some (as with
the sanitizer's complement eraser, services/kernels/erasure.py).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from concept_erasure import LeaceFitter
from torch import nn
from torch.nn import functional as F

from services.common.errors import FailedPrecondition
from services.kernels.classifiers import Classifier
from services.kernels.erasure import concept_columns
from services.kernels.unlearning.core import Control
from services.kernels.unlearning.evaluate import BATCH, attribute_columns, subsample
from services.kernels.unlearning.methods import Details, _steps, batch_rows, run_steps
from services.kernels.unlearning.views import Views


def _last_linear(model: Classifier) -> tuple[nn.Sequential, nn.Linear, str]:
    """The penultimate stage, its last Linear, and the stage before it; refused unless the
    stage ends Linear → ReLU (the conv nets here; not the MLP-Mixer's token pool)."""
    stage = model.stages["penultimate"]
    layers = model.feature_layers
    if (
        not isinstance(stage, nn.Sequential)
        or len(stage) < 2
        or not isinstance(stage[-1], nn.ReLU)
        or not isinstance(stage[-2], nn.Linear)
    ):
        raise FailedPrecondition(
            f"feature unlearning needs a penultimate stage ending Linear → ReLU; "
            f"{model.config.arch} has none (use retrain, finetune or scrub)"
        )
    return stage, stage[-2], layers[layers.index("penultimate") - 1]


@torch.no_grad()
def pre_activations(
    model: Classifier, images_of, rows: torch.Tensor, control: Control
) -> torch.Tensor:
    stage, _, before = _last_linear(model)
    body = stage[:-1]
    out = []
    for start in range(0, len(rows), BATCH):
        control.tick("erasing", 0.8 * start / max(len(rows), 1))
        out.append(body(model.features(images_of(rows[start : start + BATCH]), before)))
    return torch.cat(out)


def fit_fold(
    h: torch.Tensor, labels: torch.Tensor, levels: Sequence[int], shift_std: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(I − M, b M, β) for pre-activations ``h`` (N, d) and attribute ``labels`` (N, A)."""
    x = h.double()
    eraser = LeaceFitter.fit(x, concept_columns(labels, levels)).eraser
    matrix = eraser.proj_right.T @ eraser.proj_left.T
    bias = eraser.bias if eraser.bias is not None else torch.zeros_like(x[0])
    keep = torch.eye(x.shape[1], dtype=x.dtype) - matrix
    offset = bias @ matrix
    erased = x @ keep + offset
    shift = (-erased.min(0).values).clamp(min=0) + shift_std * erased.std(0)
    return keep, offset, shift


def feature(
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    values: dict[str, float],
    steps: int | None,
    control: Control,
) -> tuple[Classifier, Details]:
    seed = int(values["seed"])
    torch.manual_seed(seed)
    new = copy.deepcopy(model).eval().requires_grad_(True)
    _, linear, _ = _last_linear(new)
    data = views.revised
    rows = subsample(len(data), int(values["fit_samples"]), seed)
    control.tick("erasing", 0.0)
    h = pre_activations(new, data.batch, rows, control)
    labels = data.attributes[rows][:, attribute_columns(views, attributes)]
    levels = [max(2, int(labels[:, k].max()) + 1) for k in range(labels.shape[1])]
    keep, offset, shift = fit_fold(h, labels, levels, values["shift_std"])
    with torch.no_grad():
        teacher = model.head(F.relu(h))
        weight, bias = linear.weight.double(), linear.bias.double()
        linear.weight.copy_((keep.T @ weight).float())
        linear.bias.copy_((bias @ keep + offset + shift).float())
        feats = F.relu(((h.double() @ keep) + offset + shift).float())
    clipped = float((feats == 0).float().mean())
    control.tick("erasing", 1.0)
    details = _repair(new, feats, teacher, data.tasks[rows], values, steps, control)
    details.update({"fit_samples": len(rows), "clipped_fraction": clipped})
    return new, details


def _repair(
    model: Classifier,
    feats: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    values: dict[str, float],
    steps: int | None,
    control: Control,
) -> Details:
    """Fit ``model.head`` on cached features: labels plus distillation (module doc)."""
    seed, batch = int(values["seed"]), int(values["batch_size"])
    weight, temp = values["distill"], values["temperature"]
    soft = F.softmax(teacher / temp, dim=1)

    def loss(head: nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        rows = batch_rows(len(feats), batch, gen)
        logits = head(feats[rows])
        kd = F.kl_div(F.log_softmax(logits / temp, 1), soft[rows], reduction="batchmean")
        return (1 - weight) * F.cross_entropy(logits, labels[rows]) + weight * temp**2 * kd

    total = _steps(values, steps)
    head, done = run_steps(
        model.head,
        total,
        loss,
        control,
        phase="repairing",
        lr=values["lr"],
        seed=seed,
        optimizer="adam",
    )
    model.head = head  # type: ignore[assignment]
    model.eval()
    return {"steps": done, "planned_steps": total}
