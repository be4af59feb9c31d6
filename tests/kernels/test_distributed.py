"""Data-parallel training under torchrun, in real processes (2 gloo ranks on CPU).

- a toy regression without random draws: 2 ranks end with the weights of one process taking
  the same global batches (to float rounding), and only rank 0 writes checkpoints;
- ``veil train diffae`` on 2 ranks: a loss curve close to one process's, one store entry
  written and printed by rank 0 alone;
- a worker SIGKILLed after the first checkpoint: ``--max-restarts 1`` restarts the ranks,
  they resume from the latest checkpoint, and the entry records the resume.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from services.common.errors import InvalidArgument
from services.kernels.manifests import StoreReader
from services.kernels.training import TrainConfig, Trainer
from services.kernels.training.distributed import Distributed
from services.kernels.training.loop import checkpoints
from services.unlearning.trained import TrainedStore

REPO = Path(__file__).resolve().parents[2]
DATA = "synthfaces://?n=32&seed=0"
TINY = ["--resolution", "16", "--z-dim", "8", "--encoder-channels", "16",
        "--unet-channels", "16,16", "--threads", "1", "--no-progress", "--data", DATA]  # fmt: skip
TOY = """
import sys, torch
from torch import nn
from torch.nn import functional as F
from services.kernels.training import TrainConfig, Trainer
from services.kernels.training.distributed import init_from_env, teardown
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
teardown(where)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _torchrun(*args: str, logs: Path | None = None, restarts: int = 0) -> list[str]:
    """A ``torchrun`` of 2 local workers on a free port; with ``logs``, each rank's stdout
    and stderr go to ``logs/<run id>/attempt_<k>/<rank>/``."""
    where = ["--log-dir", str(logs), "--redirects", "3"] if logs else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "--max-restarts", str(restarts), *where, *args]  # fmt: skip


def _run(argv: list[str], tmp: Path) -> None:
    done = subprocess.run(argv, cwd=tmp, env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def _veil_train(out: Path, *extra: str, register: str = "") -> list[str]:
    """``veil train diffae`` of the tiny model into ``out``; ``register``: the registry's
    database URL (none: ``--no-register``)."""
    where = ["--registry-url", register] if register else ["--no-register"]
    return ["-m", "services.cli", "train", "diffae", *TINY, *where, "--out", str(out / "store"),
            "--checkpoint-dir", str(out / "ckpt"), "--cache-dir", str(out / "cache"),
            *extra]  # fmt: skip


def _curve(ckpt: Path) -> list[float]:
    return list(torch.load(checkpoints(ckpt)[-1], weights_only=True)["losses"])


def _rank_output(logs: Path, rank: int) -> str:
    return "".join(p.read_text() for p in sorted(logs.glob(f"*/attempt_*/{rank}/stdout.log")))


def test_two_ranks_take_the_global_batches_of_one_process(tmp_path: Path) -> None:
    """No random draws in the loss: DDP's mean of the two slices' gradients is the gradient
    of the global batch, so the weights agree to float rounding (atol 1e-5 after 12 Adam
    steps); checkpoints come from rank 0 alone (each rank was given its own directory)."""
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    _run([sys.executable, str(script), str(tmp_path / "one")], tmp_path)
    _run(_torchrun(str(script), str(tmp_path / "two")), tmp_path)
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
    _run([sys.executable, *_veil_train(tmp_path / "one", *steps)], tmp_path)
    logs = tmp_path / "logs"
    _run(_torchrun(*_veil_train(tmp_path / "two", *steps), logs=logs), tmp_path)
    one, two = _curve(tmp_path / "one" / "ckpt"), _curve(tmp_path / "two" / "ckpt")
    assert len(one) == len(two) == 8
    mean_one, mean_two = sum(one) / 8, sum(two) / 8
    assert abs(mean_two - mean_one) <= 0.2 * mean_one, (one, two)
    manifest = StoreReader(tmp_path / "two" / "store").manifest("diffae")
    assert manifest.version == 1 and manifest.metrics["ranks"] == 2
    assert manifest.metrics["steps"] == 8 and "--batch-size 16" in manifest.command
    assert _rank_output(logs, 0).count("trained diffae →") == 1
    assert _rank_output(logs, 1) == ""
    assert [p.name for p in checkpoints(tmp_path / "two" / "ckpt")] == [
        "ckpt-00000004.pt", "ckpt-00000008.pt",
    ]  # fmt: skip


def _workers(parent: int) -> list[int]:
    """The worker processes torchrun ``parent`` started (children in /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return sorted(found)


def _wait_for_checkpoint(ckpt: Path, job: subprocess.Popen[str], limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not checkpoints(ckpt) if ckpt.exists() else True:
        assert job.poll() is None, "torchrun ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_a_killed_rank_is_restarted_and_resumes_from_the_last_checkpoint(
    tmp_path: Path,
) -> None:
    out, logs = tmp_path / "run", tmp_path / "logs"
    registry = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    argv = _torchrun(*_veil_train(out, "--steps", "40", "--batch-size", "4",
                                  "--checkpoint-every", "5", register=registry),
                     logs=logs, restarts=1)  # fmt: skip
    job = subprocess.Popen(argv, cwd=tmp_path, env=_env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _wait_for_checkpoint(out / "ckpt", job)
        workers = _workers(job.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        output, _ = job.communicate(timeout=150)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-4000:]
    assert list(logs.glob("*/attempt_1")), "torchrun did not restart the workers"
    manifest = StoreReader(out / "store").manifest("diffae")
    resumed = manifest.metrics["resumed from"]
    assert manifest.version == 1 and manifest.metrics["steps"] == 40
    assert 5 <= resumed < 40 and resumed % 5 == 0
    assert (_rank_output(logs, 0) + _rank_output(logs, 1)).count("trained diffae →") == 1
    # Registered once, by rank 0, as what the store holds (version 1, its lineage).
    trained = TrainedStore(registry)
    try:
        (record,) = trained.trained_versions("diffae")
    finally:
        trained.close()
    assert record.number == 1 and record.lineage["sha256"] == manifest.sha256
    assert record.lineage["data"] == DATA
