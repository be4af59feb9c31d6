"""``torchrun`` of ``veil train`` in real processes (2 gloo workers on CPU), for the tests
of distributed training (``tests/kernels/test_distributed.py``) and of a trained model's
way to a live sanitizer (``tests/sanitizer/test_following.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.kernels.training.loop import checkpoints

REPO = Path(__file__).resolve().parents[2]
DATA = "synthfaces://?n=32&seed=0"
TINY = ["--resolution", "16", "--z-dim", "8", "--encoder-channels", "16",
        "--unet-channels", "16,16", "--threads", "1", "--no-progress", "--data", DATA]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def torchrun(*args: str, logs: Path | None = None, restarts: int = 0) -> list[str]:
    """A ``torchrun`` of 2 local workers on a free port; with ``logs``, each rank's stdout
    and stderr go to ``logs/<run id>/attempt_<k>/<rank>/``."""
    where = ["--log-dir", str(logs), "--redirects", "3"] if logs else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", "2", "--max-restarts", str(restarts), *where, *args]  # fmt: skip


def run(argv: list[str], tmp: Path) -> None:
    done = subprocess.run(argv, cwd=tmp, env=env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def veil_train(out: Path, *extra: str, register: str = "") -> list[str]:
    """``veil train diffae`` of the tiny model into the store ``out/store``; ``register``:
    the registry's database URL (none: ``--no-register``)."""
    where = ["--registry-url", register] if register else ["--no-register"]
    return ["-m", "services.cli", "train", "diffae", *TINY, *where, "--out", str(out / "store"),
            "--checkpoint-dir", str(out / "ckpt"), "--cache-dir", str(out / "cache"),
            *extra]  # fmt: skip


def rank_output(logs: Path, rank: int) -> str:
    return "".join(p.read_text() for p in sorted(logs.glob(f"*/attempt_*/{rank}/stdout.log")))


def workers(parent: int) -> list[int]:
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


def wait_for_checkpoint(ckpt: Path, job: subprocess.Popen[str], limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not checkpoints(ckpt) if ckpt.exists() else True:
        assert job.poll() is None, "torchrun ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


def killed_once(out: Path, logs: Path, registry: str, *extra: str) -> str:
    """``veil train diffae`` (40 steps of 4, a checkpoint every 5) on 2 ranks under
    ``torchrun --max-restarts 1``, one worker SIGKILLed after the first checkpoint; it
    must end well after the restart. Registered in the database ``registry``; the output."""
    argv = torchrun(*veil_train(out, "--steps", "40", "--batch-size", "4",
                                "--checkpoint-every", "5", *extra, register=registry),
                    logs=logs, restarts=1)  # fmt: skip
    job = subprocess.Popen(argv, cwd=out.parent, env=env(), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_checkpoint(out / "ckpt", job)
        found = workers(job.pid)
        assert len(found) == 2, found
        os.kill(found[-1], signal.SIGKILL)
        output, _ = job.communicate(timeout=150)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, output[-4000:]
    assert list(logs.glob("*/attempt_1")), "torchrun did not restart the workers"
    return output
