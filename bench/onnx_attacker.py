"""An outside attacker for ``bench.protection --attacker``: a MobileNet-style pose classifier,
trained here and exported to ONNX, so that the bench scores a model of an architecture that is
in no surrogate and not in ``services.kernels.classifiers``, read through onnxruntime only.

    python -m bench.onnx_attacker [--steps 1500] [--seed 41] [--threads 1]
        [--out bench/models/attacker-mobilenet.onnx]

The network (Howard et al. 2017, MobileNets, §3.1): a 3×3 stride-2 stem, then depthwise-separable
blocks (a depthwise 3×3 conv and a pointwise 1×1 conv, each with BatchNorm and ReLU6), 16 → 128
channels, downsampling by stride; a 2×2 average pool keeps where the features sit (the pose)
before the linear head. Unlike the project's models it reads ImageNet-normalised inputs
(``(x - mean) / std`` of [0, 1] pixels, the torchvision convention), so the bench must be told
so. Trained on ``synthfaces://?n=20000&seed=3`` (the unauthorized models' faces; pose labels)
less its last 5 % (held out), Adam lr 2e-3 with a cosine decay, batch 64, seed 41, one thread.

The committed ``bench/models/attacker-mobilenet.onnx`` came from::

    python -m bench.onnx_attacker --steps 1500 --threads 1

(1 500 steps, 364 s on one thread of a shared 2-core CPU machine, 0.24 s/step; 156 kB;
held-out accuracy through onnxruntime 0.967 on the 1 000 held-out faces of seed 3.) Score it
with::

    python -m bench.protection --attacker bench/models/attacker-mobilenet.onnx \\
        --model-labels pose --model-mean 0.485,0.456,0.406 --model-std 0.229,0.224,0.225
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from services.kernels.training.data import ImageTable, load_table

DATA = "synthfaces://?n=20000&seed=3"
OUT = Path(__file__).resolve().parent / "models" / "attacker-mobilenet.onnx"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HOLDOUT = 0.05
CHANNELS = ((16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1))
"""(in, out, stride) of each depthwise-separable block."""


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class MobileNet(nn.Module):
    """A small MobileNet v1: a stride-2 stem, depthwise-separable blocks, a 2×2 pool, a linear
    head."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        blocks = [
            nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1))
            for cin, cout, stride in CHANNELS
        ]
        self.body = nn.Sequential(_conv_bn(3, 16, 3, 2), *blocks, nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(4 * CHANNELS[-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def normalise(table: ImageTable, indices: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised [0, 1] pixels of ``indices``."""
    x = (table.batch(indices) + 1) / 2
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def train(table: ImageTable, steps: int, seed: int) -> MobileNet:
    torch.manual_seed(seed)
    net = MobileNet(table.num_task_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(table), (64,), generator=generator)
        optimizer.zero_grad()
        loss = F.cross_entropy(net(normalise(table, idx)), table.tasks[idx])
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    return net.eval()


def export(net: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, input_names=["image"],
        output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip


def onnx_accuracy(path: Path, table: ImageTable) -> float:
    """Accuracy of the exported file, run by onnxruntime (not by torch)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = normalise(table, torch.arange(len(table))).numpy().astype(np.float32)
    logits = session.run(None, {"image": x})[0]
    return float((logits.argmax(1) == table.tasks.numpy()).mean())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.onnx_attacker",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--seed", type=int, default=41)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fit, held = load_table(args.data, 32).split(HOLDOUT)
    began = time.perf_counter()
    net = train(fit, args.steps, args.seed)
    took = time.perf_counter() - began
    export(net, args.out)
    acc = onnx_accuracy(args.out, held)
    print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} kB; {args.steps} steps in {took:.0f} s "
          f"({took / args.steps:.3f} s/step); held-out accuracy (onnxruntime, "
          f"{len(held)} faces) {acc:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
