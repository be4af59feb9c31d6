"""``veil``: serve one service, bring the local stack up, run Triton, train, check the ledger,
audit the sanitizer."""

from __future__ import annotations

import argparse
import os
import sys

from services import __version__
from services.cli.audit import add_audit_parser
from services.cli.ledger import add_ledger_parser
from services.cli.models import add_models_parser
from services.cli.serve import add_serve_parser
from services.cli.train import add_train_parser
from services.cli.triton import add_triton_parser
from services.cli.up import add_up_parser


def build_parser() -> argparse.ArgumentParser:
    """The whole ``veil`` parser; every leaf sets ``handler`` (``args.handler(args) -> int``)."""
    parser = argparse.ArgumentParser(prog="veil", description=__doc__)
    parser.add_argument("--version", action="version", version=f"veil {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(sub)
    add_up_parser(sub)
    demo = sub.add_parser("demo", help="start the local stack, call it over gRPC, stop it")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="the same journey with less work per step: FMD 20 steps, unlearning 5 (CI)",
    )
    demo.set_defaults(handler=_demo)
    add_triton_parser(sub)
    add_train_parser(sub)
    add_models_parser(sub)
    add_ledger_parser(sub)
    add_audit_parser(sub)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from services.cli.demo import main as demo

    return demo(quick=args.quick)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "models", "audit"):
        # Idle OpenMP workers sleep instead of spinning: on a small shared machine a
        # spinning pool steals the core another process (or the trainer's own data
        # preparation) needs. Only effective before torch is imported, as here.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
