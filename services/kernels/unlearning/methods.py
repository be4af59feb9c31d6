"""``retrain`` (the reference) and ``finetune`` (the naive baseline), and the step loop
every gradient method here shares.

Each method is ``(model, views, attributes, values, steps, control) -> (model, details)``:
``values`` are the parsed options, ``steps`` the budget's steps (None: the option's).
Batches of step s come from a generator seeded by (seed, s), as in ``veil train``, so
a run is deterministic given its seed (on one machine and thread count).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from services.kernels.classifiers import Classifier, build_classifier
from services.kernels.training.ema import EMA
from services.kernels.training.loop import step_generator
from services.kernels.unlearning.core import Control
from services.kernels.unlearning.views import Views

Details = dict[str, float | str]
StepLoss = Callable[[nn.Module, int, torch.Generator], torch.Tensor]


def run_steps(
    model: nn.Module,
    steps: int,
    step_loss: StepLoss,
    control: Control,
    *,
    phase: str,
    lr: float,
    seed: int,
    params: Iterable[nn.Parameter] | None = None,
    ema_decay: float = 0.0,
    optimizer: str = "adamw",
) -> tuple[nn.Module, int]:
    """``steps`` optimizer steps of ``step_loss``; stops early at the wall-clock cap and
    raises :class:`Cancelled` when asked. Returns (the model or its EMA, steps run)."""
    chosen = list(params) if params is not None else list(model.parameters())
    opt: torch.optim.Optimizer = (
        torch.optim.AdamW(chosen, lr=lr) if optimizer == "adamw" else torch.optim.Adam(chosen, lr)
    )
    ema = EMA(model, ema_decay) if ema_decay > 0 else None
    model.train()
    done = 0
    for step in range(steps):
        if control.tick(phase, step / max(steps, 1)):
            break
        loss = step_loss(model, step, step_generator(seed, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(chosen, 1.0)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        done += 1
    control.tick(phase, 1.0)
    result = ema.model if ema is not None else model
    return result.eval(), done


def batch_rows(count: int, size: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(count, (min(size, max(count, 1)),), generator=gen)


def _steps(values: dict[str, float], steps: int | None) -> int:
    return int(values["steps"] if steps is None else steps)


def retrain(
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    values: dict[str, float],
    steps: int | None,
    control: Control,
) -> tuple[Classifier, Details]:
    """Train a fresh model of the base's config on the revised set alone, with the recipe
    of the committed task model (AdamW, EMA of the weights): what the base would be had
    it never seen the originals."""
    seed = int(values["seed"])
    torch.manual_seed(seed)
    fresh = build_classifier(model.config)
    data, batch = views.revised, int(values["batch_size"])

    def loss(net: nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        rows = batch_rows(len(data), batch, gen)
        return F.cross_entropy(net(data.batch(rows)), data.tasks[rows])

    total = _steps(values, steps)
    result, done = run_steps(
        fresh,
        total,
        loss,
        control,
        phase="training",
        lr=values["lr"],
        seed=seed,
        ema_decay=values["ema_decay"],
    )
    assert isinstance(result, Classifier)
    return result, {"steps": done, "planned_steps": total}


def finetune(
    model: Classifier,
    views: Views,
    attributes: Sequence[str],
    values: dict[str, float],
    steps: int | None,
    control: Control,
) -> tuple[Classifier, Details]:
    """Continue training the base model on the revised set (every layer, plain task
    loss): the naive baseline. It forgets only what the revised data contradicts."""
    seed = int(values["seed"])
    torch.manual_seed(seed)
    tuned = copy.deepcopy(model).requires_grad_(True)
    data, batch = views.revised, int(values["batch_size"])

    def loss(net: nn.Module, step: int, gen: torch.Generator) -> torch.Tensor:
        rows = batch_rows(len(data), batch, gen)
        return F.cross_entropy(net(data.batch(rows)), data.tasks[rows])

    total = _steps(values, steps)
    result, done = run_steps(
        tuned, total, loss, control, phase="training", lr=values["lr"], seed=seed
    )
    assert isinstance(result, Classifier)
    return result, {"steps": done, "planned_steps": total}
