"""Preview sessions and idempotent releases, in a database every replica shares.

SQLite (one replica, the default) or PostgreSQL (several: a Release may land on any
replica, and a restart loses nothing). Three tables:

- ``sanitizer_sessions``: who may see it (tenant, subject), the dataset, the request's
  parameters, the original image (needed for a fresh draw and the paste-back), the state
  (open → releasing → released, or open → cancelled), the claim of the release in flight
  and when it expires;
- ``sanitizer_candidates``: the k preview images of a session;
- ``sanitizer_releases``: one row per idempotency key of a tenant, claimed *before* any
  work (state ``pending``, with the claimant's token and a lease), then holding the answer
  (state ``done``: image and receipt) for the idempotency window, so that a retry returns
  the same image and charges nothing.

Claims are decided by the database, never by a read-then-write in Python: a key is claimed
by inserting its row (the primary key admits one; a concurrent insert loses, PostgreSQL
raising a unique violation, SQLite serialising writers with ``BEGIN IMMEDIATE``), a session
by one ``UPDATE … WHERE state = 'open'`` that names the tenant (and the subject of a
subject-bound token) in the same statement. A claim whose lease lapsed (its holder crashed)
may be taken over; every later write of the holder names its token, so a holder that lost
its claim writes nothing.

Nothing is kept longer than it is needed: a session's original and candidates are deleted
when it is released, cancelled or expires (:meth:`SessionStore.purge`, run periodically);
a release's image when its idempotency window ends. Times are seconds since the epoch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from services.common.db import TableStore
from services.common.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound

metadata = MetaData()

sessions = Table(
    "sanitizer_sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("tenant", String(255), nullable=False, index=True),
    Column("subject", String(255), nullable=False),
    Column("dataset", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("params", Text, nullable=False),
    Column("original", LargeBinary, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("claim", String(64), nullable=True),
    Column("claimed_until", Float, nullable=True),
)

candidates = Table(
    "sanitizer_candidates",
    metadata,
    Column(
        "session_id",
        String(64),
        ForeignKey("sanitizer_sessions.session_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("idx", Integer, primary_key=True),
    Column("epsilon", Float, nullable=False),
    Column("image", LargeBinary, nullable=False),
)

releases = Table(
    "sanitizer_releases",
    metadata,
    Column("tenant", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("result", Text, nullable=False),
    Column("image", LargeBinary, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    # ``pending`` while claimed, ``done`` with the answer; NULL = done (a row written before
    # claims existed). Pending rows hold an empty image and result.
    Column("state", String(16), nullable=True),
    Column("owner", String(64), nullable=True),
    Column("claimed_until", Float, nullable=True),
)

OPEN, RELEASING, RELEASED, CANCELLED = "open", "releasing", "released", "cancelled"
PENDING, DONE = "pending", "done"


@dataclass
class Session:
    session_id: str
    tenant: str
    subject: str
    dataset: str
    state: str
    params: dict[str, Any]
    original: bytes | None
    created_at: float
    expires_at: float
    candidates: list[tuple[float, bytes]] = field(default_factory=list)
    """(epsilon, image) per candidate, in index order."""


@dataclass(frozen=True)
class StoredRelease:
    result: dict[str, Any]
    image: bytes


@dataclass(frozen=True)
class KeyClaim:
    """This caller now holds the key: ``taken_over`` when it took a lapsed claim over (an
    earlier holder crashed, and its image never left)."""

    token: str
    taken_over: bool


@dataclass(frozen=True)
class Busy:
    """Another caller holds the key's claim until ``until``: wait for its answer."""

    until: float


class _Lost(Exception):
    """A claim this caller held was taken over (rolls its transaction back)."""


class SessionStore(TableStore):
    """The sanitizer's tables on one engine; every method is one short transaction."""

    metadata = metadata

    # -- sessions --------------------------------------------------------------------------

    def create(self, session: Session) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(sessions).values(
                    session_id=session.session_id,
                    tenant=session.tenant,
                    subject=session.subject,
                    dataset=session.dataset,
                    state=OPEN,
                    params=json.dumps(session.params, sort_keys=True),
                    original=session.original,
                    created_at=session.created_at,
                    expires_at=session.expires_at,
                )
            )
            if session.candidates:
                conn.execute(
                    insert(candidates),
                    [
                        {"session_id": session.session_id, "idx": i, "epsilon": e, "image": img}
                        for i, (e, img) in enumerate(session.candidates)
                    ],
                )

    @staticmethod
    def _owned(tenant: str, subject: str | None, session_id: str) -> Any:
        """The rows a caller may touch: its tenant's, and its subject's when the token is
        bound to one. Anything else is answered exactly as an unknown id."""
        cond = and_(sessions.c.session_id == session_id, sessions.c.tenant == tenant)
        return cond if subject is None else and_(cond, sessions.c.subject == subject)

    def claim(
        self,
        tenant: str,
        subject: str | None,
        session_id: str,
        token: str,
        lease_s: float,
        with_candidates: bool = False,
    ) -> Session:
        """Claim an open session for one release (or take over a lapsed claim), in one
        conditional UPDATE. NOT_FOUND when unknown, another tenant's or subject's, expired
        or cancelled; FAILED_PRECONDITION when already released; ABORTED while another
        release of it is in flight."""
        now = time.time()
        with self._tx() as conn:
            claimable = or_(
                sessions.c.state == OPEN,
                and_(sessions.c.state == RELEASING, sessions.c.claimed_until <= now),
            )
            done = conn.execute(
                update(sessions)
                .where(self._owned(tenant, subject, session_id), sessions.c.expires_at > now)
                .where(claimable)
                .values(state=RELEASING, claim=token, claimed_until=now + lease_s)
            ).rowcount
            row = conn.execute(
                select(sessions).where(self._owned(tenant, subject, session_id))
            ).first()
            if not done:
                raise _unclaimable(row, session_id, now)
            assert row is not None
            found = _session(row)
            if with_candidates:
                found.candidates = _candidates(conn, session_id)
            return found

    def unclaim(self, session_id: str, token: str) -> None:
        """Give a claimed session back (its release failed): open again, if still ours."""
        with self._tx() as conn:
            conn.execute(
                update(sessions)
                .where(sessions.c.session_id == session_id, sessions.c.claim == token)
                .values(state=OPEN, claim=None, claimed_until=None)
            )

    def cancel(self, tenant: str, subject: str | None, session_id: str) -> bool:
        """Discard an open session (candidates and original); False if there was none that
        this caller may touch (then nothing changes)."""
        with self._tx() as conn:
            done = conn.execute(
                update(sessions)
                .where(self._owned(tenant, subject, session_id), sessions.c.state == OPEN)
                .values(state=CANCELLED, original=None)
            ).rowcount
            if done:
                conn.execute(delete(candidates).where(candidates.c.session_id == session_id))
            return bool(done)

    # -- keyed releases --------------------------------------------------------------------

    def claim_key(
        self, tenant: str, key: str, fingerprint: str, token: str, lease_s: float, ttl_s: float
    ) -> KeyClaim | StoredRelease | Busy:
        """Claim an idempotency key before any work: the stored answer when it is done,
        :class:`Busy` while another caller holds it, a :class:`KeyClaim` otherwise (a new
        key, or a lapsed claim taken over). ALREADY_EXISTS when the key was used for
        another request."""
        try:
            return self._claim_key(tenant, key, fingerprint, token, lease_s, ttl_s)
        except IntegrityError:  # PostgreSQL: a concurrent first claim won the insert
            return self._claim_key(tenant, key, fingerprint, token, lease_s, ttl_s)

    def _claim_key(
        self, tenant: str, key: str, fingerprint: str, token: str, lease_s: float, ttl_s: float
    ) -> KeyClaim | StoredRelease | Busy:
        now = time.time()
        mine = and_(releases.c.tenant == tenant, releases.c.key == key)
        with self._tx() as conn:
            row = conn.execute(select(releases).where(mine).with_for_update()).first()
            if row is not None and row.expires_at <= now:
                conn.execute(delete(releases).where(mine))
                row = None
            if row is None:
                conn.execute(
                    insert(releases).values(
                        tenant=tenant,
                        key=key,
                        fingerprint=fingerprint,
                        result="{}",
                        image=b"",
                        expires_at=now + ttl_s,
                        state=PENDING,
                        owner=token,
                        claimed_until=now + lease_s,
                    )
                )
                return KeyClaim(token, taken_over=False)
            if row.fingerprint != fingerprint:
                raise AlreadyExists(
                    "idempotency key already used for another request",
                    details={"field": "idempotency_key"},
                )
            if row.state != PENDING:
                return StoredRelease(json.loads(row.result), row.image)
            if row.claimed_until is not None and row.claimed_until > now:
                return Busy(row.claimed_until)
            conn.execute(
                update(releases)
                .where(mine, releases.c.owner == row.owner)
                .values(owner=token, claimed_until=now + lease_s)
            )
            return KeyClaim(token, taken_over=True)

    def abandon_key(self, tenant: str, key: str, token: str, *, forget: bool) -> None:
        """Give a claimed key back after a failure: deleted when nothing was charged under
        it (``forget``: a retry starts afresh), else left pending with its lease lapsed, so
        that a retry takes it over at once and finishes under the same charge."""
        mine = and_(releases.c.tenant == tenant, releases.c.key == key, releases.c.owner == token)
        with self._tx() as conn:
            if forget:
                conn.execute(delete(releases).where(mine, releases.c.state == PENDING))
            else:
                conn.execute(update(releases).where(mine).values(claimed_until=0.0))

    def finish(
        self,
        tenant: str,
        key: str,
        token: str,
        result: dict[str, Any],
        image: bytes,
        ttl_s: float,
        session_id: str | None = None,
        session_token: str = "",
    ) -> StoredRelease:
        """Store a keyed release's answer (if ``key``, claimed with ``token``) and close its
        session (if ``session_id``, claimed with ``session_token``) in one transaction, each
        only while this caller still holds that claim.
        A holder that lost a claim writes nothing: the stored answer of whoever finished is
        returned (that one image leaves), or ABORTED when there is none yet."""
        now = time.time()
        try:
            with self._tx() as conn:
                if session_id is not None and not _close(conn, session_id, session_token):
                    raise _Lost
                if key and not _store(conn, tenant, key, token, result, image, now + ttl_s):
                    raise _Lost  # rolls the session's update back too
        except _Lost:
            return self._lost(tenant, key, session_id)
        return StoredRelease(result, image)

    def _lost(self, tenant: str, key: str, session_id: str | None) -> StoredRelease:
        if key:
            with self._tx(readonly=True) as conn:
                row = conn.execute(
                    select(releases).where(releases.c.tenant == tenant, releases.c.key == key)
                ).first()
            if row is not None and row.state != PENDING:
                return StoredRelease(json.loads(row.result), row.image)
        raise Aborted(
            "this release was taken over by a retry after its claim lapsed; retry with the "
            "same idempotency key to get the image that was released",
            details={"session_id": session_id or ""},
        )

    # -- housekeeping ----------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        """Delete expired sessions (with their candidates and original) unless a release
        holds one, and releases past their idempotency window. Returns the rows."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            held = and_(sessions.c.state == RELEASING, sessions.c.claimed_until > now)
            stale = and_(sessions.c.expires_at <= now, ~held)
            expired = select(sessions.c.session_id).where(stale)
            gone = conn.execute(
                delete(candidates).where(candidates.c.session_id.in_(expired))
            ).rowcount
            gone += conn.execute(delete(sessions).where(stale)).rowcount
            gone += conn.execute(delete(releases).where(releases.c.expires_at <= now)).rowcount
            return int(gone)

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests and the purge metric)."""
        with self._tx(readonly=True) as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (sessions, candidates, releases)
            }


def _session(row: Any) -> Session:
    return Session(
        row.session_id,
        row.tenant,
        row.subject,
        row.dataset,
        row.state,
        json.loads(row.params),
        row.original,
        row.created_at,
        row.expires_at,
    )


def _close(conn: Connection, session_id: str, token: str) -> bool:
    """Mark a session this caller claimed (``token``) released and drop its images."""
    closed = conn.execute(
        update(sessions)
        .where(sessions.c.session_id == session_id, sessions.c.claim == token)
        .values(state=RELEASED, original=None, claim=None, claimed_until=None)
    ).rowcount
    if closed:
        conn.execute(delete(candidates).where(candidates.c.session_id == session_id))
    return bool(closed)


def _store(
    conn: Connection,
    tenant: str,
    key: str,
    token: str,
    result: dict[str, Any],
    image: bytes,
    expires_at: float,
) -> bool:
    """Store the answer under a key this caller claimed (``token``)."""
    stored = conn.execute(
        update(releases)
        .where(
            releases.c.tenant == tenant,
            releases.c.key == key,
            releases.c.owner == token,
            releases.c.state == PENDING,
        )
        .values(
            state=DONE,
            result=json.dumps(result, sort_keys=True),
            image=image,
            owner=None,
            claimed_until=None,
            expires_at=expires_at,
        )
    ).rowcount
    return bool(stored)


def _candidates(conn: Connection, session_id: str) -> list[tuple[float, bytes]]:
    rows = conn.execute(
        select(candidates.c.epsilon, candidates.c.image)
        .where(candidates.c.session_id == session_id)
        .order_by(candidates.c.idx)
    )
    return [(r.epsilon, r.image) for r in rows]


def _unclaimable(row: Any, session_id: str, now: float) -> Exception:
    """Why a session this caller may see (``row``, or None) cannot be claimed."""
    if row is None or row.state == CANCELLED or (row.state == OPEN and row.expires_at <= now):
        return NotFound(f"preview session {session_id!r} not found (or expired)")
    if row.state == RELEASED:
        return FailedPrecondition(
            f"preview session {session_id!r} was already released; a session releases one "
            "image (retry with the same idempotency key to get it again)"
        )
    if row.state == RELEASING and row.expires_at <= now:
        return NotFound(f"preview session {session_id!r} not found (or expired)")
    return Aborted(
        f"a release of preview session {session_id!r} is in flight; retry (with the same "
        "idempotency key, to get its image)",
        details={"session_id": session_id},
    )
