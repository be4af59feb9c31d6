"""Data-parallel training across processes (PyTorch DDP), started by ``torchrun``.

One process is the default and needs nothing from here: :data:`SINGLE` is rank 0 of a
world of 1, and the :class:`~services.kernels.training.loop.Trainer` then runs exactly as
it always did. Under ``torchrun --nproc-per-node N`` every worker reads its rank from the
environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins one process group: NCCL when CUDA is available, gloo on CPU.

Why not ``torch.utils.data.DistributedSampler``: it shuffles per epoch from its own seed,
so a run resumed mid-epoch, or on another number of ranks, takes other batches. Here every
rank draws the step's *global* batch from the step's generator, seeded by (seed, step), and
keeps the slice ``indices[rank::world]`` (:func:`shard`): N ranks take the same global
batches as one process, and a resumed run takes exactly the steps an uninterrupted one
would, whatever the world size before and after.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import distributed as dist
from torch import nn

from services.common.errors import InvalidArgument

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank in a world of ``world`` processes, and the
    device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, prints and writes the store entry."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether a process group joins several processes."""
        return self.world > 1


SINGLE = Distributed()


def _device(local_rank: int, cuda: bool) -> torch.device:
    if cuda and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return CPU


def init_from_env(cuda: bool = True) -> Distributed:
    """Join the process group torchrun describes in the environment; without torchrun (no
    ``WORLD_SIZE``) or with a world of 1, no group is made and training stays as it was
    on CPU. With CUDA (and ``cuda``), the process computes on ``cuda:LOCAL_RANK``;
    ``cuda=False`` keeps a model on CPU (gloo) on a GPU machine too."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(local, cuda)
    if world <= 1:
        return Distributed(device=device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=_store(rank, world), rank=rank, world_size=world)
    return Distributed(rank, world, local, device)


def _store(rank: int, world: int) -> dist.Store:
    """torchrun's store (``MASTER_ADDR:MASTER_PORT``: the agent's, or rank 0's without an
    agent store), its keys prefixed by the restart count. The agent keeps one store across
    restarts, so without the prefix a restarted rank may read the gloo address a killed
    rank left there and fail with "connection refused" (seen with ``--standalone``)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ.get("MASTER_ADDR", "127.0.0.1"),
        int(os.environ.get("MASTER_PORT", "29500")),
        world,
        is_master=rank == 0 and not agent,
        multi_tenant=True,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"veil/attempt_{attempt}/", store)


def restarted() -> bool:
    """Whether torchrun restarted the workers after a failure (``--max-restarts``): the
    run then resumes from its latest checkpoint instead of starting over."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def local_world() -> int:
    """Workers on this machine: each takes its share of the cores for its torch threads."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def barrier(where: Distributed) -> None:
    if where.enabled and dist.is_initialized():
        dist.barrier()


def teardown(where: Distributed) -> None:
    """Leave the process group (idempotent)."""
    if where.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first(where: Distributed) -> Iterator[None]:
    """Rank 0 runs the block first, the others after it: e.g. a dataset cache that rank 0
    writes and the others then read, rather than all writing one file at once."""
    if not where.is_main:
        barrier(where)
    yield
    if where.is_main:
        barrier(where)


def check_batch(batch_size: int, where: Distributed) -> None:
    if batch_size % where.world:
        raise InvalidArgument(
            f"the batch size ({batch_size}) is the global batch, split evenly over the"
            f" {where.world} ranks: it must be divisible by {where.world}"
        )


def shard(indices: torch.Tensor, where: Distributed) -> torch.Tensor:
    """This rank's part of the global batch ``indices``: every ``world``-th index from
    ``rank`` (so N ranks together take exactly the global batch)."""
    return indices[where.rank :: where.world]


def rank_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of the draws inside a rank's loss (noise, timesteps, flips), from
    (seed, step, rank): each rank draws for its own slice, differently from the others, and
    a resumed run draws the same again. (One process keeps the step generator itself.)"""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank + 1)


def mean_across(value: torch.Tensor, where: Distributed) -> float:
    """The mean of a scalar over the ranks: the loss of the global batch (its slices are
    of equal size), so the recorded curve is comparable with one process's."""
    if not where.enabled:
        return float(value)
    total = value.detach().reshape(1).to(torch.float32).clone()
    dist.all_reduce(total)
    return float(total) / where.world


def same_on_all(step: int, where: Distributed) -> int:
    """Rank 0's ``step``, after checking every rank has the same (they all resumed from
    the same checkpoint)."""
    if not where.enabled:
        return step
    steps: list[int] = [0] * where.world
    dist.all_gather_object(steps, step)
    if len(set(steps)) != 1:
        raise RuntimeError(f"the ranks resumed from different steps: {steps}")
    return step


class _StepLoss(nn.Module):
    """The model with its loss as ``forward``: DDP synchronises the gradients of what its
    forward computed, and a model's loss is a method (``DiffAE.loss``), not its forward."""

    def __init__(self, model: nn.Module, step_loss: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model, self.step_loss = model, step_loss

    def forward(self, indices: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.step_loss(self.model, indices, gen)


def data_parallel(
    model: nn.Module, step_loss: Callable[..., torch.Tensor], where: Distributed
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``(indices, generator) → loss`` of ``model``: wrapped in DDP when several ranks train
    (gradients averaged over the ranks in backward), the plain loss otherwise. The model
    itself stays unwrapped, for the EMA, the checkpoints and the result."""
    if not where.enabled:
        return lambda indices, gen: step_loss(model, indices, gen)
    return nn.parallel.DistributedDataParallel(_StepLoss(model, step_loss))
