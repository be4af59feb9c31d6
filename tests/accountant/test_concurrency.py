"""Many clients in two processes hammer one subject budget; a killed spender loses nothing."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from services.accountant.accounting import Composition
from services.accountant.events import Budget, Charge, Gaussian, Scope
from services.accountant.ledger import Ledger
from services.accountant.policy import Policy
from services.common.errors import BudgetExhausted

T, D, S = "acme", "faces", "alice"
SCOPES = (Scope(T), Scope(T, D), Scope(T, D, S))
SIGMA, LIMIT, DELTA = 20.0, 2.0, 1e-5
POLICY = Policy(enforce_with="rdp")


def expected_fits() -> int:
    """How many σ=20 Gaussian spends fit in ε=2 under RDP, from the math alone."""
    budget, n = Budget(Scope(T, D, S), LIMIT, DELTA), 0
    while not POLICY.status(
        budget, Composition().add(Counter({("gaussian", SIGMA): n + 1})), 0
    ).exceeds:
        n += 1
    return n


def _client(url: str, tag: str, acked: list[str]) -> None:
    led = Ledger(url, policy=POLICY)
    i = 0
    while True:
        try:
            r = led.spend(T, Charge(Gaussian(SIGMA), T, D, f"{tag}-{i}", subject_ids=(S,)))
        except BudgetExhausted:
            break
        acked.append(r.spend_id)
        i += 1
    led.close()


def _process(url: str, pid: int, threads: int, out: str) -> None:
    acked: list[str] = []
    workers = [
        threading.Thread(target=_client, args=(url, f"p{pid}t{t}", acked)) for t in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    Path(out).write_text("\n".join(acked))


def _setup(url: str) -> Ledger:
    led = Ledger(url, policy=POLICY)
    led.create_schema()
    for scope in SCOPES:
        led.budgets.put(T, Budget(scope, 1e6 if scope.kind != "subject" else LIMIT, DELTA))
    return led


@pytest.mark.slow
def test_concurrent_spends_never_overspend(db_url: str, tmp_path: Path) -> None:
    led = _setup(db_url)
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"acked{p}.txt") for p in range(2)]
    procs = [ctx.Process(target=_process, args=(db_url, p, 4, outs[p])) for p in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    acked = [line for o in outs for line in Path(o).read_text().split("\n") if line]
    status = led.budgets.remaining(T, Scope(T, D, S))
    assert status.epsilon_rdp <= LIMIT
    assert len(acked) == expected_fits() == led.audit.verify(T, Scope(T, D, S)).event_count
    stored = set()
    token = ""
    while True:
        page = led.history(T, Scope(T, D, S), page_size=1000, page_token=token)
        stored |= {e.spend_id for e in page.events}
        if not (token := page.next_page_token):
            break
    assert stored == set(acked)
    led.close()


def _spend_forever(url: str, ack_path: str) -> None:
    led = Ledger(url, policy=POLICY)
    with open(ack_path, "a") as ack:
        for i in range(10**9):
            r = led.spend(T, Charge(Gaussian(400.0), T, D, f"kill-{i}", subject_ids=(S,)))
            ack.write(r.spend_id + "\n")
            ack.flush()
            os.fsync(ack.fileno())


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_spend(db_url: str, tmp_path: Path) -> None:
    led = _setup(db_url)
    ack = tmp_path / "acks.txt"
    ack.touch()
    proc = mp.get_context("spawn").Process(target=_spend_forever, args=(db_url, str(ack)))
    proc.start()
    deadline = time.time() + 60
    while len(ack.read_text().split()) < 20 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    acked = ack.read_text().split()
    assert len(acked) >= 20
    report = led.audit.verify(T, Scope(T, D, S))
    assert report.ok
    page = led.history(T, Scope(T, D, S), page_size=1000)
    stored = {e.spend_id for e in page.events}
    assert set(acked) <= stored and report.event_count == len(stored)
    led.close()
