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
from services.kernels.train_cli import add_models_parser, add_train_parser
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
    up.add_argument(
        "--backend",
        choices=("triton", "local"),
        default="triton",
        help="where services that call the kernels run them: a tritonserver that `up` starts"
        " first (default; VEIL_TRITON_* settings) or in their own process",
    )

    sub.add_parser("demo", help="start the local stack, call it over gRPC, stop it")

    triton = sub.add_parser("triton", help="run tritonserver on the model repository")
    triton.add_argument("--model-repository", help="model repository (default triton_models/)")
    triton.add_argument("--host", help="bind address of all three endpoints")
    for name in ("grpc", "http", "metrics"):
        triton.add_argument(f"--{name}-port", type=int, help=f"{name} port (0 = free port)")

    add_train_parser(sub)
    add_models_parser(sub)

    args = parser.parse_args(argv)
    if args.command in ("train", "models"):
        # Idle OpenMP workers sleep instead of spinning: on a small shared machine a
        # spinning pool steals the core another process (or the trainer's own data
        # preparation) needs. Only effective before torch is imported, as here.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return int(args.handler(args) or 0)
    if args.command == "demo":
        from services.demo import main as demo

        return demo()
    if args.command == "serve":
        return _serve(args)
    if args.command == "triton":
        return _triton(args)
    return _up(args.services.split(","), args.backend)


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


def _triton(args: argparse.Namespace) -> int:
    """Run tritonserver until SIGTERM/SIGINT (exit 0) or until it dies or fails to start (1)."""
    from services.common.triton import TritonServer, serve_forever
    from services.common.triton_settings import TritonSettings

    keys = ("model_repository", "host", "grpc_port", "http_port", "metrics_port")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve_forever(TritonServer(TritonSettings(**overrides)))


def service_environment(
    base: dict[str, str], backend: str, triton_url: str | None
) -> dict[str, str]:
    """The environment of ``veil up``'s service processes: with Triton started, the
    services' inference settings point at it (``VEIL_INFERENCE_*``)."""
    env = dict(base)
    if triton_url is not None:
        env["VEIL_INFERENCE_BACKEND"] = "triton"
        env["VEIL_INFERENCE_TRITON_URL"] = triton_url
    elif backend == "local":
        env["VEIL_INFERENCE_BACKEND"] = "local"
    return env


def _up(names: list[str], backend: str = "triton") -> int:
    """Start Triton if a service needs it, then each service as a child process; on
    SIGINT/SIGTERM or any child's (or Triton's) exit, stop all: services first, then Triton."""
    from services.registry import uses_inference

    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        print(f"veil up: unknown service(s) {unknown}; known: {sorted(SERVICES)}", file=sys.stderr)
        return 2
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    triton = None
    if backend == "triton" and uses_inference(names):
        from services.common.triton import TritonServer, TritonStartError
        from services.common.triton_settings import TritonSettings

        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        triton = TritonServer(TritonSettings())
        try:
            triton.start()
        except TritonStartError as exc:
            print(f"veil up: tritonserver did not start: {exc}", file=sys.stderr)
            return 1
    url = triton.grpc_url if triton is not None else None
    env = service_environment(dict(os.environ), backend, url)
    children = {
        name: subprocess.Popen([sys.executable, "-m", "services.cli", "serve", name], env=env)
        for name in names
    }
    failed = None
    while not stop and failed is None:
        failed = next((n for n, p in children.items() if p.poll() is not None), None)
        if failed is None and triton is not None and not triton.running():
            failed = "tritonserver"
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
    if triton is not None:
        triton.stop()
    if failed is not None:
        code = children[failed].returncode if failed in children else "an error"
        print(f"veil up: {failed} exited with {code}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
