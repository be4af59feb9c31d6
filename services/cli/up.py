"""``veil up``: the local stack, Triton first when a service needs it, one process per service."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.cli.registry import SERVICES, uses_inference

REGISTRY_CLIENTS = ("protection", "sanitizer")
"""Services that ask the model registry: protection (each tenant's authorized model) and
the sanitizer (the record of the encoder and probes it serves)."""


def add_up_parser(subparsers: Any) -> argparse.ArgumentParser:
    up = subparsers.add_parser("up", help="run the local stack, one process per service")
    up.add_argument("--services", default=",".join(SERVICES), help="comma-separated list")
    up.add_argument(
        "--backend",
        choices=("triton", "local"),
        default="triton",
        help="where services that call the kernels run them: a tritonserver that `up` starts"
        " first (default; VEIL_TRITON_* settings) or in their own process",
    )
    up.set_defaults(handler=lambda args: run_up(args.services.split(","), args.backend))
    return up


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


def unlearning_models(root: Path) -> tuple[Path, Path]:
    """(store, repository) that the unlearning service publishes versions into under
    ``root``: a copy of the packaged model store (entries already there are kept) and a
    rendering of ``triton_models/`` whose ``store`` parameter points at it (kept once made:
    it holds the published ``veil_classifier/<N>/`` directories). Neither is the source
    tree, which stays clean."""
    from services.triton.repository import render
    from services.triton.settings import REPO_ROOT
    from services.unlearning.training import seeded_store

    store, repository = seeded_store(root / "store"), root / "triton_models"
    if not repository.exists():
        render(REPO_ROOT / "triton_models", repository, parameters={"store": str(store)})
    return store, repository


def run_up(names: list[str], backend: str = "triton") -> int:
    """Start Triton if a service needs it, then each service as a child process; on
    SIGINT/SIGTERM or any child's (or Triton's) exit, stop all: services first, then Triton."""
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
    models: tuple[Path, Path] | None = None
    if "unlearning" in names:
        from services.common.db import data_dir

        models = unlearning_models(data_dir() / "unlearning")
    if backend == "triton" and uses_inference(names):
        from services.triton.server import TritonServer, TritonStartError
        from services.triton.settings import TritonSettings

        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        overrides: dict[str, Any] = {}
        if models is not None:  # new versions are loaded through Triton's repository API
            overrides = {
                "model_repository": models[1],
                "model_control_mode": "explicit",
                "load_models": ["*"],
            }
        triton = TritonServer(TritonSettings(**overrides))
        try:
            triton.start()
        except TritonStartError as exc:
            print(f"veil up: tritonserver did not start: {exc}", file=sys.stderr)
            return 1
    url = triton.grpc_url if triton is not None else None
    env = service_environment(dict(os.environ), backend, url)
    if models is not None:
        env.setdefault("VEIL_UNLEARNING_STORE", str(models[0]))
        env.setdefault("VEIL_INFERENCE_STORE", str(models[0]))
        if triton is not None:
            env.setdefault("VEIL_UNLEARNING_MODEL_REPOSITORY", str(models[1]))
    if "accountant" in names and "sanitizer" in names:
        # The sanitizer charges the accountant this stack starts (unless told otherwise).
        accountant = SERVICES["accountant"].settings()
        env.setdefault("VEIL_SANITIZER_ACCOUNTANT_URL", f"{accountant.host}:{accountant.port}")
    if "unlearning" in names:
        # The registry this stack starts (the unlearning server's ModelRegistry) is where
        # its clients resolve models.
        unlearning = SERVICES["unlearning"].settings()
        for client in REGISTRY_CLIENTS:
            if client in names:
                env.setdefault(
                    f"VEIL_{client.upper()}_REGISTRY_URL", f"{unlearning.host}:{unlearning.port}"
                )
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
