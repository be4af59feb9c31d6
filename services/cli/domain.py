"""``veil train domain``: what a trained model represents, as a store entry services check.

Fits :class:`services.kernels.domain.DomainModel` on a model's own representation of its
training data (a diffusion autoencoder's semantic codes, a classifier's penultimate
features): the Gaussian on the leading rows, the threshold at ``--quantile`` of the scores
of the held-out last :data:`~services.cli.train.HOLDOUT` of them. ``--data`` defaults to the
URI the model's manifest says it was trained on. The entry (``domain-<model>``) records the
model's SHA-256, so a service refuses to pair it with another model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.kernels.defaults import DEFAULT_CACHE, DEFAULT_DIFFAE
from services.kernels.domain import DEFAULT_QUANTILE, METHOD

if TYPE_CHECKING:
    from services.kernels.manifests import Manifest
    from services.kernels.training.data import ImageTable

REPRESENTATIONS = {"diffae": "semantic code z", "classifier": "penultimate features"}


def add_domain_parser(kinds: argparse._SubParsersAction) -> None:
    from services.cli.train import _registry_arguments

    domain = kinds.add_parser(
        "domain", help="the in-domain score's Gaussian and threshold for a trained model"
    )
    domain.add_argument(
        "--model", default=DEFAULT_DIFFAE, help="store entry: a diffae or a classifier"
    )
    domain.add_argument("--name", help="store entry to write (default domain-<model>)")
    domain.add_argument("--out", type=Path, help="model store directory (default: packaged)")
    domain.add_argument("--data", help="dataset URI (default: the one the model was trained on)")
    domain.add_argument(
        "--quantile",
        type=float,
        default=DEFAULT_QUANTILE,
        help=f"threshold at this quantile of the held-out scores (default {DEFAULT_QUANTILE})",
    )
    domain.add_argument("--threads", type=int, default=None, help="(default: the idle cores)")
    domain.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    _registry_arguments(domain)
    domain.set_defaults(handler=run_train_domain)


def representation(manifest: Manifest, store_root: Path | None, table: ImageTable) -> np.ndarray:
    """The model's own representation of every image of ``table`` (N, d) float64."""
    import torch

    from services.kernels.models import load_classifier, load_diffae
    from services.kernels.store import ModelStore
    from services.kernels.training.diffae import encode_table

    store = ModelStore(store_root)
    if manifest.kind == "diffae":
        return encode_table(load_diffae(manifest.name, store), table).double().numpy()
    classifier = load_classifier(manifest.name, store).eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(table), 256):
            batch = table.batch(torch.arange(start, min(start + 256, len(table))))
            rows.append(classifier.features(batch, "penultimate").flatten(1))
    return torch.cat(rows).double().numpy()


def run_train_domain(args: argparse.Namespace) -> int:
    import torch

    from services.cli.train import HOLDOUT, _register, _threads
    from services.common.errors import InvalidArgument
    from services.kernels.domain import fit_domain
    from services.kernels.store import ModelStore
    from services.kernels.training.data import load_table

    torch.set_num_threads(_threads(args))
    store = ModelStore(args.out)
    model = store.manifest(args.model)
    if model.kind not in REPRESENTATIONS:
        raise InvalidArgument(
            f"--model: {args.model!r} is a {model.kind}; a domain is fitted for a diffae or"
            " a classifier"
        )
    args.data = args.data or str(model.data.get("uri", ""))
    args.name = args.name or f"domain-{args.model}"
    table = load_table(args.data, int(model.config["resolution"]), args.cache_dir)
    rows = representation(model, args.out, table)
    cut = len(rows) - round(len(rows) * HOLDOUT)
    fitted = fit_domain(rows[:cut], rows[cut:], args.quantile)
    held_out = fitted.scores(rows[cut:])
    config = {
        "model": args.model,
        "model_kind": model.kind,
        "model_sha256": model.sha256,
        "representation": REPRESENTATIONS[model.kind],
        "method": METHOD,
        "threshold": fitted.threshold,
        "quantile": args.quantile,
        "dim": int(rows.shape[1]),
    }
    metrics = {
        "fitted rows": cut,
        "held-out rows": len(rows) - cut,
        "held-out score median": float(np.median(held_out)),
        "held-out refused": float(np.mean(held_out > fitted.threshold)),
    }
    manifest = store.save(
        args.name,
        "domain",
        {k: torch.from_numpy(v) for k, v in fitted.arrays().items()},
        config,
        command=(
            f"veil train domain --model {args.model} --name {args.name} --data '{args.data}'"
            f" --quantile {args.quantile}"
        ),
        data={"uri": args.data, "n": len(rows)},
        metrics=metrics,
    )
    print(
        f"domain of {args.model} ({REPRESENTATIONS[model.kind]}, {rows.shape[1]} dims) →"
        f" {store.path(args.name)}: threshold {fitted.threshold:.3f} (held-out median"
        f" {metrics['held-out score median']:.3f}, {metrics['held-out refused']:.3%} refused)"
    )
    return _register(args, manifest)
