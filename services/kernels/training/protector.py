"""Training entry point of the fast-protection generator (:mod:`services.kernels.protector`).

The generator maximises FMD's objective J = MSE(f_feat(x), f_feat(G(x))) − λ·CE(f(G(x)), y)
(:func:`services.kernels.fmd.objective`) averaged over the data, with the authorized model
f frozen and y its own prediction on the clean image: what the fast mode is served with
(no label comes with a request). The generator's weights move; f never does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from services.kernels.classifiers import Classifier
from services.kernels.fmd import objective
from services.kernels.protector import Protector, ProtectorConfig, build_protector
from services.kernels.training.data import ImageTable
from services.kernels.training.loop import TrainConfig, Trainer, TrainResult, seed_everything

EVAL_ROWS = 512
"""Held-out images the end-of-run figures are measured on."""


def protector_loss(protector: nn.Module, model: Classifier, images: torch.Tensor) -> torch.Tensor:
    """−mean J over the batch (the loss the optimiser descends)."""
    config = protector.config
    assert isinstance(config, ProtectorConfig)
    with torch.no_grad():
        labels = model(images).argmax(1)
        target = model.features(images, config.feature_layer)
    value, _, _ = objective(
        model, protector(images), target, labels, config.ce_weight, config.feature_layer
    )
    return -value.mean()


def evaluate_protector(
    protector: Protector, model: Classifier, table: ImageTable, batch: int = 128
) -> dict[str, float]:
    """Authorized accuracy on the protected images (against the labels and against the
    model's clean predictions), its clean accuracy, and the mean feature distortion."""
    layer = protector.config.feature_layer
    totals = {"clean": 0.0, "protected": 0.0, "kept": 0.0, "distortion": 0.0}
    protector.eval()
    model.eval()
    with torch.no_grad():
        for start in range(0, len(table), batch):
            idx = torch.arange(start, min(start + batch, len(table)))
            x, y = table.batch(idx), table.tasks[idx]
            x_adv = protector(x)
            clean, after = model(x).argmax(1), model(x_adv).argmax(1)
            moved = model.features(x_adv, layer) - model.features(x, layer)
            totals["clean"] += float((clean == y).sum())
            totals["protected"] += float((after == y).sum())
            totals["kept"] += float((after == clean).sum())
            totals["distortion"] += float(moved.flatten(1).pow(2).mean(1).sum())
    n = max(len(table), 1)
    return {
        "authorized clean accuracy": totals["clean"] / n,
        "authorized protected accuracy": totals["protected"] / n,
        "authorized prediction kept": totals["kept"] / n,
        "feature distortion": totals["distortion"] / n,
    }


def _head(table: ImageTable, rows: int) -> ImageTable:
    return ImageTable(
        table.images[:rows],
        table.attributes[:rows],
        table.tasks[:rows],
        table.attribute_names,
        table.num_task_classes,
        table.uri,
    )


def train_protector(
    train: ImageTable,
    model: Classifier,
    config: ProtectorConfig,
    train_config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    held: ImageTable | None = None,
) -> TrainResult:
    """Train a generator against the frozen authorized ``model`` (its SHA-256 is in
    ``config``, so a resume against another classifier is refused)."""
    seed_everything(train_config.seed)
    protector = build_protector(config)
    model.eval().requires_grad_(False)

    def step_loss(net: nn.Module, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return protector_loss(net, model, train.batch(indices))

    def evaluate(ema: nn.Module) -> dict[str, float]:
        assert isinstance(ema, Protector)
        if held is None:
            return {}
        return evaluate_protector(ema, model, _head(held, EVAL_ROWS))

    run_config = {"model": config.to_dict(), "data": train.uri, "n": len(train)}
    trainer = Trainer(protector, step_loss, len(train), train_config, checkpoint_dir, run_config)
    return trainer.run(resume=resume, evaluate=evaluate)
