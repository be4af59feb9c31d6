"""``veil``: serve one service, bring the local stack up, print the version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

from services import __version__
from services.registry import SERVICES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="veil", description=__doc__)
    parser.add_argument("--version", action="version", version=f"veil {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one service until SIGTERM/SIGINT")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("--host", help="bind address (default from settings)")
    serve.add_argument("--port", type=int, help="gRPC port (0 = free port)")
    serve.add_argument("--metrics-port", type=int, help="/metrics port (0 = free port)")

    up = sub.add_parser("up", help="run the local stack, one process per service")
    up.add_argument("--services", default=",".join(SERVICES), help="comma-separated list")

    sub.add_parser("demo", help="start the local stack, call it over gRPC, stop it")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from services.demo import main as demo

        return demo()
    if args.command == "serve":
        return _serve(args)
    return _up(args.services.split(","))


def _serve(args: argparse.Namespace) -> int:
    entry = SERVICES[args.service]
    overrides = {
        k: v
        for k, v in (("host", args.host), ("port", args.port), ("metrics_port", args.metrics_port))
        if v is not None
    }
    settings = entry.settings(**overrides)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from services.common.server import VeilServer

    server = VeilServer(entry.build(settings))
    asyncio.run(server.run())
    return 0


def _up(names: list[str]) -> int:
    """Start each service as a child process; on SIGINT/SIGTERM or any child's exit, stop all."""
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        print(f"veil up: unknown service(s) {unknown}; known: {sorted(SERVICES)}", file=sys.stderr)
        return 2
    children = {
        name: subprocess.Popen([sys.executable, "-m", "services.cli", "serve", name])
        for name in names
    }
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    failed = None
    while not stop and failed is None:
        failed = next((n for n, p in children.items() if p.poll() is not None), None)
        time.sleep(0.2)
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + float(os.environ.get("VEIL_UP_STOP_TIMEOUT_S", "30"))
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    if failed is not None:
        print(f"veil up: {failed} exited with {children[failed].returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
