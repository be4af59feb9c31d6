"""Fast protection against FMD: time per image, what the authorized model keeps, how far the
features move, and (where the store has them) what unauthorized task models keep.

    python -m bench.protector [--threads 1] [--images 512] [--fmd-images 64]

Both run at batch 16 on the same fresh faces (a seed no model was trained on), against the
packaged ``task-resnet``: FMD with the paper's setting (ε = 16/255, α = 4/255, 100 steps,
λ = 1) on the first ``--fmd-images``, the generator on all ``--images``. Times are taken on
the first ``--fmd-images``, batch by batch in turn (the generator's as the median of five
runs), so that the load of a shared machine weighs on both alike. Feature distortion
is the MSE at the generator's feature layer (FMD's default layer, ``penultimate``). The fast
time is what ``veil_protector`` does per request: the generator's pass and the two forward
passes of the authorized model that measure the distortion; the generator alone is shown too.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from services.kernels import fmd
from services.kernels.classifiers import Classifier
from services.kernels.models import load_classifier, load_protector
from services.kernels.protector import protect_fast
from services.kernels.store import ModelStore
from services.kernels.training.data import load_table

FRESH = "synthfaces://?n={n}&seed=7"
BATCH = 16


Run = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _batched(run: Run, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, distortions) of ``run`` over ``x`` in batches of 16."""
    parts = [run(x[start : start + BATCH]) for start in range(0, len(x), BATCH)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _seconds(run: Run, batch: torch.Tensor, repeats: int) -> float:
    took = []
    for _ in range(repeats):
        began = time.perf_counter()
        run(batch)
        took.append(time.perf_counter() - began)
    return statistics.median(took)


def _paired_times(
    runs: Sequence[tuple[Run, int]], x: torch.Tensor, batch: int = BATCH
) -> list[float]:
    """Seconds per image of each run (median of its repeats per batch), timed batch by batch
    in turn, so that a shared machine's load swings hit every run alike."""
    totals = [0.0] * len(runs)
    for start in range(0, len(x), batch):
        for i, (run, repeats) in enumerate(runs):
            totals[i] += _seconds(run, x[start : start + batch], repeats)
    return [t / len(x) for t in totals]


def _accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).float().mean())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protector", description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--fmd-images", type=int, default=64)
    parser.add_argument("--protector", default="protector")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    store = ModelStore()
    protector = load_protector(args.protector, store)
    model = load_classifier(protector.config.authorized, store)
    layer = protector.config.feature_layer
    table = load_table(FRESH.format(n=args.images), protector.config.resolution, cache_dir=None)
    x, y = table.batch(torch.arange(len(table))), table.tasks
    k = args.fmd_images

    def run_fmd(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, stats = fmd.protect(model, batch, feature_layer=layer)
        return out, stats.feature_distortion

    def run_generator(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return protector(batch), torch.zeros(len(batch))

    def run_fast(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return protect_fast(protector, model, batch)

    run_fast(x[:BATCH])  # warm-up: first calls allocate
    fast_x, fast_d = _batched(run_fast, x)
    fast_s, generator_s, fmd_s = _paired_times(
        [(run_fast, 5), (run_generator, 5), (run_fmd, 1)], x[:k]
    )
    fmd_x, fmd_d = _batched(run_fmd, x[:k])
    linf = [float((a - b).abs().max()) * 127.5 for a, b in ((fast_x, x), (fmd_x, x[:k]))]
    clean = [_accuracy(model, x, y), _accuracy(model, x[:k], y[:k])]
    kept = [_accuracy(model, fast_x, y), _accuracy(model, fmd_x, y[:k])]
    moved = [float(fast_d.mean()), float(fast_d[:k].mean()), float(fmd_d.mean())]
    rows = [
        ("per image (batch 16)", f"{fast_s * 1e3:.2f} ms", f"{fmd_s * 1e3:.1f} ms"),
        ("speed-up", f"{fmd_s / fast_s:.0f}x", "1x"),
        ("per image, generator alone", f"{generator_s * 1e3:.2f} ms", "-"),
        ("speed-up, generator alone", f"{fmd_s / generator_s:.0f}x", "-"),
        ("authorized accuracy, original", f"{clean[0]:.4f}", f"{clean[1]:.4f}"),
        ("authorized accuracy, protected", f"{kept[0]:.4f}", f"{kept[1]:.4f}"),
        ("feature distortion (all)", f"{moved[0]:.3f}", "-"),
        (f"feature distortion (first {k})", f"{moved[1]:.3f}", f"{moved[2]:.3f}"),
        ("max abs(x* - x), in 1/255", f"{linf[0]:.2f}", f"{linf[1]:.2f}"),
    ]
    for manifest in store.list():
        if manifest.kind == "classifier" and manifest.config.get("role") == "unauthorized":
            other = load_classifier(manifest.name, store)
            rows.append(
                (
                    f"{manifest.name} accuracy: original → protected",
                    f"{_accuracy(other, x, y):.3f} → {_accuracy(other, fast_x, y):.3f}",
                    f"{_accuracy(other, x[:k], y[:k]):.3f} → {_accuracy(other, fmd_x, y[:k]):.3f}",
                )
            )
    print(f"fast protection ({args.protector}) vs FMD, {args.threads} thread(s)")
    print(f"| figure | fast ({len(x)} images) | FMD 100 steps ({k} images) |")
    print("|---|---|---|")
    for name, fast, slow in rows:
        print(f"| {name} | {fast} | {slow} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
