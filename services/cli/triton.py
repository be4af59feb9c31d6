"""``veil triton``: run tritonserver on the model repository."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def add_triton_parser(subparsers: Any) -> argparse.ArgumentParser:
    triton = subparsers.add_parser("triton", help="run tritonserver on the model repository")
    triton.add_argument("--model-repository", help="model repository (default triton_models/)")
    triton.add_argument("--host", help="bind address of all three endpoints")
    for name in ("grpc", "http", "metrics"):
        triton.add_argument(f"--{name}-port", type=int, help=f"{name} port (0 = free port)")
    triton.add_argument(
        "--model-control-mode",
        choices=("none", "explicit", "poll"),
        help="none (default): load every model at start; explicit: load the --load-model ones"
        " and whatever a client asks for (the unlearning service publishes versions this way)",
    )
    triton.add_argument(
        "--load-model",
        action="append",
        dest="load_models",
        metavar="MODEL",
        help="with explicit control: a model to load at start ('*' = all); repeatable",
    )
    triton.set_defaults(handler=run_triton)
    return triton


def run_triton(args: argparse.Namespace) -> int:
    """Run tritonserver until SIGTERM/SIGINT (exit 0) or until it dies or fails to start (1)."""
    from services.triton.server import TritonServer, serve_forever
    from services.triton.settings import TritonSettings

    keys = (
        "model_repository",
        "host",
        "grpc_port",
        "http_port",
        "metrics_port",
        "model_control_mode",
        "load_models",
    )
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_forever(TritonServer(TritonSettings(**overrides)))
