"""Data-parallel training under torchrun, in real processes (2 gloo ranks on CPU).

- a toy regression without random draws: 2 ranks end with the weights of one process taking
  the same global batches (to float rounding), and only rank 0 writes checkpoints;
- ``veil train diffae`` on 2 ranks: a loss curve close to one process's, one store entry
  written and printed by rank 0 alone.

A worker SIGKILLed after the first checkpoint (``--max-restarts 1`` restarts the ranks,
they resume from the latest checkpoint, rank 0 registers the result once) is the first
half of ``tests/sanitizer/test_following.py``, which then serves that model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from services.common.errors import InvalidArgument
from services.kernels.manifests import StoreReader
from services.kernels.training import TrainConfig, Trainer
from services.kernels.training.distributed import Distributed
from services.kernels.training.loop import checkpoints
from tests.support.torchrun import rank_output, run, torchrun, veil_train

TOY = """
import sys, torch
from torch import nn
from torch.nn import functional as F
from services.kernels.training import TrainConfig, Trainer
from services.kernels.training.distributed import barrier, init_from_env, teardown
where = init_from_env()
gen = torch.Generator().manual_seed(1)
x, y = torch.randn(32, 5, generator=gen), torch.randn(32, 1, generator=gen)
def loss(net, idx, g):
    assert len(idx) == 8 // where.world  # this rank's slice of the global batch of 8
    return F.mse_loss(net(x[idx]), y[idx])
torch.manual_seed(0)
cfg = TrainConfig(steps=12, batch_size=8, lr=0.05, threads=1, checkpoint_every=4,
                  progress=False)
out = sys.argv[1]
result = Trainer(nn.Linear(5, 1), loss, 32, cfg, f"{out}/ckpt-rank{where.rank}",
                 where=where).run()
if where.is_main:
    torch.save(result.model.state_dict(), f"{out}/weights.pt")
barrier(where)  # leave together, as `veil train` does: a rank that destroys its process
teardown(where)  # group while the other still writes aborted 1 run in 17 (2026-12-07)
"""


def _curve(ckpt: Path) -> list[float]:
    return list(torch.load(checkpoints(ckpt)[-1], weights_only=True)["losses"])


def test_two_ranks_take_the_global_batches_of_one_process(tmp_path: Path) -> None:
    """No random draws in the loss: DDP's mean of the two slices' gradients is the gradient
    of the global batch, so the weights agree to float rounding (atol 1e-5 after 12 Adam
    steps); checkpoints come from rank 0 alone (each rank was given its own directory)."""
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    run([sys.executable, str(script), str(tmp_path / "one")], tmp_path)
    run(torchrun(str(script), str(tmp_path / "two")), tmp_path)
    one = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "weights.pt", weights_only=True)
    start = nn.Linear(5, 1).state_dict()  # not what either ended with
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=1e-5), name
        assert not torch.allclose(value, start[name], atol=1e-3)
    saved = [p.name for p in checkpoints(tmp_path / "two" / "ckpt-rank0")]
    assert saved == ["ckpt-00000008.pt", "ckpt-00000012.pt"]
    assert not (tmp_path / "two" / "ckpt-rank1").exists()
    state = torch.load(tmp_path / "two" / "ckpt-rank0" / saved[-1], weights_only=True)
    assert state["world"] == 2
    curve_one = _curve(tmp_path / "one" / "ckpt-rank0")
    assert torch.allclose(torch.tensor(curve_one), torch.tensor(state["losses"]), atol=1e-5)


def test_a_batch_the_ranks_cannot_split_evenly_is_refused() -> None:
    trainer = Trainer(
        nn.Linear(2, 1),
        lambda net, idx, gen: net(torch.zeros(len(idx), 2)).sum(),
        8,
        TrainConfig(steps=1, batch_size=4, progress=False),
        where=Distributed(rank=0, world=3),
    )
    with pytest.raises(InvalidArgument, match="divisible by 3"):
        trainer.run()


def test_veil_train_diffae_on_two_ranks_follows_one_process(tmp_path: Path) -> None:
    """The same 8 global batches of 16: the loss of each step differs with the draws of
    noise and timesteps (each rank draws from (seed, step, rank)), so the curves agree in
    their mean within 20% (measured 2026-12-07: about 9% at batch 4, less at 16), not
    step by step. Rank 0 alone prints, writes the entry (version 1) and checkpoints."""
    steps = ["--steps", "8", "--batch-size", "16", "--checkpoint-every", "4"]
    run([sys.executable, *veil_train(tmp_path / "one", *steps)], tmp_path)
    logs = tmp_path / "logs"
    run(torchrun(*veil_train(tmp_path / "two", *steps), logs=logs), tmp_path)
    one, two = _curve(tmp_path / "one" / "ckpt"), _curve(tmp_path / "two" / "ckpt")
    assert len(one) == len(two) == 8
    mean_one, mean_two = sum(one) / 8, sum(two) / 8
    assert abs(mean_two - mean_one) <= 0.2 * mean_one, (one, two)
    manifest = StoreReader(tmp_path / "two" / "store").manifest("diffae")
    assert manifest.version == 1 and manifest.metrics["ranks"] == 2
    assert manifest.metrics["steps"] == 8 and "--batch-size 16" in manifest.command
    assert rank_output(logs, 0).count("trained diffae →") == 1
    assert rank_output(logs, 1) == ""
    assert [p.name for p in checkpoints(tmp_path / "two" / "ckpt")] == [
        "ckpt-00000004.pt", "ckpt-00000008.pt",
    ]  # fmt: skip
