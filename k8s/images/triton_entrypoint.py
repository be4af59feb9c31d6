"""Entrypoint of the Triton image: ``triton`` runs NGC's tritonserver; anything else is ``veil``.

The image is NGC's tritonserver with this package in a venv (Dockerfile.triton).
``veil triton`` itself starts the tritonserver bundled in nvidia-pytriton, with that wheel's
python backend, whose stubs stop at Python 3.11; the NGC image has its own server, python
backend and stub, built for its Python 3.12. So ``triton`` here reads what ``veil triton``
reads (the same flags, ``VEIL_TRITON_*``, through :class:`TritonSettings`), takes the command
line ``veil triton`` would run (:meth:`TritonServer.command`) minus its backend directory
(NGC's default, ``/opt/tritonserver/backends``, is the one that matches the server) and
execs NGC's ``tritonserver`` in this process: the pod's SIGTERM reaches the server, which
drains for ``--exit-timeout-secs`` (``VEIL_TRITON_SHUTDOWN_GRACE_S``). The stubs import
``veil.services`` from this venv (``PYTHONPATH``, and each model's ``package_root``).

The Deployment is the same as for ``veil triton`` (``args: ["triton"]``, ``VEIL_TRITON_*``);
``tests/k8s/test_images.py`` checks the command line against ``veil triton``'s.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

try:  # the image: the wheel's import names (buildsys/veil_backend.py)
    import veil.services  # noqa: F401

    PACKAGE = "veil.services"
except ImportError:  # the checkout (tests/k8s/test_images.py)
    PACKAGE = "services"

TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
"""Where NGC's images install the server."""


def tritonserver_argv(argv: list[str], binary: Path = TRITONSERVER) -> list[str]:
    """The tritonserver command line for ``veil triton`` arguments ``argv``
    (``["triton", ...]``) and the ``VEIL_TRITON_*`` environment."""
    build_parser = _module("cli.main").build_parser
    TritonServer = _module("triton.server").TritonServer
    TritonSettings = _module("triton.settings").TritonSettings

    args = vars(build_parser().parse_args(argv))
    fields = TritonSettings.model_fields
    overrides = {k: v for k, v in args.items() if k in fields and v is not None}
    settings = TritonSettings(**{**overrides, "tritonserver": binary})
    ports = (settings.grpc_port, settings.http_port, settings.metrics_port)
    if 0 in ports:
        raise SystemExit("triton: port 0 (a free port) is for tests; give the image fixed ports")
    server = TritonServer(settings)
    server.workspace = Path(os.devnull)  # command() names a backend directory in it: dropped
    server.grpc_port, server.http_port, server.metrics_port = ports
    return [a for a in server.command() if not a.startswith("--backend-directory=")]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def stub_environment(base: dict[str, str]) -> dict[str, str]:
    """``base`` with this venv's site-packages first on ``PYTHONPATH``: the python backend's
    stubs run NGC's system Python, which does not know the venv."""
    site = sysconfig.get_paths()["purelib"]
    rest = [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p and p != site]
    return {**base, "PYTHONPATH": os.pathsep.join([site, *rest])}


def main(argv: list[str]) -> int:
    if argv[:1] != ["triton"]:
        return int(_module("cli.main").main(argv))
    command = tritonserver_argv(argv)
    print("exec:", " ".join(command), flush=True)
    os.execve(command[0], command, stub_environment(dict(os.environ)))
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
