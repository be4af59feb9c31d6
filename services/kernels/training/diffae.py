"""Training entry point of the diffusion autoencoder, and the reconstruction figures that
its manifest records (and ``bench/kernels.py`` prints)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from services.kernels.checks import KernelInputError
from services.kernels.diffae import DiffAE, DiffAEConfig
from services.kernels.metrics import psnr, ssim
from services.kernels.training.data import ImageTable
from services.kernels.training.distributed import SINGLE, Distributed
from services.kernels.training.loop import TrainConfig, Trainer, TrainResult, seed_everything

log = logging.getLogger(__name__)

EVAL_SAMPLES = 256
RECON_SAMPLES = 64
RECON_STEPS = 20


def attribute_labels(
    model: DiffAE, table: ImageTable, indices: torch.Tensor
) -> torch.Tensor | None:
    """The labels of the attributes ``model`` supervises, in its order (None if none)."""
    names = model.config.attributes
    if not names:
        return None
    missing = [n for n in names if n not in table.attribute_names]
    if missing:
        raise KernelInputError(f"the data has no attribute(s) {missing}: {table.attribute_names}")
    columns = [table.attribute_names.index(n) for n in names]
    return table.attributes[indices][:, columns]


def task_labels(model: DiffAE, table: ImageTable, indices: torch.Tensor) -> torch.Tensor | None:
    """The task labels if ``model`` supervises the task (None if not)."""
    if not model.config.task_classes:
        return None
    if table.num_task_classes != model.config.task_classes:
        raise KernelInputError(
            f"the data's task has {table.num_task_classes} classes; the model supervises"
            f" {model.config.task_classes}"
        )
    return table.tasks[indices]


def _labels(
    model: DiffAE, table: ImageTable, indices: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return attribute_labels(model, table, indices), task_labels(model, table, indices)


def heldout_loss(model: DiffAE, held: ImageTable, seed: int = 0) -> float:
    """Training loss on held-out images with fixed noise (comparable across runs)."""
    gen = torch.Generator().manual_seed(seed)
    indices = torch.arange(min(len(held), EVAL_SAMPLES))
    with torch.no_grad():
        return float(model.loss(held.batch(indices), gen, *_labels(model, held, indices)))


def reconstruction(
    model: DiffAE, images: torch.Tensor, steps: int = RECON_STEPS, seed: int = 0
) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of encode → decode against the originals, decoding from a
    fresh x_T ~ N(0, I) (seeded; what the sanitizer does) and from the DDIM-inverted x_T
    (an upper bound on fidelity, never used to release)."""
    with torch.no_grad():
        z = model.encode(images)
        fresh = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
        inverted = model.stochastic_encode(images, z, steps)
        out: dict[str, float] = {}
        for label, x_t in (("fresh", fresh), ("inverted", inverted)):
            decoded = model.decode(z, x_t, steps)
            out[f"{label} x_T PSNR"] = float(psnr(decoded, images).mean())
            out[f"{label} x_T SSIM"] = float(ssim(decoded, images).mean())
    return out


def train_diffae(
    train: ImageTable,
    model_config: DiffAEConfig,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    held: ImageTable | None = None,
    init: Mapping[str, torch.Tensor] | None = None,
    where: Distributed = SINGLE,
) -> TrainResult:
    """Train (or, with ``resume``, continue) a diffusion autoencoder on ``train``.

    ``init`` warm-starts a new run from weights of the same architecture (an earlier
    model or checkpoint); a resumed run ignores it and continues from its checkpoint.
    ``where`` is this process's rank and device under ``torchrun`` (one CPU process by
    default); the batch is read on CPU and moved to the model's device.
    With ``held``, the result's metrics are the held-out loss and :func:`reconstruction`
    of the first held-out images (EMA weights, ``RECON_STEPS`` DDIM steps).
    """
    seed_everything(config.seed)
    model = DiffAE(model_config)

    def step_loss(net: nn.Module, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        assert isinstance(net, DiffAE)
        device = next(net.parameters()).device
        labels = (None if t is None else t.to(device) for t in _labels(net, train, indices))
        return net.loss(train.batch(indices).to(device), gen, *labels)

    def evaluate(ema: nn.Module) -> dict[str, float]:
        assert isinstance(ema, DiffAE)
        if held is None:
            return {}
        images = held.batch(torch.arange(min(len(held), RECON_SAMPLES)))
        return {"held-out loss": heldout_loss(ema, held), **reconstruction(ema, images)}

    run_config = {"model": model_config.to_dict(), "data": train.uri, "n": len(train)}
    trainer = Trainer(model, step_loss, len(train), config, checkpoint_dir, run_config, where)
    if init is not None:
        fresh = trainer.warm_start(init)
        if fresh:
            log.info("warm start: new parameters start fresh: %s", ", ".join(fresh))
    return trainer.run(resume=resume, evaluate=evaluate)


def encode_table(model: DiffAE, table: ImageTable, batch: int = 256) -> torch.Tensor:
    """Codes of every image of ``table`` (N, z_dim)."""
    codes = []
    with torch.no_grad():
        for start in range(0, len(table), batch):
            codes.append(
                model.encode(table.batch(torch.arange(start, min(start + batch, len(table)))))
            )
    return torch.cat(codes)
