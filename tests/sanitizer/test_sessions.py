"""The sanitizer's session store on SQLite and PostgreSQL: what a second replica sees, what
is purged when, and keyed answers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.sanitizer.sessions import Session, SessionStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


def session(sid: str = "s1", ttl: float = 60.0, tenant: str = "acme") -> Session:
    now = time.time()
    return Session(
        session_id=sid,
        tenant=tenant,
        subject="alice",
        dataset="faces",
        state="open",
        params={"delta": 1e-5, "weights": {"male": 2.0}},
        original=b"original-bytes",
        created_at=now,
        expires_at=now + ttl,
        candidates=[(0.5, b"c0"), (2.0, b"c1")],
    )


def test_a_second_replica_sees_the_session(url: str) -> None:
    first, second = SessionStore(url), SessionStore(url)
    first.create_schema()
    second.create_schema()  # idempotent
    first.create(session())
    found = second.get("acme", "s1", True)
    assert found.params["weights"] == {"male": 2.0} and found.original == b"original-bytes"
    assert found.candidates == [(0.5, b"c0"), (2.0, b"c1")]
    with pytest.raises(NotFound):
        second.get("globex", "s1")  # another tenant: not found, never "forbidden"
    first.close()
    second.close()


def test_release_closes_the_session_and_drops_its_images(url: str) -> None:
    store = SessionStore(url)
    store.create_schema()
    store.create(session())
    store.record_release("acme", "k", "fp", {"spend_id": "x"}, b"img", 60.0, "s1")
    with pytest.raises(FailedPrecondition):
        store.get("acme", "s1")
    counts = store.counts()
    assert counts["sanitizer_candidates"] == 0
    stored = store.find_release("acme", "k", "fp")
    assert stored is not None and stored.image == b"img"
    with pytest.raises(AlreadyExists):
        store.find_release("acme", "k", "other request")
    assert store.find_release("globex", "k", "fp") is None
    # A concurrent release that stored the same key first wins: its answer comes back.
    again = store.record_release("acme", "k", "fp", {"spend_id": "y"}, b"img2", 60.0)
    assert again.result["spend_id"] == "x"
    store.close()


def test_cancel_and_purge(url: str) -> None:
    store = SessionStore(url)
    store.create_schema()
    store.create(session("keep"))
    store.create(session("old", ttl=-1.0))
    store.create(session("gone"))
    assert store.cancel("acme", "gone") and not store.cancel("acme", "gone")
    with pytest.raises(NotFound):
        store.get("acme", "gone")
    with pytest.raises(NotFound):
        store.get("acme", "old")  # expired
    store.record_release("acme", "short", "fp", {}, b"i", -1.0)
    removed = store.purge()
    assert removed >= 4  # the expired session, its 2 candidates, the expired release
    counts = store.counts()
    assert counts["sanitizer_sessions"] == 2  # "keep" and the cancelled one (until expiry)
    assert counts["sanitizer_candidates"] == 2 and counts["sanitizer_releases"] == 0
    assert store.purge(now=time.time() + 3600) >= 1
    assert store.counts()["sanitizer_sessions"] == 0
    store.close()
