"""What a sanitizer's swap to another encoder costs (``services.sanitizer.following``).

    .venv/bin/python -m bench.following [--rounds 5]

On the in-process backend, for the packaged DiffAE copied to a second store entry (as a
kept registration ``diffae-r2`` is): ``load_diffae`` builds the encoder and decoder of the
entry, weights checked against their SHA-256, while the old model still serves;
``use_diffae`` is the switch itself, the only part made while requests wait (besides the
calls in flight finishing). It prints the median of ``--rounds`` swaps back and forth. It
does not measure the probes' and domain's loading (numpy reads, done beside the kernels'
build) nor a Triton backend, which cannot swap.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from services.inference.backend import SANITIZER_MODELS, InferenceSettings
from services.inference.local import LocalBackend
from services.kernels.manifests import DEFAULT_ROOT


async def measure(rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for entry in ("diffae", "diffae-r2"):
            shutil.copytree(DEFAULT_ROOT / "diffae", root / entry)
        backend = LocalBackend(InferenceSettings(store=root, models=list(SANITIZER_MODELS)))
        try:
            await backend.encode(np.zeros((1, 3, 32, 32), np.float32))
            loads, uses = [], []
            for i in range(rounds):
                entry = "diffae-r2" if i % 2 == 0 else "diffae"
                start = time.perf_counter()
                await backend.load_diffae(entry)
                loaded = time.perf_counter()
                backend.use_diffae(entry)
                loads.append(loaded - start)
                uses.append(time.perf_counter() - loaded)
        finally:
            await backend.close()
    return statistics.median(loads), statistics.median(uses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load, use = asyncio.run(measure(args.rounds))
    print("| step | median |")
    print("|---|---:|")
    print(f"| load_diffae (encoder + decoder built, weights checked) | {load * 1e3:.0f} ms |")
    print(f"| use_diffae (the switch, under the swap guard) | {use * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
