"""Training entry point of the diffusion autoencoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from services.kernels.diffae import DiffAE, DiffAEConfig
from services.kernels.training.data import ImageTable
from services.kernels.training.loop import TrainConfig, Trainer, TrainResult, seed_everything

EVAL_SAMPLES = 256


def heldout_loss(model: DiffAE, held: ImageTable, seed: int = 0) -> float:
    """ε-prediction loss on held-out images with fixed noise (comparable across runs)."""
    gen = torch.Generator().manual_seed(seed)
    images = held.batch(torch.arange(min(len(held), EVAL_SAMPLES)))
    with torch.no_grad():
        return float(model.loss(images, gen))


def train_diffae(
    train: ImageTable,
    model_config: DiffAEConfig,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    held: ImageTable | None = None,
) -> TrainResult:
    seed_everything(config.seed)
    model = DiffAE(model_config)

    def step_loss(net: nn.Module, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        assert isinstance(net, DiffAE)
        return net.loss(train.batch(indices), gen)

    def evaluate(ema: nn.Module) -> dict[str, float]:
        assert isinstance(ema, DiffAE)
        return {} if held is None else {"held-out loss": heldout_loss(ema, held)}

    run_config = {"model": model_config.to_dict(), "data": train.uri, "n": len(train)}
    trainer = Trainer(model, step_loss, len(train), config, checkpoint_dir, run_config)
    return trainer.run(resume=resume, evaluate=evaluate)
