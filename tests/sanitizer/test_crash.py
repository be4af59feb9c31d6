"""kill -9 under keyed load: the sanitizer (or the accountant) is killed twice at seeded
moments while callers send keyed Sanitize calls and retry each key until it is answered.
Every key must end charged exactly once: one ledger event under the key's accountant key,
none other, and a last retry of each returns the very image and spend first acknowledged.

Both services run as ``veil serve`` processes (:mod:`tests.support.processes`) on short
leases, so that a claim or reservation left by a dead process lapses within the test; the
sanitizer's session database is SQLite or PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc, common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.imaging import encode_image
from services.kernels.data.synthfaces import SynthFaces
from tests.sanitizer.conftest import DATASET, SERVICE_TOKEN, TENANT_TOKEN, TOKENS
from tests.support.processes import ServiceProcess
from tests.support.server import bearer, free_port

pytestmark = pytest.mark.slow

KEYS, CLIENTS, SUBJECTS = 60, 3, 6
KILL_AFTER = ((8, 20), (30, 45))
"""Kill n happens once this many keys (a seeded draw in the range) were acknowledged."""
CALL_TIMEOUT_S = 10.0
"""Per call: above a loaded machine's slowest answer, so that callers do not pile up work."""
LOAD_TIMEOUT_S = 90.0
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def accountant_key(key: str) -> str:
    """The accountant's idempotency key of a keyed Sanitize (as the sanitizer derives it)."""
    return f"sanitizer/key/{hashlib.sha256(key.encode()).hexdigest()}"


@pytest.fixture(scope="module")
def face_png() -> bytes:
    return encode_image(SynthFaces(n=4, seed=7, resolution=48).pixels(0))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sanitizer.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@dataclass
class Stack:
    accountant: ServiceProcess
    sanitizer: ServiceProcess

    def tails(self) -> str:
        return f"{self.accountant.tail()}\n{self.sanitizer.tail()}"


@pytest.fixture
def stack(tmp_path: Path, sessions_url: str) -> Iterator[Stack]:
    """An accountant on a SQLite ledger, with a budget nothing exceeds, and a sanitizer
    charging it, each ``veil serve`` in its own process."""
    a_port, s_port = free_port(), free_port()
    accountant = ServiceProcess(
        "accountant",
        a_port,
        {
            "VEIL_ACCOUNTANT_PORT": str(a_port),
            "VEIL_ACCOUNTANT_METRICS_PORT": "0",
            "VEIL_ACCOUNTANT_TOKENS": json.dumps({t: g.model_dump() for t, g in TOKENS.items()}),
            "VEIL_ACCOUNTANT_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            "VEIL_ACCOUNTANT_LOG_LEVEL": "INFO",
        },
        tmp_path / "logs",
    )
    sanitizer = ServiceProcess(
        "sanitizer",
        s_port,
        {
            "VEIL_SANITIZER_PORT": str(s_port),
            "VEIL_SANITIZER_METRICS_PORT": "0",
            "VEIL_SANITIZER_TOKENS": json.dumps(
                {t: g.model_dump() for t, g in TOKENS.items() if not g.delegate}
            ),
            "VEIL_SANITIZER_DATABASE_URL": sessions_url,
            "VEIL_SANITIZER_ACCOUNTANT_URL": accountant.target,
            "VEIL_SANITIZER_ACCOUNTANT_TOKEN": SERVICE_TOKEN,
            "VEIL_SANITIZER_ACCOUNTANT_TIMEOUT_S": "2",
            "VEIL_SANITIZER_DEFAULT_DDIM_STEPS": "2",
            "VEIL_SANITIZER_CLAIM_LEASE_S": "2",
            "VEIL_SANITIZER_RESERVATION_LEASE_S": "5",
            "VEIL_SANITIZER_IDEMPOTENCY_WAIT_S": "1",
            "VEIL_SANITIZER_LOG_LEVEL": "INFO",
            "VEIL_INFERENCE_BACKEND": "local",
            # One kernel thread per call: concurrent calls on a small machine do not
            # oversubscribe its cores (which slows every call several-fold).
            "OMP_NUM_THREADS": "1",
        },
        tmp_path / "logs",
    )
    try:
        accountant.start()
        put_budgets(accountant.target)
        sanitizer.start()
        yield Stack(accountant, sanitizer)
    finally:
        sanitizer.stop()
        accountant.stop()


def put_budgets(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = accountant_pb2_grpc.AccountantStub(channel)
        for scope, default in (
            (apb.BudgetScope(tenant_id="acme"), None),
            (
                apb.BudgetScope(tenant_id="acme", dataset_id=DATASET),
                apb.SubjectDefault(epsilon=1e4, delta=1e-5),
            ),
        ):
            stub.PutBudget(
                apb.PutBudgetRequest(
                    budget=apb.Budget(scope=scope, epsilon=1e6, delta=1e-5, subject_default=default)
                ),
                metadata=bearer(TENANT_TOKEN),
            )


@dataclass(frozen=True)
class Answer:
    image: bytes
    spend_id: str
    replayed: bool


class Callers:
    """Client threads that each take keys from a shared list and retry every key (same
    request, same key) until it is answered; what they were answered and what they saw."""

    def __init__(self, target: str, keys: list[str], face_png: bytes) -> None:
        self.target, self.face_png = target, face_png
        self.todo = list(reversed(keys))
        self.taken: list[str] = []
        self.acked: dict[str, Answer] = {}
        self.failed: dict[str, str] = {}
        self.calls: Counter[str] = Counter()
        """Every call's outcome: OK or its status."""
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + LOAD_TIMEOUT_S
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        self.started = self.ended = 0.0

    def request(self, key: str) -> pb.SanitizeRequest:
        return pb.SanitizeRequest(
            dataset_id=DATASET,
            subject_id=f"s{int(key.rsplit('-', 1)[1]) % SUBJECTS}",
            image=common_pb2.Image(data=self.face_png),
            delta=1e-5,
            epsilon=1.0,
            face=pb.FaceSelection(whole_image=True),
            idempotency_key=key,
        )

    def ask(self, stub: sanitizer_pb2_grpc.SanitizerStub, key: str) -> Answer:
        """The key's answer, retried on every transient status until the deadline."""
        while True:
            try:
                out = stub.Sanitize(
                    self.request(key), metadata=bearer(TENANT_TOKEN), timeout=CALL_TIMEOUT_S
                )
                with self.lock:
                    self.calls["OK"] += 1
                return Answer(out.image.data, out.spend_id, out.replayed)
            except grpc.RpcError as exc:
                code = exc.code()
                with self.lock:
                    self.calls[code.name] += 1
                if code not in RETRYABLE or time.monotonic() > self.deadline:
                    raise
                # A service that is down: try again soon; one that is busy: give it a moment.
                if self.stopped.wait(0.05 if code == grpc.StatusCode.UNAVAILABLE else 0.3):
                    raise

    def _client(self) -> None:
        with grpc.insecure_channel(self.target, options=FAST_RECONNECT) as channel:
            stub = sanitizer_pb2_grpc.SanitizerStub(channel)
            while True:
                with self.lock:
                    if not self.todo or self.stopped.is_set():
                        return
                    key = self.todo.pop()
                    self.taken.append(key)
                try:
                    answer = self.ask(stub, key)
                except grpc.RpcError as exc:
                    with self.lock:
                        self.failed[key] = f"{exc.code().name}: {exc.details()}"
                    continue
                with self.lock:
                    self.acked[key] = answer

    def start(self) -> None:
        self.started = time.monotonic()
        for t in self.threads:
            t.start()

    def in_flight(self) -> list[str]:
        with self.lock:
            return [k for k in self.taken if k not in self.acked and k not in self.failed]

    def wait_acked(self, n: int) -> None:
        while len(self.acked) + len(self.failed) < n and time.monotonic() < self.deadline:
            time.sleep(0.01)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=max(0.0, self.deadline - time.monotonic()) + CALL_TIMEOUT_S)
        self.ended = time.monotonic()

    def stop(self) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=CALL_TIMEOUT_S + 1)


def ledger_events(target: str) -> list[apb.LedgerEvent]:
    """Every event of the tenant, oldest first, page by page."""
    found: list[apb.LedgerEvent] = []
    token = ""
    with grpc.insecure_channel(target) as channel:
        stub = accountant_pb2_grpc.AccountantStub(channel)
        while True:
            page = stub.ListEvents(
                apb.ListEventsRequest(
                    scope=apb.BudgetScope(tenant_id="acme"),
                    page=common_pb2.PageRequest(page_size=1000, page_token=token),
                ),
                metadata=bearer(TENANT_TOKEN),
            )
            found += page.events
            if not (token := page.page.next_page_token):
                return found


def charges_per_key(events: list[apb.LedgerEvent], keys: list[str]) -> Counter[str]:
    """Ledger events per caller key (an event under any other key counts under its own)."""
    ours = {accountant_key(k): k for k in keys}
    return Counter(ours.get(e.charge.idempotency_key, e.charge.idempotency_key) for e in events)


def kill_twice(victim: ServiceProcess, callers: Callers, rng: random.Random) -> list[str]:
    """SIGKILL ``victim`` at the seeded moments of :data:`KILL_AFTER`, each time starting it
    again on the same port and database; what each kill interrupted."""
    kills = []
    for low, high in KILL_AFTER:
        callers.wait_acked(rng.randint(low, high))
        time.sleep(rng.uniform(0.0, 0.3))
        acked, flying = len(callers.acked), callers.in_flight()
        victim.kill()
        down = time.monotonic()
        victim.start()
        kills.append(
            f"after {acked} acks with {flying} in flight, down {time.monotonic() - down:.1f} s"
        )
    return kills


def report(victim: str, kills: list[str], callers: Callers, per_key: Counter[str]) -> str:
    failures: dict[str, list[str]] = {}
    for key, error in sorted(callers.failed.items()):
        failures.setdefault(error, []).append(key)
    replayed = sum(a.replayed for a in callers.acked.values())
    return (
        f"kill -9 of the {victim}: {kills}; {len(callers.acked)} keys acknowledged in "
        f"{callers.ended - callers.started:.1f} s ({replayed} answers replayed); calls "
        f"{dict(callers.calls)}; failed keys {failures}; {sum(per_key.values())} ledger "
        f"events for {len(per_key)} keys; charged more than once: "
        f"{ {k: n for k, n in per_key.items() if n > 1} }; charged, never acknowledged: "
        f"{sorted(k for k in per_key if k not in callers.acked)}"
    )


# Each victim on one database (the other pairs add minutes and no path: the sanitizer's
# claims are the same SQL on both, and the accountant's ledger does not depend on it).
@pytest.mark.parametrize(
    ("sessions_url", "victim"),
    [
        pytest.param("postgres", "sanitizer", marks=pytest.mark.postgres),
        ("sqlite", "accountant"),
    ],
    indirect=["sessions_url"],
)
def test_kill_9_under_keyed_load_charges_every_key_once(
    stack: Stack, victim: str, face_png: bytes
) -> None:
    keys = [f"{victim}-{i:03d}" for i in range(KEYS)]
    callers = Callers(stack.sanitizer.target, keys, face_png)
    callers.start()
    try:
        kills = kill_twice(getattr(stack, victim), callers, random.Random(f"kill-9-{victim}"))
        callers.join()
    finally:
        callers.stop()
    events = ledger_events(stack.accountant.target)
    per_key = charges_per_key(events, keys)
    summary = report(victim, kills, callers, per_key)
    print(summary)
    why = f"{summary}\n{stack.tails()}"
    assert max(per_key.values(), default=0) <= 1 and set(per_key) <= set(keys), why
    assert sorted(callers.acked) == keys, why  # every key answered, its caller retrying
    assert per_key == Counter(keys) and len(events) == KEYS, why  # ... and charged once
    assert {e.spend_id for e in events} == {a.spend_id for a in callers.acked.values()}, why

    retry = Callers(stack.sanitizer.target, keys, face_png)  # a last retry of every key
    with grpc.insecure_channel(stack.sanitizer.target) as channel:
        again = {k: retry.ask(sanitizer_pb2_grpc.SanitizerStub(channel), k) for k in keys}
    other = [k for k in keys if again[k] != replace(callers.acked[k], replayed=True)]
    assert not other, f"retries not answered as first acknowledged (replayed): {other}\n{why}"
    assert len(ledger_events(stack.accountant.target)) == KEYS, why


@pytest.mark.parametrize(
    "sessions_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_two_sanitizer_processes_on_one_database_charge_one_key_once(
    stack: Stack, tmp_path: Path, face_png: bytes
) -> None:
    """Several replicas on one session database (PostgreSQL: several replicas are its
    deployment; SQLite is one replica's): one key sent to both at once by 8 threads is one
    charge and one image; one session released through both at once is one release."""
    port = free_port()
    env = {k: v for k, v in stack.sanitizer.env.items() if k.startswith(("VEIL_", "OMP_"))}
    env.update(VEIL_SANITIZER_PORT=str(port), VEIL_SANITIZER_IDEMPOTENCY_WAIT_S="30")
    second = ServiceProcess("sanitizer", port, env, tmp_path / "logs-2").start()
    targets = [stack.sanitizer.target, second.target]
    request = pb.SanitizeRequest(
        dataset_id=DATASET,
        subject_id="replicas",
        image=common_pb2.Image(data=face_png),
        epsilon=1.0,
        delta=1e-5,
        face=pb.FaceSelection(whole_image=True),
        idempotency_key="one-key-two-replicas",
    )
    channels = [grpc.insecure_channel(t) for t in targets]
    stubs = [sanitizer_pb2_grpc.SanitizerStub(c) for c in channels]
    barrier = threading.Barrier(8)
    answers: list[object] = [None] * 8

    def call(i: int, fn: object) -> None:
        barrier.wait()
        for _ in range(40):  # ABORTED: the first is still in flight; retry with the key
            try:
                answers[i] = fn(stubs[i % 2])  # type: ignore[operator]
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:  # type: ignore[attr-defined]
                    answers[i] = exc
                    return
                time.sleep(0.25)

    def race(fn: object) -> list[object]:
        threads = [threading.Thread(target=call, args=(i, fn)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return list(answers)

    try:
        got = race(lambda stub: stub.Sanitize(request, metadata=bearer(TENANT_TOKEN)))
        assert all(isinstance(a, pb.ReleaseResponse) for a in got), got
        assert len({a.image.data for a in got}) == 1  # type: ignore[union-attr]
        assert len({a.spend_id for a in got}) == 1  # type: ignore[union-attr]
        preview = stubs[0].CreatePreview(
            pb.CreatePreviewRequest(
                dataset_id=DATASET,
                subject_id="replicas",
                image=common_pb2.Image(data=face_png),
                strengths=[1.0],
                delta=1e-5,
                face=pb.FaceSelection(whole_image=True),
            ),
            metadata=bearer(TENANT_TOKEN),
        )
        released = race(
            lambda stub: stub.Release(
                pb.ReleaseRequest(session_id=preview.session_id, epsilon=1.0),
                metadata=bearer(TENANT_TOKEN),
            )
        )
        ok = [a for a in released if isinstance(a, pb.ReleaseResponse)]
        refused = {a.code() for a in released if isinstance(a, grpc.RpcError)}  # type: ignore[attr-defined]
        assert len(ok) == 1 and refused == {grpc.StatusCode.FAILED_PRECONDITION}, released
        with grpc.insecure_channel(stack.accountant.target) as channel:
            scope = apb.BudgetScope(tenant_id="acme", dataset_id=DATASET, subject_id="replicas")
            events = accountant_pb2_grpc.AccountantStub(channel).ListEvents(
                apb.ListEventsRequest(scope=scope), metadata=bearer(TENANT_TOKEN)
            )
        assert len(events.events) == 2, f"{events}\n{stack.tails()}\n{second.tail()}"
    finally:
        for c in channels:
            c.close()
        second.stop()
