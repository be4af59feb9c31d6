"""The accountant under load, over gRPC: spend latency and throughput at 1, 8 and 32
concurrent clients, the server's CPU per spend, and ChargeBatch against single spends.

    .venv/bin/python -m bench.accountant_load --duration 5 --clients 1,8,32
    .venv/bin/python -m bench.accountant_load --source /tmp/old-veil   # another checkout

The server is a real ``veil serve accountant`` process (of this checkout, or of each
``--source``: the same bench against an older version, in the same run) on a fresh SQLite
file; with VEIL_TEST_POSTGRES_DSN set, PostgreSQL rows follow (a fresh schema each). With
several sources, their servers run side by side and take each phase in turn (source A's
1-client phase, then B's, then A's 8-client phase…), so that a before/after pair is
measured seconds apart, not minutes, on a machine whose load changes. Clients
are ``grpc.aio`` calls from this process; each spend charges the tenant, the dataset and
one of 64 subjects (a Gaussian with σ = 1000, so no budget runs out). CPU per spend is the
server process's user+system time over the spends of a phase (/proc/<pid>/stat).

A ``health Check`` row (one client) measures the gRPC layer alone: the same server, the
same interceptors, an RPC that does no work; a ``WhoAmI (auth)`` row the same with a bearer
token, through the auth interceptor too: together, the per-call floor under a spend. A
second table gives each server's resident memory right after it answered ready (VmRSS,
before any spend).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import accountant_pb2_grpc, diagnostics_pb2, diagnostics_pb2_grpc
from services.runtime.client import wait_until_ready

TOKEN = "bench-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
SUBJECTS = [f"s{i}" for i in range(64)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(source: Path, url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "VEIL_ACCOUNTANT_PORT": str(port),
        "VEIL_ACCOUNTANT_METRICS_PORT": "0",
        "VEIL_ACCOUNTANT_DATABASE_URL": url,
        "VEIL_ACCOUNTANT_TOKENS": f'{{"{TOKEN}": {{"tenant": "acme", "scopes": ["*"]}}}}',
        "VEIL_ACCOUNTANT_LOG_LEVEL": "WARNING",
        "VEIL_ACCOUNTANT_MAX_CONCURRENT_RPCS": "256",
        "PYTHONPATH": str(source),
    }
    cmd = [sys.executable, "-m", "services.cli", "serve", "accountant"]
    proc = subprocess.Popen(cmd, cwd=source, env=env)
    target = f"127.0.0.1:{port}"
    try:
        wait_until_ready(target, 90, alive=lambda: proc.poll() is None)
    except (TimeoutError, RuntimeError) as exc:
        raise SystemExit(f"the accountant of {source} did not start: {exc}") from None
    return proc, target


def event(sigma: float = 1000.0) -> pb.PrivacyEvent:
    return pb.PrivacyEvent(gaussian=pb.GaussianMechanism(noise_multiplier=sigma))


async def setup(stub: accountant_pb2_grpc.AccountantStub) -> None:
    scopes = [("", ""), ("faces", ""), *(("faces", s) for s in SUBJECTS)]
    for dataset, subject in scopes:
        scope = pb.BudgetScope(dataset_id=dataset, subject_id=subject)
        budget = pb.Budget(scope=scope, epsilon=1e9, delta=1e-5)
        await stub.PutBudget(pb.PutBudgetRequest(budget=budget), metadata=AUTH)


async def spend_phase(
    stub: accountant_pb2_grpc.AccountantStub, clients: int, duration: float
) -> list[float]:
    latencies: list[float] = []
    stop = time.monotonic() + duration

    async def client(c: int) -> None:
        i = 0
        while time.monotonic() < stop:
            charge = pb.Charge(
                dataset_id="faces",
                subject_ids=[SUBJECTS[(c * 7 + i) % len(SUBJECTS)]],
                event=event(),
                idempotency_key=uuid.uuid4().hex,
            )
            start = time.perf_counter()
            await stub.Spend(pb.SpendRequest(charge=charge), metadata=AUTH, timeout=60)
            latencies.append(time.perf_counter() - start)
            i += 1

    await asyncio.gather(*(client(c) for c in range(clients)))
    return latencies


async def health_phase(channel: grpc.aio.Channel, duration: float) -> list[float]:
    """Latencies of health Check at one client: what a call costs with no work in it."""
    stub = health_pb2_grpc.HealthStub(channel)
    latencies: list[float] = []
    stop = time.monotonic() + duration
    while time.monotonic() < stop:
        start = time.perf_counter()
        await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
        latencies.append(time.perf_counter() - start)
    return latencies


async def whoami_phase(channel: grpc.aio.Channel, duration: float) -> list[float]:
    """Latencies of Diagnostics.WhoAmI at one client: an authenticated RPC that does no
    work, through every interceptor a spend passes (auth included): a call's floor."""
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
    latencies: list[float] = []
    stop = time.monotonic() + duration
    while time.monotonic() < stop:
        start = time.perf_counter()
        await stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=AUTH, timeout=60)
        latencies.append(time.perf_counter() - start)
    return latencies


async def batch_phase(stub: accountant_pb2_grpc.AccountantStub, rounds: int) -> float:
    """Charges per second of ChargeBatch with 100 items."""
    start = time.perf_counter()
    for _ in range(rounds):
        items = [
            pb.Charge(dataset_id="faces", subject_ids=[SUBJECTS[i % 64]], event=event())
            for i in range(100)
        ]
        request = pb.ChargeBatchRequest(idempotency_key=uuid.uuid4().hex, charges=items)
        out = await stub.ChargeBatch(request, metadata=AUTH, timeout=60)
        assert out.accepted == 100, out
    return rounds * 100 / (time.perf_counter() - start)


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def row(source: Path, url: str, call: str, n: int, lat: list[float], cpu: float, s: float) -> str:
    return (
        f"| {source.name} | {url.split(':')[0]} | {call} | {n} | {len(lat) / s:7.1f} "
        f"| {1000 * quantile(lat, 50):7.2f} | {1000 * quantile(lat, 99):7.2f} "
        f"| {1000 * cpu / len(lat):6.2f} |"
    )


async def run(
    sources: list[Path], url: str, clients: list[int], duration: float, rss: list[str]
) -> None:
    """Every source's server on one database, phase by phase in turn: a phase of each
    server runs right after the same phase of the one before, so a figure is never compared
    with one taken minutes apart on a machine whose load changes."""
    servers: list[tuple[Path, subprocess.Popen[bytes], grpc.aio.Channel, bool]] = []
    try:
        for i, source in enumerate(sources):
            # A fresh database of the same backend for each server (its own schema/file).
            proc, target = start_server(source, url if i == 0 else fresh(url))
            rss.append(f"| {source.name} | {url.split(':')[0]} | {rss_mb(proc.pid):.1f} |")
            channel = grpc.aio.insecure_channel(target)
            has_batch = "ChargeBatch" in (source / "proto/veil/v1/accountant.proto").read_text()
            servers.append((source, proc, channel, has_batch))
            stub = accountant_pb2_grpc.AccountantStub(channel)
            await setup(stub)
            await spend_phase(stub, 1, 1.0)  # warm-up
        for source, proc, channel, _ in servers:
            before = cpu_seconds(proc.pid)
            lat = await health_phase(channel, duration)
            cpu = cpu_seconds(proc.pid) - before
            print(row(source, url, "health Check", 1, lat, cpu, duration), flush=True)
        for source, proc, channel, _ in servers:
            before = cpu_seconds(proc.pid)
            lat = await whoami_phase(channel, duration)
            cpu = cpu_seconds(proc.pid) - before
            print(row(source, url, "WhoAmI (auth)", 1, lat, cpu, duration), flush=True)
        for n in clients:
            for source, proc, channel, _ in servers:
                stub = accountant_pb2_grpc.AccountantStub(channel)
                before = cpu_seconds(proc.pid)
                lat = await spend_phase(stub, n, duration)
                cpu = cpu_seconds(proc.pid) - before
                print(row(source, url, "spend", n, lat, cpu, duration), flush=True)
        for source, proc, channel, has_batch in servers:
            if not has_batch:
                continue
            stub = accountant_pb2_grpc.AccountantStub(channel)
            before = cpu_seconds(proc.pid)
            rate = await batch_phase(stub, 10)
            cpu = cpu_seconds(proc.pid) - before
            print(
                f"| {source.name} | {url.split(':')[0]} | batch of 100 | 1 | {rate:7.1f} "
                f"| | | {1000 * cpu / 1000:6.2f} |",
                flush=True,
            )
    finally:
        for _, proc, channel, _ in servers:
            await channel.close()
            proc.terminate()
            proc.wait(timeout=30)


def databases(tmp: Path) -> list[str]:
    urls = [f"sqlite:///{tmp / uuid.uuid4().hex}.sqlite"]
    dsn = os.environ.get("VEIL_TEST_POSTGRES_DSN", "")
    if dsn:
        urls.append(postgres_schema(dsn))
    return urls


def postgres_schema(dsn: str) -> str:
    """``dsn`` with a fresh, empty schema first on its search path."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with create_engine(dsn).begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options=-csearch_path%3D{schema}"


def fresh(url: str) -> str:
    """Another empty database of ``url``'s backend (a new file, or a new schema)."""
    if url.startswith("sqlite"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).parent / uuid.uuid4().hex}.sqlite"
    return postgres_schema(url.split("?options=")[0].split("&options=")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument(
        "--source",
        type=Path,
        action="append",
        help="checkout(s) whose accountant to run (default: this one); repeat to compare",
    )
    args = parser.parse_args()
    sources = args.source or [Path(__file__).resolve().parents[1]]
    clients = [int(c) for c in args.clients.split(",")]
    print("| server | db | call | clients | charges/s | p50 ms | p99 ms | CPU ms/charge |")
    print("|---|---|---|---|---|---|---|---|")
    rss: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for url in databases(Path(tmp)):
            resolved = [source.resolve() for source in sources]
            asyncio.run(run(resolved, url, clients, args.duration, rss))
    print("\n| server | db | RSS after start MB |\n|---|---|---|")
    print("\n".join(rss))


if __name__ == "__main__":
    main()
