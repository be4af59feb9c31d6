"""``scrub``: SCRUB, Kurmanji, Triantafillou, Hayes & Triantafillou, "Towards Unbounded
Machine Unlearning", NeurIPS 2023 (arXiv:2302.09880), §3 and Algorithm 1.

A student initialised from the original model (the teacher) alternates

* max-steps on the forget set: minimise −KL(teacher ‖ student), moving the student away
  from the teacher where it should forget;
* min-steps on the retain set: minimise α·KL(teacher ‖ student) + γ·CE(student, labels),
  staying close to the teacher (and right) everywhere else;

with max-steps only during the first part of training ("msteps" in the paper), then
min-steps alone. Here the forget set is the originals of the replaced and removed
samples and the retain set is the revised training set, so the student is pushed away
from the teacher on exactly what differs between them: the forgotten attributes.
Distributions are tempered by T (the paper's distillation setup, T = 4); the paper
uses SGD, this uses AdamW.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from services.kernels.classifiers import Classifier
from services.kernels.unlearning.core import Control
from services.kernels.unlearning.methods import Details, _steps, batch_rows, run_steps
from services.kernels.unlearning.views import Views


def _kl(student: torch.Tensor, teacher: torch.Tensor, temp: float) -> torch.Tensor:
    """KL(teacher ‖ student) of tempered distributions, scaled by T² as in distillation."""
    target = F.softmax(teacher / temp, dim=1)
    return F.kl_div(F.log_softmax(student / temp, 1), target, reduction="batchmean") * temp**2


def scrub(
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    values: dict[str, float],
    steps: int | None,
    control: Control,
) -> tuple[Classifier, Details]:
    seed, batch = int(values["seed"]), int(values["batch_size"])
    torch.manual_seed(seed)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    student = copy.deepcopy(model).requires_grad_(True)
    retain, original, forget = views.revised, views.original, views.forgotten
    total = _steps(values, steps)
    max_until = int(total * values["max_fraction"]) if len(forget) else 0
    cycle = int(values["min_per_max"]) + 1
    counts = {"max": 0, "min": 0}

    def loss(net: nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        if step < max_until and step % cycle == 0:
            counts["max"] += 1
            images = original.batch(forget[batch_rows(len(forget), batch, gen)])
            with torch.no_grad():
                target = teacher(images)
            return -_kl(net(images), target, values["temperature"])
        counts["min"] += 1
        rows = batch_rows(len(retain), batch, gen)
        images = retain.batch(rows)
        with torch.no_grad():
            target = teacher(images)
        logits = net(images)
        return values["alpha"] * _kl(logits, target, values["temperature"]) + values[
            "gamma"
        ] * F.cross_entropy(logits, retain.tasks[rows])

    result, done = run_steps(
        student, total, loss, control, phase="training", lr=values["lr"], seed=seed
    )
    assert isinstance(result, Classifier)
    return result, {
        "steps": done,
        "planned_steps": total,
        "max_steps": counts["max"],
        "min_steps": counts["min"],
    }
