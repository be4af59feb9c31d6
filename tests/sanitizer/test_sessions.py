"""The sanitizer's session store on SQLite and PostgreSQL: what a second replica sees, what
is purged when, keyed answers, and claims that the database decides — one key, one
claimant; one session, one release — under truly overlapping calls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from services.common.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from services.sanitizer.sessions import Busy, KeyClaim, Session, SessionStore, StoredRelease
from tests.support.overlap import together


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str) -> Any:
    s = SessionStore(url)
    s.create_schema()
    yield s
    s.close()


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
    with pytest.raises(NotFound):
        second.claim("globex", None, "s1", "t0", 30.0)  # another tenant: as if unknown
    with pytest.raises(NotFound):
        second.claim("acme", "bob", "s1", "t0", 30.0)  # another subject: as if unknown
    found = second.claim("acme", "alice", "s1", "t1", 30.0, True)
    assert found.params["weights"] == {"male": 2.0} and found.original == b"original-bytes"
    assert found.candidates == [(0.5, b"c0"), (2.0, b"c1")]
    first.close()
    second.close()


def test_release_closes_the_session_and_drops_its_images(store: SessionStore) -> None:
    store.create(session())
    claim = store.claim_key("acme", "k", "fp", "key-token", 30.0, 60.0)
    assert claim == KeyClaim("key-token", taken_over=False)
    store.claim("acme", None, "s1", "session-token", 30.0)
    stored = store.finish(
        "acme", "k", "key-token", {"spend_id": "x"}, b"img", 60.0, "s1", "session-token"
    )
    assert stored.image == b"img"
    with pytest.raises(FailedPrecondition):
        store.claim("acme", None, "s1", "again", 30.0)
    assert store.counts()["sanitizer_candidates"] == 0
    assert store.claim_key("acme", "k", "fp", "t2", 30.0, 60.0) == StoredRelease(
        {"spend_id": "x"}, b"img"
    )
    with pytest.raises(AlreadyExists):
        store.claim_key("acme", "k", "other request", "t3", 30.0, 60.0)
    assert isinstance(store.claim_key("globex", "k", "fp", "t4", 30.0, 60.0), KeyClaim)


def test_a_failed_release_opens_its_session_again(store: SessionStore) -> None:
    store.create(session())
    store.claim("acme", None, "s1", "t1", 30.0)
    with pytest.raises(Aborted):
        store.claim("acme", None, "s1", "t2", 30.0)  # one is in flight
    store.unclaim("s1", "wrong-token")  # not the holder: nothing changes
    with pytest.raises(Aborted):
        store.claim("acme", None, "s1", "t2", 30.0)
    store.unclaim("s1", "t1")
    assert store.claim("acme", None, "s1", "t2", 30.0).session_id == "s1"


def test_cancel_changes_only_what_the_caller_may_touch(store: SessionStore) -> None:
    store.create(session("keep"))
    store.create(session("old", ttl=-1.0))
    store.create(session("gone"))
    assert not store.cancel("globex", None, "gone")  # another tenant: a no-op
    assert not store.cancel("acme", "bob", "gone")  # another subject: a no-op
    assert store.counts()["sanitizer_candidates"] == 6  # nothing was deleted
    assert store.cancel("acme", "alice", "gone") and not store.cancel("acme", None, "gone")
    with pytest.raises(NotFound):
        store.claim("acme", None, "gone", "t", 30.0)
    with pytest.raises(NotFound):
        store.claim("acme", None, "old", "t", 30.0)  # expired
    store.claim_key("acme", "short", "fp", "t", 30.0, -1.0)
    removed = store.purge()
    assert removed >= 4  # the expired session, its 2 candidates, the expired key
    counts = store.counts()
    assert counts["sanitizer_sessions"] == 2  # "keep" and the cancelled one (until expiry)
    assert counts["sanitizer_candidates"] == 2 and counts["sanitizer_releases"] == 0
    assert store.purge(now=time.time() + 3600) >= 1
    assert store.counts()["sanitizer_sessions"] == 0


def test_one_key_one_claimant_under_overlapping_calls(store: SessionStore) -> None:
    got = together(8, lambda i: store.claim_key("acme", "k", "fp", f"t{i}", 30.0, 60.0))
    claims = [g for g in got if isinstance(g, KeyClaim)]
    assert len(claims) == 1, got
    assert all(isinstance(g, Busy) for g in got if g is not claims[0]), got


def test_one_session_one_release_under_overlapping_calls(store: SessionStore) -> None:
    store.create(session())
    got = together(8, lambda i: store.claim("acme", None, "s1", f"t{i}", 30.0))
    won = [g for g in got if isinstance(g, Session)]
    assert len(won) == 1, got
    assert all(isinstance(g, Aborted) for g in got if g is not won[0]), got


def test_a_lapsed_claim_is_taken_over_and_its_holder_writes_nothing(
    store: SessionStore,
) -> None:
    store.create(session())
    assert store.claim_key("acme", "k", "fp", "dead", -1.0, 60.0) == KeyClaim("dead", False)
    store.claim("acme", None, "s1", "dead-session", -1.0)
    taken = store.claim_key("acme", "k", "fp", "alive", 30.0, 60.0)
    assert taken == KeyClaim("alive", taken_over=True)
    assert store.claim("acme", None, "s1", "alive-session", 30.0).session_id == "s1"
    with pytest.raises(Aborted):  # the dead holder wakes up: nothing of it is written
        store.finish("acme", "k", "dead", {"spend_id": "x"}, b"old", 60.0, "s1", "dead-session")
    store.finish("acme", "k", "alive", {"spend_id": "x"}, b"new", 60.0, "s1", "alive-session")
    # Too late again: it gets the one answer that was stored, never its own image.
    late = store.finish("acme", "k", "dead", {"spend_id": "x"}, b"old", 60.0)
    assert late.image == b"new"


def test_abandoning_a_key_forgets_it_or_lets_a_retry_take_over(store: SessionStore) -> None:
    store.claim_key("acme", "k", "fp", "t1", 30.0, 60.0)
    store.abandon_key("acme", "k", "t1", forget=True)
    assert store.claim_key("acme", "k", "other", "t2", 30.0, 60.0) == KeyClaim("t2", False)
    store.abandon_key("acme", "k", "t2", forget=False)  # maybe charged: keep the claim
    with pytest.raises(AlreadyExists):
        store.claim_key("acme", "k", "fp", "t3", 30.0, 60.0)
    assert store.claim_key("acme", "k", "other", "t3", 30.0, 60.0) == KeyClaim("t3", True)


def test_claim_columns_are_added_to_an_existing_database(tmp_path: Path) -> None:
    """A database made before claims existed gains their (nullable) columns at start-up,
    and its stored answers still replay."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE sanitizer_releases (tenant VARCHAR(255), key VARCHAR(255), "
                "fingerprint VARCHAR(64) NOT NULL, result TEXT NOT NULL, image BLOB NOT NULL, "
                "expires_at FLOAT NOT NULL, PRIMARY KEY (tenant, key))"
            )
        )
        conn.execute(
            text(
                "INSERT INTO sanitizer_releases VALUES ('acme', 'k', 'fp', '{\"a\": 1}', "
                f"x'6f6c64', {time.time() + 60})"
            )
        )
    engine.dispose()
    old = SessionStore(url)
    old.create_schema()
    assert old.claim_key("acme", "k", "fp", "t", 30.0, 60.0) == StoredRelease({"a": 1}, b"old")
    old.close()
