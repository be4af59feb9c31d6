"""One training loop for every model here: seeded, resumable, with EMA and checkpoints.

Reproducibility is by construction: the batch indices and every random draw of step
``s`` come from a generator seeded by (seed, s), so a run resumed from a checkpoint at
step N takes exactly the steps an uninterrupted run would (same weights bit for bit on
the same machine and thread count). The global RNG states are checkpointed too, for
any code (dropout) that draws from them.

Under ``torchrun`` the same loop runs data-parallel (:mod:`.distributed`): every rank
draws the step's global batch (``batch_size``) and trains on its slice, DDP averages the
gradients, and rank 0 alone writes checkpoints and shows progress. The EMA, the
checkpoints and the result hold the unwrapped model, on CPU once training ends.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from services.common.errors import FailedPrecondition, InvalidArgument
from services.kernels.training import distributed
from services.kernels.training.distributed import SINGLE, Distributed
from services.kernels.training.ema import EMA

StepLoss = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]
"""(model, batch indices, generator of this step) → scalar loss."""
Evaluate = Callable[[nn.Module], Mapping[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    seed: int = 0
    threads: int = 2
    grad_clip: float | None = 1.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress: bool = True
    amp: bool = False
    """bfloat16 autocast of the loss on CUDA (refused on CPU, where it is slower)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: nn.Module
    """The trained model (last iterate)."""
    ema: nn.Module
    """The EMA of its weights: use it to sample and evaluate."""
    steps: int
    wall_s: float
    """Training time of every step so far, summed over resumed runs."""
    final_loss: float
    resumed_from: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    session_s: float = 0.0
    """Training time of this run alone (since the resume)."""

    def summary(self) -> dict[str, object]:
        done = self.steps - self.resumed_from
        rows: dict[str, object] = {
            "steps": self.steps,
            "resumed from": self.resumed_from,
            "wall time (s)": round(self.wall_s, 1),
            "s/step": round(self.session_s / done, 3) if done else "-",
            "final loss": round(self.final_loss, 5),
        }
        rows.update({k: round(v, 4) for k, v in self.metrics.items()})
        return rows


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``: independent of how the run was split."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _rng_state() -> dict[str, Any]:
    state: Any = np.random.get_state()
    kind, keys, pos, has_gauss, gauss = state
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": list(random.getstate()),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first."""
    return sorted(directory.glob("ckpt-*.pt"))


class Trainer:
    """Runs :class:`TrainConfig` on ``model`` with ``step_loss``; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        step_loss: StepLoss,
        num_samples: int,
        config: TrainConfig,
        checkpoint_dir: str | Path | None = None,
        run_config: Mapping[str, Any] | None = None,
        where: Distributed = SINGLE,
    ) -> None:
        self.model, self.step_loss, self.num_samples = (
            model.to(where.device),
            step_loss,
            num_samples,
        )
        self.where = where
        """This process's rank, world and device (one process on CPU by default)."""
        self.config = config
        self.dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.run_config = dict(run_config or {})
        """What must match on resume (model config, data): a mismatch is refused."""
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.ema = EMA(model, config.ema_decay)
        self.step = 0
        self.losses: list[float] = []
        self.wall_before = 0.0
        """Wall time of the steps taken before the last resume (from the checkpoint)."""
        self._began = time.perf_counter()
        self._loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
        """The step's loss, through DDP when several ranks train (set by :meth:`run`)."""

    def warm_start(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        """Start from ``state`` (weights of an earlier model of this architecture): the
        weights and their EMA are set; the optimizer and the step count start fresh.

        Modules the earlier model did not have (e.g. a new training head) keep their fresh
        initialisation; their parameter names are returned. Weights the model has no place
        for, or of another shape, are refused.
        """
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise FailedPrecondition(f"warm start: the weights do not fit: {exc}") from None
        if unexpected:
            raise FailedPrecondition(
                f"warm start: the weights have parameters this model lacks: {unexpected[:5]}"
            )
        self.ema = EMA(self.model, self.config.ema_decay)
        return list(missing)

    def resume(self) -> int:
        """Load the latest checkpoint, if any; returns the step it was taken at."""
        found = checkpoints(self.dir) if self.dir is not None else []
        if not found:
            return 0
        state = torch.load(found[-1], map_location="cpu", weights_only=True)
        if state["run_config"] != self.run_config:
            raise FailedPrecondition(
                f"checkpoint {found[-1]} was made with a different model or data config",
                details={"checkpoint": state["run_config"], "requested": self.run_config},
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.losses = int(state["step"]), list(state["losses"])
        self.wall_before = float(state.get("wall_s", 0.0))
        _set_rng_state(state["rng"])
        return self.step

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint (all ranks hold the same weights); the others none."""
        if self.dir is None or not self.where.is_main:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"ckpt-{self.step:08d}.pt"
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "losses": self.losses[-100:],
            "rng": _rng_state(),
            "wall_s": self.wall_before + time.perf_counter() - self._began,
            "run_config": self.run_config,
            "train_config": self.config.to_dict(),
            "world": self.where.world,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        for old in checkpoints(self.dir)[: -self.config.keep_checkpoints]:
            old.unlink()
        return path

    def run(self, resume: bool = False, evaluate: Evaluate | None = None) -> TrainResult:
        cfg = self.config
        self._check()
        torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        start = distributed.same_on_all(self.resume() if resume else 0, self.where)
        self.model.train()
        self._loss = distributed.data_parallel(self.model, self.step_loss, self.where)
        self._began = time.perf_counter()
        quiet = not cfg.progress or not self.where.is_main
        bar = tqdm(total=cfg.steps, initial=start, disable=quiet, unit="step", smoothing=0.1)
        while self.step < cfg.steps:
            self._one_step()
            bar.update(1)
            bar.set_postfix(loss=f"{self.losses[-1]:.4f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        if self.dir is not None and (not cfg.checkpoint_every or self.step % cfg.checkpoint_every):
            self.save_checkpoint()
        session = time.perf_counter() - self._began
        tail = self.losses[-50:]
        self.model.cpu()
        self.ema.model.cpu()
        evaluate = evaluate if self.where.is_main else None  # its figures go to rank 0's entry
        metrics = dict(evaluate(self.ema.model)) if evaluate is not None else {}
        return TrainResult(
            self.model,
            self.ema.model,
            self.step,
            self.wall_before + session,
            float(np.mean(tail)) if tail else float("nan"),
            start,
            metrics,
            session,
        )

    def _check(self) -> None:
        distributed.check_batch(self.config.batch_size, self.where)
        if self.config.amp and self.where.device.type != "cuda":
            raise InvalidArgument("amp (bfloat16 autocast) trains on CUDA only; none is here")

    def _one_step(self) -> None:
        """One optimizer step on the step's global batch; with several ranks, this rank's
        slice of it, its own draws from (seed, step, rank) (:mod:`.distributed`)."""
        seed, where = self.config.seed, self.where
        gen = step_generator(seed, self.step)
        indices = torch.randint(self.num_samples, (self.config.batch_size,), generator=gen)
        if where.enabled:
            indices = distributed.shard(indices, where)
            gen = distributed.rank_generator(seed, self.step, where.rank)
        with torch.autocast(where.device.type, torch.bfloat16, enabled=self.config.amp):
            loss = self._loss(indices, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        self.losses.append(distributed.mean_across(loss.detach(), where))


def format_table(rows: Mapping[str, object], title: str = "") -> str:
    """A two-column text table, for the end of a run."""
    width = max((len(k) for k in rows), default=0)
    lines = [title] if title else []
    lines += [f"  {key:<{width}}  {value}" for key, value in rows.items()]
    return "\n".join(lines)
