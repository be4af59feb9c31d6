"""``veil models list|verify``: what the model store holds, and whether it is intact."""

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
