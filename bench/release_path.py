"""What the sanitizer's release path costs over gRPC: a one-shot Sanitize (keyed and
unkeyed) and a SanitizeBatch, per call, against another checkout in the same run.

    .venv/bin/python -m bench.release_path --calls 20 --rounds 3
    .venv/bin/python -m bench.release_path --source /tmp/old-veil   # before/after

Each source (this checkout, and each ``--source``) runs its own ``veil serve accountant`` and
``veil serve sanitizer`` processes (``PYTHONPATH`` = the source, fresh SQLite files, the
in-process backend, ``--steps`` DDIM steps) side by side; the sources take each phase in
turn, round after round, so a before/after pair is measured seconds apart on a machine
whose load changes. A phase is ``--calls`` sequential calls from one client on one 48×48
synthetic face (``whole_image``, ε = 1, δ = 1e-5), each charging its own subject. The
figures are medians of every call over the rounds, in milliseconds; a batch's is the
stream's wall time per item.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc, common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.imaging import encode_image
from services.kernels.data.synthfaces import SynthFaces
from services.runtime.client import wait_until_ready

TOKEN, DELEGATE = "bench-tenant", "bench-delegate"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
TOKENS = {
    TOKEN: {"tenant": "acme", "scopes": ["*"]},
    DELEGATE: {"tenant": "veil", "scopes": ["accountant:*"], "delegate": True},
}
PHASES = ("Sanitize, keyed", "Sanitize, no key", "SanitizeBatch, per item")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def stack(source: Path, tmp: Path, steps: int) -> Iterator[str]:
    """An accountant and a sanitizer of ``source``: the sanitizer's target."""
    a_port, s_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(source), OMP_NUM_THREADS="1")
    env.update(
        VEIL_ACCOUNTANT_PORT=str(a_port),
        VEIL_ACCOUNTANT_METRICS_PORT=str(free_port()),
        VEIL_ACCOUNTANT_TOKENS=json.dumps(TOKENS),
        VEIL_ACCOUNTANT_DATABASE_URL=f"sqlite:///{tmp / 'ledger.sqlite'}",
        VEIL_SANITIZER_PORT=str(s_port),
        VEIL_SANITIZER_METRICS_PORT=str(free_port()),
        VEIL_SANITIZER_TOKENS=json.dumps({TOKEN: TOKENS[TOKEN]}),
        VEIL_SANITIZER_DATABASE_URL=f"sqlite:///{tmp / 'sanitizer.sqlite'}",
        VEIL_SANITIZER_ACCOUNTANT_URL=f"127.0.0.1:{a_port}",
        VEIL_SANITIZER_ACCOUNTANT_TOKEN=DELEGATE,
        VEIL_SANITIZER_DEFAULT_DDIM_STEPS=str(steps),
        VEIL_INFERENCE_BACKEND="local",
    )
    with ExitStack() as stop:
        for service in ("accountant", "sanitizer"):
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", service],
                env=env,
                cwd=source,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            stop.callback(proc.wait, 30)
            stop.callback(proc.terminate)
        wait_until_ready(f"127.0.0.1:{a_port}", timeout=120)
        with grpc.insecure_channel(f"127.0.0.1:{a_port}") as channel:
            ledger = accountant_pb2_grpc.AccountantStub(channel)
            for scope, extra in (
                (apb.BudgetScope(), {}),
                (
                    apb.BudgetScope(dataset_id="bench"),
                    {"subject_default": apb.SubjectDefault(epsilon=1e4, delta=1e-5)},
                ),
            ):
                budget = apb.Budget(scope=scope, epsilon=1e7, delta=1e-5, **extra)
                ledger.PutBudget(apb.PutBudgetRequest(budget=budget), metadata=AUTH)
        wait_until_ready(f"127.0.0.1:{s_port}", timeout=180)
        yield f"127.0.0.1:{s_port}"


def request(face: bytes, key: str = "") -> pb.SanitizeRequest:
    return pb.SanitizeRequest(
        dataset_id="bench",
        subject_id=uuid.uuid4().hex,
        image=common_pb2.Image(data=face),
        epsilon=1.0,
        delta=1e-5,
        face=pb.FaceSelection(whole_image=True),
        idempotency_key=key,
    )


def phase(
    stub: sanitizer_pb2_grpc.SanitizerStub, name: str, face: bytes, calls: int
) -> list[float]:
    """Milliseconds per call (per item for the batch)."""
    out: list[float] = []
    if name == "SanitizeBatch, per item":
        items = [
            pb.SanitizeBatchRequest(item_id=str(i), request=request(face)) for i in range(calls)
        ]
        began = time.perf_counter()
        answers = list(stub.SanitizeBatch(iter(items), metadata=AUTH))
        assert all(a.HasField("result") for a in answers), answers[0]
        return [(time.perf_counter() - began) * 1000 / calls]
    for _ in range(calls):
        made: Callable[[], pb.SanitizeRequest] = (
            (lambda: request(face, uuid.uuid4().hex)) if "keyed" in name else lambda: request(face)
        )
        r = made()
        began = time.perf_counter()
        stub.Sanitize(r, metadata=AUTH)
        out.append((time.perf_counter() - began) * 1000)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, action="append", default=[], help="another checkout")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="DDIM steps of each release")
    args = p.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    sources = [here, *(s.resolve() for s in args.source)]
    face = encode_image(SynthFaces(n=2, seed=7, resolution=48).pixels(0))
    times: dict[tuple[Path, str], list[float]] = {}
    with ExitStack() as stop:
        stubs = {}
        for source in sources:
            tmp = Path(stop.enter_context(tempfile.TemporaryDirectory(prefix="veil-bench-")))
            target = stop.enter_context(stack(source, tmp, args.steps))
            channel = stop.enter_context(grpc.insecure_channel(target))
            stubs[source] = sanitizer_pb2_grpc.SanitizerStub(channel)
            phase(stubs[source], PHASES[1], face, 2)  # warm-up: models loaded, caches filled
        for _ in range(args.rounds):
            for name in PHASES:
                for source in sources:
                    times.setdefault((source, name), []).extend(
                        phase(stubs[source], name, face, args.calls)
                    )
    print(f"median ms per call, {args.calls} calls × {args.rounds} rounds, {args.steps} steps")
    print("| phase | " + " | ".join(str(s) for s in sources) + " |")
    print("|---|" + "---|" * len(sources))
    for name in PHASES:
        row = [f"{statistics.median(times[(s, name)]):.1f}" for s in sources]
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
