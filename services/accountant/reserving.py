"""Idempotent reservations: one per (tenant, idempotency key), held by its primary key.

A reservation's id is derived from its tenant and key (:func:`reservation_id`), so the
table's primary key is the "one reservation per key" constraint on SQLite and PostgreSQL
alike, with no schema change: a second Reserve with the key finds the row instead of
making another (the key is claimed in the database before any work, as Stripe's
idempotency keys are). What a Reserve does with a stored row is :func:`replay_of`'s to say;
:func:`hold` writes a new or re-armed one. Reservations stored before ids were derived
(random uuids) are never found by a key and keep working as they were.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, update

from services.accountant.events import Charge, Reservation
from services.accountant.rows import dumps
from services.accountant.schema import reservations
from services.common.errors import AlreadyExists


def reservation_id(tenant_id: str, idempotency_key: str) -> str:
    """The id of the tenant's reservation under ``idempotency_key``: the first 32 hex digits
    of sha256(tenant NUL key) (neither may hold a NUL, so the pair is unambiguous)."""
    raw = f"{tenant_id}\x00{idempotency_key}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


class Raced(Exception):
    """A concurrent Reserve stored the key's reservation after this transaction first
    looked (PostgreSQL): the transaction is run again, and then finds it."""


def stored(conn: Connection, rid: str, *, lock: bool) -> Any:
    """The reservation row ``rid`` (``lock``: ``FOR UPDATE``), or None."""
    q = select(reservations).where(reservations.c.id == rid)
    return conn.execute(q.with_for_update() if lock else q).first()


def replay_of(row: Any, charge: Charge, now: float) -> Reservation | None:
    """The answer to a Reserve of ``charge`` whose id is stored as ``row``, if it is one:
    a live (unexpired) or committed reservation of the same charge is returned as stored,
    ``replayed`` (a committed one with its ``spend_id``; no statuses: the ledger figures
    them outside its lock); of another charge it is AlreadyExists. None (no row; an
    expired or released one): the caller decides the charge against the budgets and holds
    it (:func:`hold`)."""
    if row is None:
        return None
    conflict = AlreadyExists(
        "idempotency key already used for a different charge",
        details={"idempotency_key": charge.idempotency_key},
    )
    if row.tenant_id != charge.tenant_id:  # a 128-bit collision: never another's row
        raise conflict
    live = row.status == "live" and row.expires_at > now
    if not (live or row.status == "committed"):
        return None
    original = Charge.from_json(json.loads(row.charge))
    if not original.same_charge(charge):
        raise conflict
    spend_id = row.spend_id or ""
    return Reservation(row.id, original, row.expires_at, (), replayed=True, spend_id=spend_id)


def extend(conn: Connection, rid: str, expires_at: float) -> None:
    """Extend live reservation ``rid``'s lease to ``expires_at`` (a retry of it)."""
    conn.execute(update(reservations).where(reservations.c.id == rid).values(expires_at=expires_at))


def hold(
    conn: Connection,
    rid: str,
    charge: Charge,
    budget_ids: Sequence[int],
    expires_at: float,
    *,
    rearm: bool,
) -> None:
    """Store reservation ``rid`` live until ``expires_at``: a new row, or (``rearm``) the
    expired or released row of the same id, with the new charge and budgets. On PostgreSQL a
    concurrent Reserve that inserted the id first makes the insert an IntegrityError."""
    values = {
        "charge": dumps(charge.to_json()),
        "budget_ids": dumps(list(budget_ids)),
        "status": "live",
        "expires_at": expires_at,
        "spend_id": None,
    }
    if rearm:
        conn.execute(update(reservations).where(reservations.c.id == rid).values(**values))
    else:
        conn.execute(insert(reservations).values(id=rid, tenant_id=charge.tenant_id, **values))
