"""Accountant throughput vs ledger size: spends/s and check latency, SQLite and PostgreSQL.

    .venv/bin/python -m bench.accountant --sizes 1000,100000,1000000 --n 200

PostgreSQL rows appear when VEIL_TEST_POSTGRES_DSN is set (each size uses a fresh schema).
Past events are seeded in bulk, not spent one by one: N identical Gaussian(σ=1000) events
with distinct idempotency keys are inserted with ``executemany`` (events + links to the
tenant, dataset and subject budgets), and each budget's running state is set to the
composition of those N events (``Composition().add({atom: N})``) — exactly the state N
real spends would leave, so ``audit.verify()`` passes on it. The floor is a raw single-row INSERT
in its own transaction on the same engine (same BEGIN IMMEDIATE / fsync settings). The CPU
columns are this process's CPU time (every thread: the ledger's writer too) per spend and
per raw INSERT+COMMIT: the second is what durability alone costs a spend here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter

from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, text, update

from services.accountant.accounting import Composition, atoms_of
from services.accountant.events import Budget, Charge, Gaussian, Scope
from services.accountant.ledger import Ledger
from services.accountant.rows import atoms_to_json, dumps
from services.accountant.schema import budgets, event_budgets, events

T, D, S = "bench", "ds", "subj"
SCOPES = (Scope(T), Scope(T, D), Scope(T, D, S))


def charge(key: str) -> Charge:
    return Charge(Gaussian(1000.0), T, D, key, subject_ids=(S,))


def seed(led: Ledger, n: int) -> None:
    """Bulk-insert ``n`` past events and the running state they imply."""
    for scope in SCOPES:
        led.budgets.put(T, Budget(scope, 1e9, 1e-5))
    text_charge = {k: v for k, v in charge("x").to_json().items()}
    with led._tx() as conn:
        ids = [r.id for r in conn.execute(budgets.select().order_by(budgets.c.id))]
        for start in range(0, n, 50_000):
            rows = []
            for i in range(start, min(n, start + 50_000)):
                text_charge["idempotency_key"] = f"seed-{i}"
                rows.append(
                    {
                        "spend_id": uuid.uuid4().hex,
                        "tenant_id": T,
                        "idempotency_key": f"seed-{i}",
                        "charge": dumps(text_charge),
                        "cost_epsilon": 0.0,
                        "committed_at": 0.0,
                    }
                )
            first = conn.execute(insert(events).returning(events.c.id), rows).scalars().all()
            conn.execute(
                insert(event_budgets), [{"event_id": e, "budget_id": b} for e in first for b in ids]
            )
        comp = Composition().add(Counter({a: c * n for a, c in atoms_of(charge("x")).items()}))
        conn.execute(
            update(budgets).values(
                rdp=dumps(comp.rdp.tolist()),
                atoms=atoms_to_json(comp.atoms),
                version=n,
                event_count=n,
            )
        )


def measure(url: str, size: int, n: int) -> dict[str, float]:
    led = Ledger(url)
    led.create_schema()
    seed(led, size)
    checks = []
    for i in range(n):
        t0 = time.perf_counter()
        led.check(T, charge(f"c{i}"))
        checks.append(time.perf_counter() - t0)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        led.spend(T, charge(f"s{i}"))
    spend_s, spend_cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
    floor = Table(
        "bench_floor", MetaData(), Column("id", Integer, primary_key=True), Column("v", Integer)
    )
    floor.create(led._engine, checkfirst=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        with led._tx() as conn:
            conn.execute(insert(floor).values(v=i))
    insert_s, insert_cpu = (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
    led.close()
    q = statistics.quantiles(checks, n=100)
    return {
        "spends_s": 1 / spend_s,
        "p50": q[49] * 1e3,
        "p99": q[98] * 1e3,
        "ratio": spend_s / insert_s,
        "spend_cpu": spend_cpu * 1e3,
        "insert_cpu": insert_cpu * 1e3,
    }


def backends(size: int) -> list[tuple[str, str, str | None]]:
    """(name, url, schema to drop) for each backend to measure at this size."""
    out: list[tuple[str, str, str | None]] = [
        ("sqlite", f"sqlite:///{tempfile.mkdtemp()}/bench-{size}.sqlite", None)
    ]
    dsn = os.environ.get("VEIL_TEST_POSTGRES_DSN")
    if dsn:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with create_engine(dsn).begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in dsn else "?"
        out.append(("postgresql", f"{dsn}{sep}options=-csearch_path%3D{schema}", schema))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="1000,100000,1000000",
        help="comma-separated numbers of past events on the subject",
    )
    parser.add_argument("--n", type=int, default=200, help="spends and checks measured per row")
    args = parser.parse_args()
    print(
        f"{'backend':<11}{'past events':>12}{'spends/s':>10}{'check p50 ms':>14}"
        f"{'check p99 ms':>14}{'spend/insert':>14}{'spend CPU ms':>14}{'insert CPU ms':>15}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        for name, url, schema in backends(size):
            r = measure(url, size, args.n)
            print(
                f"{name:<11}{size:>12}{r['spends_s']:>10.1f}{r['p50']:>14.2f}"
                f"{r['p99']:>14.2f}{r['ratio']:>14.2f}x{r['spend_cpu']:>14.3f}"
                f"{r['insert_cpu']:>15.3f}",
                flush=True,
            )
            if schema:
                with create_engine(os.environ["VEIL_TEST_POSTGRES_DSN"]).begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
