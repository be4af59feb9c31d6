"""The owner's classifier on fresh faces through real image pipelines (issue #26, item 1).

    python -m bench.owner_robustness [--store old=/tmp/old-store] [--name task-resnet]

Accuracy of ``--name`` from each store (default: the packaged one) on faces of a seed no
model was trained on, clean and after each real operation of :mod:`services.kernels.pipeline`
(Pillow's JPEG and resizes, an exact shift). One thread, CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from services.kernels import pipeline
from services.kernels.models import load_classifier
from services.kernels.store import ModelStore
from services.kernels.training.classifier import accuracy, labels_for
from services.kernels.training.data import ImageTable, load_table

FRESH = "synthfaces://?n={n}&seed=7"
CASES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "clean": lambda x: x,
    "JPEG 90": lambda x: pipeline.jpeg(x, 90),
    "JPEG 75": lambda x: pipeline.jpeg(x, 75),
    "JPEG 50": lambda x: pipeline.jpeg(x, 50),
    "resize 0.5x bilinear": lambda x: pipeline.resize(x, 0.5, "bilinear"),
    "resize 0.5x bicubic": lambda x: pipeline.resize(x, 0.5, "bicubic"),
    "shift 2px": lambda x: pipeline.shift_approx(x, 2, 2),
}


def _through(table: ImageTable, case: Callable[[torch.Tensor], torch.Tensor]) -> ImageTable:
    """``table`` with its images passed through ``case`` (back to uint8)."""
    images = case(table.batch(torch.arange(len(table))))
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return dataclasses.replace(table, images=pixels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", action="append", default=[], metavar="LABEL=DIR")
    parser.add_argument("--name", default="task-resnet")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stores = dict(s.split("=", 1) for s in args.store) or {"packaged": ""}
    table = load_table(FRESH.format(n=args.images), 32, cache_dir=None)
    models = {label: load_classifier(args.name, ModelStore(Path(d) if d else None))
              for label, d in stores.items()}  # fmt: skip
    labels = labels_for(table, next(iter(models.values())).config)
    print(f"{args.name} on {FRESH.format(n=args.images)}: accuracy")
    print(f"{'pipeline':22}" + "".join(f"{label:>10}" for label in models))
    for case, op in CASES.items():
        seen = _through(table, op)
        row = [accuracy(model, seen, labels) for model in models.values()]
        print(f"{case:22}" + "".join(f"{acc:10.3f}" for acc in row))


if __name__ == "__main__":
    main()
