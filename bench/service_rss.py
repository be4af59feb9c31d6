"""Memory of a service process on the Triton backend: peak RSS of importing and building it.

    .venv/bin/python -m bench.service_rss [--source DIR] [--repeat 3]

For the sanitizer and the protection service, each in a fresh interpreter with
``VEIL_INFERENCE_BACKEND=triton`` in the environment: the peak RSS (``ru_maxrss``) after
``import services.<svc>.app``, after ``build_app(Settings(...))`` (nothing is started: no
port is bound and no Triton is reached; the sanitizer reads its probes and the protection
service its classifiers' manifests from the packaged model store), and whether ``torch``
was loaded. ``--source`` runs another checkout of the code (e.g. a ``git worktree`` of an
older commit) with this interpreter; the smallest of ``--repeat`` runs is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("sanitizer", "protection")

PROBE = """
import json, resource, sys, tempfile
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
start = peak()
from services.{svc}.app import Settings, build_app
imported = peak()
tmp = tempfile.mkdtemp()
extra = {{"database_url": "sqlite:///" + tmp + "/db.sqlite"}} if "{svc}" == "sanitizer" else {{}}
app = build_app(Settings(host="127.0.0.1", port=0, metrics_port=None, **extra))
built = peak()
print(json.dumps({{"start": start, "import": imported, "build": built,
                  "torch": "torch" in sys.modules, "grpc": "grpc" in sys.modules}}))
"""


def measure(service: str, source: Path) -> dict[str, float | bool]:
    """One fresh interpreter, run in ``source`` with ``source`` first on the path."""
    env = {**os.environ, "VEIL_INFERENCE_BACKEND": "triton", "PYTHONPATH": str(source)}
    with tempfile.TemporaryDirectory() as home:
        env["VEIL_DATA_DIR"] = home
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(svc=service)],
            cwd=source,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if out.returncode != 0:
        raise SystemExit(f"{service} in {source} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float | bool] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to measure")
    parser.add_argument("--repeat", type=int, default=3, help="runs per service (min kept)")
    args = parser.parse_args()
    source = args.source.resolve()
    print(f"\nservice RSS on the Triton backend: {source} (python {sys.version.split()[0]})\n")
    print("| service | interpreter (MiB) | + import app (MiB) | + build_app (MiB) | torch | grpc |")
    print("|---|---:|---:|---:|---|---|")
    for service in SERVICES:
        runs = [measure(service, source) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: float(r["build"]))
        print(
            f"| {service} | {best['start']:.0f} | {best['import']:.0f} | {best['build']:.0f} "
            f"| {'loaded' if best['torch'] else 'not loaded'} "
            f"| {'loaded' if best['grpc'] else 'not loaded'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
