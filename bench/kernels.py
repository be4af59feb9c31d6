"""Model kernels: reconstruction, probe and classifier accuracy, decode time, edit grid.

    .venv/bin/python -m bench.kernels [--store DIR] [--data URI] [--n 64] [--steps 10,20,50]
                                      [--threads 2] [--grid out.png]

Reconstruction decodes encode(x) in ``--recon-steps`` DDIM steps from a fresh x_T (what
the sanitizer does) and from the DDIM-inverted x_T (an upper bound on fidelity). PSNR and
SSIM come from ``services.kernels.metrics`` (torch; SSIM with Wang et al.'s 11×11
Gaussian window, checked equal to scikit-image's ``structural_similarity`` with
``gaussian_weights=True, use_sample_covariance=False``). Evaluation images are a
synthfaces seed no model was trained on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from services.kernels.data import to_uint8
from services.kernels.diffae import DiffAE
from services.kernels.models import load_classifier, load_diffae, load_probes
from services.kernels.probes import ProbeSet
from services.kernels.store import ModelStore
from services.kernels.training.classifier import accuracy, labels_for
from services.kernels.training.data import ImageTable, load_table
from services.kernels.training.diffae import encode_table, reconstruction


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header, *[[f"{c:.3f}" if isinstance(c, float) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def recon_table(model: DiffAE, data: ImageTable, n: int, steps: int) -> None:
    x = data.batch(torch.arange(min(n, len(data))))
    got = reconstruction(model, x, steps)
    rows = [
        [label, steps, got[f"{label} x_T PSNR"], got[f"{label} x_T SSIM"]]
        for label in ("fresh", "inverted")
    ]
    table(f"reconstruction ({len(x)} images)", ["x_T", "DDIM steps", "PSNR dB", "SSIM"], rows)


def edit_effect(
    model: DiffAE, probes: ProbeSet, store: ModelStore, data: ImageTable, n: int, steps: int
) -> None:
    """Does moving c_a = u_aᵀz change attribute a in the pixels? Read by the attacker
    classifiers (trained on original images, never on decodes): the mean predicted label
    of the originals, of their decodes (c_a kept) and of decodes with c_a set to −C_a / +C_a
    (same fresh x_T), beside the attacker's accuracy on the originals and on the decodes."""
    x = data.batch(torch.arange(min(n, len(data))))
    z = model.encode(x)
    x_t = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    decoded = model.decode(z, x_t, steps)
    rows = []
    for manifest in store.list():
        cfg = manifest.config
        if manifest.kind != "classifier" or cfg.get("role") != "attacker":
            continue
        name = cfg["target"]
        if name not in probes.names or cfg["resolution"] != model.config.resolution:
            continue
        attacker = load_classifier(manifest.name, store)
        a = probes.names.index(name)
        u, bound = probes.directions[:, a], probes.clip_bounds[a]
        truth = data.attributes[: len(x), data.attribute_names.index(name)]
        means = []
        for value in (-bound, bound):
            edited = model.decode(z - (z @ u)[:, None] * u + value * u, x_t, steps)
            means.append(float(attacker.predict(edited).float().mean()))
        rows.append([
            manifest.name,
            float(truth.float().mean()),
            float(attacker.predict(decoded).float().mean()),
            *means,
            float((attacker.predict(x) == truth).float().mean()),
            float((attacker.predict(decoded) == truth).float().mean()),
        ])  # fmt: skip
    table(
        f"attribute edits read by the attackers ({len(x)} images, fresh x_T, {steps} steps)",
        ["attacker", "mean label", "decoded", "c_a=-C_a", "c_a=+C_a", "acc orig", "acc decoded"],
        rows,
    )


def decode_timing(model: DiffAE, steps_list: list[int], batch: int = 8) -> None:
    z = torch.randn(batch, model.config.z_dim)
    x_t = torch.randn(batch, 3, model.config.resolution, model.config.resolution)
    model.decode(z, x_t, 2)  # warm up
    rows = []
    for steps in steps_list:
        start = time.perf_counter()
        model.decode(z, x_t, steps)
        rows.append([steps, (time.perf_counter() - start) / batch])
    table(f"decode time (batch {batch})", ["DDIM steps", "s/image"], rows)


def probe_accuracy(model: DiffAE, probes: ProbeSet, data: ImageTable) -> None:
    pred = probes.predict(encode_table(model, data))
    rows = []
    for a, name in enumerate(probes.names):
        column = data.attribute_names.index(name)
        acc = float((pred[:, a] == data.attributes[:, column]).float().mean())
        rows.append([name, acc, probes.heldout_accuracy.get(name, float("nan")),
                     float(probes.clip_bounds[a])])  # fmt: skip
    table("attribute probes on z", ["attribute", "accuracy", "fit held-out", "C_a"], rows)


def classifier_accuracy(store: ModelStore, data: ImageTable) -> None:
    rows = []
    for manifest in store.list():
        if manifest.kind != "classifier" or manifest.config["resolution"] != data.resolution:
            continue
        model = load_classifier(manifest.name, store)
        acc = accuracy(model, data, labels_for(data, model.config))
        rows.append([manifest.name, model.config.arch, model.config.target, acc])
    table("classifiers", ["model", "arch", "predicts", "accuracy"], rows)


def edit_grid(model: DiffAE, probes: ProbeSet, data: ImageTable, path: Path, steps: int) -> None:
    """Row a: one face with its coordinate c_a set to −2C_a … +2C_a, fixed x_T."""
    from PIL import Image

    z = model.encode(data.batch(torch.arange(1)))
    res = model.config.resolution
    x_t = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0))
    rows = []
    for a in range(len(probes.names)):
        u, bound = probes.directions[:, a], float(probes.clip_bounds[a])
        values = torch.linspace(-2 * bound, 2 * bound, 7)
        codes = z - (z @ u)[:, None] * u + values[:, None] * u
        images = model.decode(codes, x_t.expand(len(values), -1, -1, -1), steps)
        rows.append(torch.cat([data.batch(torch.arange(1)), images]))
    grid = torch.stack(rows)  # (A, 8, 3, R, R)
    pixels = to_uint8(grid.permute(2, 0, 3, 1, 4).reshape(3, len(rows) * res, 8 * res))
    image = Image.fromarray(pixels)
    image.resize((image.width * 3, image.height * 3), Image.Resampling.NEAREST).save(path)
    print(f"\nedit grid → {path} (rows: {', '.join(probes.names)}; column 0: the original)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="model store (default: packaged)")
    parser.add_argument("--diffae", default="diffae")
    parser.add_argument("--probes", default="probes")
    parser.add_argument("--data", default="synthfaces://?n=512&seed=2")
    parser.add_argument("--n", type=int, default=64, help="images to reconstruct")
    parser.add_argument("--recon-steps", type=int, default=20)
    parser.add_argument("--steps", default="10,20,50", help="DDIM steps to time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", type=Path, help="write an attribute edit grid PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = ModelStore(args.store)
    model = load_diffae(args.diffae, store)
    data = load_table(args.data, model.config.resolution)
    recon_table(model, data, args.n, args.recon_steps)
    decode_timing(model, [int(s) for s in args.steps.split(",")])
    probes = load_probes(args.probes, store)
    probe_accuracy(model, probes, data)
    classifier_accuracy(store, data)
    edit_effect(model, probes, store, data, args.n, args.recon_steps)
    if args.grid:
        edit_grid(model, probes, data, args.grid, args.recon_steps)


if __name__ == "__main__":
    main()
