"""Preview sessions and idempotent releases, in a database every replica shares.

SQLite (one replica, the default) or PostgreSQL (several: a Release may land on any
replica, and a restart loses nothing). Three tables:

- ``sanitizer_sessions``: who may see it (tenant, subject), the dataset, the request's
  parameters, the original image (needed for a fresh draw and the paste-back), the state
  (open → released | cancelled) and when it expires;
- ``sanitizer_candidates``: the k preview images of a session;
- ``sanitizer_releases``: a keyed release's answer (image and receipt), kept for the
  idempotency window so that a retry returns the same image and charges nothing.

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
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from services.common.db import TableStore
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound

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
)

OPEN, RELEASED, CANCELLED = "open", "released", "cancelled"


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

    def get(self, tenant: str, session_id: str, with_candidates: bool = False) -> Session:
        """The open session; NOT_FOUND when unknown, another tenant's, expired, cancelled;
        FAILED_PRECONDITION when it was already released."""
        now = time.time()
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(sessions).where(
                    sessions.c.session_id == session_id, sessions.c.tenant == tenant
                )
            ).first()
            if row is None or row.state == CANCELLED or row.expires_at <= now:
                raise NotFound(f"preview session {session_id!r} not found (or expired)")
            if row.state == RELEASED:
                raise FailedPrecondition(
                    f"preview session {session_id!r} was already released; a session releases "
                    "one image (retry with the same idempotency key to get it again)"
                )
            found = Session(
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
            if with_candidates:
                rows = conn.execute(
                    select(candidates.c.epsilon, candidates.c.image)
                    .where(candidates.c.session_id == session_id)
                    .order_by(candidates.c.idx)
                )
                found.candidates = [(r.epsilon, r.image) for r in rows]
            return found

    def cancel(self, tenant: str, session_id: str) -> bool:
        """Discard an open session (candidates and original); False if there was none."""
        with self._tx() as conn:
            done = conn.execute(
                update(sessions)
                .where(
                    sessions.c.session_id == session_id,
                    sessions.c.tenant == tenant,
                    sessions.c.state == OPEN,
                )
                .values(state=CANCELLED, original=None)
            ).rowcount
            conn.execute(delete(candidates).where(candidates.c.session_id == session_id))
            return bool(done)

    def exists(self, tenant: str, session_id: str) -> bool:
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(sessions.c.session_id).where(
                    sessions.c.session_id == session_id, sessions.c.tenant == tenant
                )
            ).first()
            return row is not None

    # -- releases --------------------------------------------------------------------------

    def find_release(self, tenant: str, key: str, fingerprint: str) -> StoredRelease | None:
        """The stored answer of a keyed release; ALREADY_EXISTS when the key was used for
        another request."""
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(releases).where(
                    releases.c.tenant == tenant,
                    releases.c.key == key,
                    releases.c.expires_at > time.time(),
                )
            ).first()
        if row is None:
            return None
        if row.fingerprint != fingerprint:
            raise AlreadyExists(
                "idempotency key already used for another request",
                details={"field": "idempotency_key"},
            )
        return StoredRelease(json.loads(row.result), row.image)

    def record_release(
        self,
        tenant: str,
        key: str,
        fingerprint: str,
        result: dict[str, Any],
        image: bytes,
        ttl_s: float,
        session_id: str | None = None,
    ) -> StoredRelease:
        """Store a keyed release (if ``key``) and close its session (if ``session_id``) in
        one transaction. A concurrent release under the same key that stored first wins:
        its answer is returned (the caller sends that one, so one image leaves)."""
        try:
            with self._tx() as conn:
                if session_id is not None:
                    conn.execute(
                        update(sessions)
                        .where(sessions.c.session_id == session_id)
                        .values(state=RELEASED, original=None)
                    )
                    conn.execute(delete(candidates).where(candidates.c.session_id == session_id))
                if key:
                    conn.execute(
                        delete(releases).where(
                            releases.c.tenant == tenant,
                            releases.c.key == key,
                            releases.c.expires_at <= time.time(),
                        )
                    )
                    conn.execute(
                        insert(releases).values(
                            tenant=tenant,
                            key=key,
                            fingerprint=fingerprint,
                            result=json.dumps(result, sort_keys=True),
                            image=image,
                            expires_at=time.time() + ttl_s,
                        )
                    )
        except IntegrityError:
            stored = self.find_release(tenant, key, fingerprint)
            if stored is None:
                raise
            return stored
        return StoredRelease(result, image)

    # -- housekeeping ----------------------------------------------------------------------

    def purge(self, now: float | None = None) -> int:
        """Delete expired sessions (with their candidates and original), closed sessions
        past their expiry, and releases past their idempotency window. Returns the rows."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            expired = select(sessions.c.session_id).where(sessions.c.expires_at <= now)
            gone = conn.execute(
                delete(candidates).where(candidates.c.session_id.in_(expired))
            ).rowcount
            gone += conn.execute(delete(sessions).where(sessions.c.expires_at <= now)).rowcount
            gone += conn.execute(delete(releases).where(releases.c.expires_at <= now)).rowcount
            return int(gone)

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests and the purge metric)."""
        with self._tx(readonly=True) as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (sessions, candidates, releases)
            }
