"""``veil serve SERVICE``: run one service until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pydantic import ValidationError

from services.cli.registry import SERVICES
from services.runtime.logging import configure_logging


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    serve = subparsers.add_parser("serve", help="run one service until SIGTERM/SIGINT")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("--host", help="bind address (default from settings)")
    serve.add_argument("--port", type=int, help="gRPC port (0 = free port)")
    serve.add_argument("--metrics-port", type=int, help="/metrics port (0 = free port)")
    serve.set_defaults(handler=run_serve)
    return serve


def run_serve(args: argparse.Namespace) -> int:
    entry = SERVICES[args.service]
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("metrics_port", args.metrics_port))
        if v is not None
    }
    try:
        settings = entry.settings(**overrides)
    except ValidationError as exc:  # a setting that can never work: say which, exit 2
        for error in exc.errors():
            where = "_".join(str(part) for part in error["loc"])
            prefix = f"VEIL_{args.service.upper()}_"
            print(
                f"veil serve {args.service}: bad setting {prefix}{where.upper()}: {error['msg']}",
                file=sys.stderr,
            )
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from services.runtime.server import VeilServer

    server = VeilServer(entry.build(settings))
    asyncio.run(server.run())
    return 0
