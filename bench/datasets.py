"""synthfaces throughput, label frequencies and attribute correlations, as tables.

    .venv/bin/python -m bench.datasets [--n 50000] [--batches 256,1024] [--grid out.png]

Throughput is measured on a few batches and extrapolated to ``--n`` images (pass
``--full`` to render all of them). Labels need no rendering, so the frequency and
correlation tables always cover all ``--n`` samples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from services.kernels.data.synthfaces import ALL_ATTRIBUTES, SynthFaces


def throughput(faces: SynthFaces, batch: int, repeats: int) -> float:
    """Images per second rendering ``repeats`` consecutive batches of ``batch``."""
    start = time.perf_counter()
    for r in range(repeats):
        faces.render(np.arange(r * batch, (r + 1) * batch) % len(faces))
    return batch * repeats / (time.perf_counter() - start)


def contact_sheet(faces: SynthFaces, path: Path, side: int = 8) -> None:
    """``side``×``side`` faces, upscaled 2× (nearest) so small cues stay visible."""
    from PIL import Image

    res = faces.resolution
    images = faces.render(np.arange(side * side))
    grid = images.reshape(side, side, res, res, 3).transpose(0, 2, 1, 3, 4)
    sheet = Image.fromarray(grid.reshape(side * res, side * res, 3))
    sheet.resize((2 * side * res,) * 2, Image.Resampling.NEAREST).save(path)
    rows = [faces.sample_ids[i] + " " + str(faces.sample(i).attributes) for i in range(side)]
    print(f"wrote {path}; first row:\n  " + "\n  ".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batches", default="256,1024")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="render all n images")
    parser.add_argument("--grid", type=Path, help="write an 8×8 contact sheet PNG here")
    args = parser.parse_args()

    start = time.perf_counter()
    faces = SynthFaces(n=args.n, seed=args.seed, resolution=args.resolution)
    print(f"labels for {args.n} samples: {time.perf_counter() - start:.2f} s\n")
    print(f"| batch | images/s | est. time for {args.n} at {args.resolution}px |")
    print("|---:|---:|---:|")
    for batch in map(int, args.batches.split(",")):
        rate = throughput(faces, batch, args.repeats)
        print(f"| {batch} | {rate:.0f} | {args.n / rate / 60:.1f} min |")
    if args.full:
        start = time.perf_counter()
        faces.materialize(block=1024)
        print(f"\nrendered all {args.n}: {time.perf_counter() - start:.1f} s")

    table = np.stack([faces.all_labels[name] for name in ALL_ATTRIBUTES], axis=1).astype(float)
    print("\n| label | mean |\n|---|---:|")
    for name, column in zip(ALL_ATTRIBUTES, table.T, strict=True):
        print(f"| {name} | {column.mean():.3f} |")
    print(f"| pose (task) | {np.bincount(faces.tasks, minlength=3) / len(faces)} |")

    corr = np.corrcoef(table.T)
    print("\nPearson correlations\n\n| | " + " | ".join(ALL_ATTRIBUTES) + " |")
    print("|---" * (len(ALL_ATTRIBUTES) + 1) + "|")
    for name, row in zip(ALL_ATTRIBUTES, corr, strict=True):
        print(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")
    if args.grid:
        contact_sheet(faces, args.grid)


if __name__ == "__main__":
    main()
