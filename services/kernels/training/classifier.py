"""Training entry point of the task and attacker classifiers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from services.common.errors import InvalidArgument
from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.training.augment import AUGMENTATIONS, augment_pipeline
from services.kernels.training.data import ImageTable
from services.kernels.training.distributed import SINGLE, Distributed
from services.kernels.training.loop import TrainConfig, Trainer, TrainResult, seed_everything


def labels_for(table: ImageTable, config: ClassifierConfig) -> torch.Tensor:
    """The column a classifier predicts: the task labels (target ``pose``), or one
    attribute (an attacker's, or a tenant's task other than pose)."""
    if config.target == "pose":
        return table.tasks
    if config.target not in table.attribute_names:
        raise InvalidArgument(
            f"attribute {config.target!r} is not in the data; it has {table.attribute_names}"
        )
    return table.attributes[:, table.attribute_names.index(config.target)]


def accuracy(model: Classifier, table: ImageTable, labels: torch.Tensor, batch: int = 256) -> float:
    correct = 0
    for start in range(0, len(table), batch):
        idx = torch.arange(start, min(start + batch, len(table)))
        correct += int((model.predict(table.batch(idx)) == labels[idx]).sum())
    return correct / max(len(table), 1)


def train_classifier(
    train: ImageTable,
    model_config: ClassifierConfig,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    held: ImageTable | None = None,
    augment: str = "none",
    where: Distributed = SINGLE,
) -> TrainResult:
    """Train a classifier of ``train`` (accuracy on ``held`` reported when given).

    ``augment="pipeline"`` passes every training batch through
    :func:`~services.kernels.training.augment.augment_pipeline` (real JPEG, resizes, shifts,
    8-bit rounding), so the model keeps its accuracy on images an upload pipeline touched;
    ``"none"`` (the default, that of the unlearning service's retraining) trains on the
    images as they are. ``where``: this process's rank and device under ``torchrun``; the
    flips and the pipeline run on CPU, the model on that device.
    """
    if augment not in AUGMENTATIONS:
        raise InvalidArgument(f"augment: expected one of {AUGMENTATIONS}; got {augment!r}")
    seed_everything(config.seed)
    model = build_classifier(model_config)
    targets = labels_for(train, model_config)

    def step_loss(net: nn.Module, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = train.batch(indices)
        if model_config.target != "pose":  # mirrors keep attributes; they swap pose labels
            flip = torch.rand(len(indices), generator=gen) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if augment == "pipeline":
            images = augment_pipeline(images, gen)
        device = next(net.parameters()).device
        return F.cross_entropy(net(images.to(device)), targets[indices].to(device))

    def evaluate(ema: nn.Module) -> dict[str, float]:
        assert isinstance(ema, Classifier)
        metrics = {"train accuracy": accuracy(ema, train, targets)}
        if held is not None:
            metrics["held-out accuracy"] = accuracy(ema, held, labels_for(held, model_config))
        return metrics

    run_config = {"model": model_config.to_dict(), "data": train.uri, "n": len(train)}
    if augment != "none":  # absent when off, so checkpoints of earlier runs still resume
        run_config["augment"] = augment
    trainer = Trainer(model, step_loss, len(train), config, checkpoint_dir, run_config, where)
    return trainer.run(resume=resume, evaluate=evaluate)
