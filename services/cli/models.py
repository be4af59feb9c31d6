"""``veil models list|verify|prepare``: what the model store holds, whether it is intact,
and a store and Triton repository of one's own for a service that publishes versions."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_models_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``veil models list|verify``."""
    models = subparsers.add_parser("models", help="list or verify the model store")
    actions = models.add_subparsers(dest="models_action", required=True)
    listing = actions.add_parser("list", help="one line per stored model")
    listing.add_argument("--out", type=Path, help="model store directory (default: packaged)")
    listing.set_defaults(handler=run_models_list)
    verify = actions.add_parser("verify", help="check every weights file against its sha256")
    verify.add_argument("name", nargs="?", help="one model (default: all)")
    verify.add_argument("--out", type=Path, help="model store directory (default: packaged)")
    verify.set_defaults(handler=run_models_verify)
    prepare = actions.add_parser(
        "prepare",
        help="a writable model store and Triton repository under DIR, for `veil serve"
        " unlearning` beside `veil triton` (prints the settings that use them)",
    )
    prepare.add_argument("dir", type=Path)
    prepare.set_defaults(handler=run_models_prepare)
    return models


def run_models_list(args: argparse.Namespace) -> int:
    from services.kernels.store import ModelStore

    store = ModelStore(args.out)
    manifests = store.list()
    if not manifests:
        print(f"no models in {store.root}")
    for m in manifests:
        print(f"{m.name:<28} {m.kind:<10} v{m.version:<3} {m.created_at}  {m.sha256[:12]}")
    return 0


def run_models_verify(args: argparse.Namespace) -> int:
    from services.kernels.store import ModelStore

    report = ModelStore(args.out).verify(args.name)
    for name, status in report.items():
        print(f"{name:<28} {status}")
    return 0 if all(status == "ok" for status in report.values()) else 1


def run_models_prepare(args: argparse.Namespace) -> int:
    """``DIR/store`` (the packaged entries copied in; entries there are kept unless the
    package has another content of them) and ``DIR/triton_models`` (the packaged repository
    rendered to read that store; kept once made: it holds the published versions), then the
    commands that use them. Idempotent; nothing is written into the install tree."""
    from services.cli.up import unlearning_models

    root = args.dir.expanduser().resolve()
    store, repository = unlearning_models(root)
    print(f"store       {store}\nrepository  {repository}\n")
    control = "--model-control-mode explicit --load-model '*'"
    print(f"veil triton --model-repository {repository} {control}")
    print(
        f"VEIL_INFERENCE_BACKEND=triton VEIL_UNLEARNING_STORE={store} "
        f"VEIL_UNLEARNING_MODEL_REPOSITORY={repository} veil serve unlearning"
    )
    return 0
