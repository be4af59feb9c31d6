"""Idempotent reservations: one per (tenant, idempotency key), held by its primary key.

A reservation's id is derived from its tenant and key (:func:`reservation_id`), so the
table's primary key is the "one reservation per key" constraint on SQLite and PostgreSQL
alike, with no schema change: a second Reserve with the key finds the row instead of
making another (the key is claimed in the database before any work, as Stripe's
idempotency keys are). What a Reserve does with a stored row is :func:`replay_of`'s to say;
:func:`hold` writes a new or re-armed one. Reservations stored before ids were derived
(random uuids) are never found by a key and keep working as they were.

:class:`Reservations` is the ledger's side of it: Reserve decides a charge against the
budgets as a spend would and holds it for a lease (it counts against every budget it
touches until then), Commit turns a live one into a spend, Release gives it back. Another
tenant's reservation is NotFound (its existence is private).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from services.accountant.accounting import atoms_of
from services.accountant.core import Core, authorize, event_by_key, replay_or_conflict
from services.accountant.events import Charge, Receipt, Reservation
from services.accountant.limits import check_charge, check_text
from services.accountant.rows import charge_budgets, dumps, live_reservation_atoms
from services.accountant.schema import reservations
from services.accountant.spending import Spends
from services.common.errors import (
    AlreadyExists,
    BudgetExhausted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)


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


class Reservations:
    """Reserve, commit and release; every one takes the caller's tenant."""

    def __init__(
        self,
        core: Core,
        spends: Spends,
        *,
        default_lease_s: float = 30.0,
        max_lease_s: float = 600.0,
    ) -> None:
        self._core, self._spends = core, spends
        self.default_lease_s, self.max_lease_s = default_lease_s, max_lease_s

    def reserve(
        self, caller_tenant: str, charge: Charge, lease_s: float | None = None
    ) -> Reservation:
        """Hold budget for ``charge`` until the lease ends; it counts against every budget.

        Idempotent by the charge's key (see above): the key's live or committed reservation
        of the same charge is returned as stored (its id; a live one's lease extended to end
        no earlier than this one), ``replayed``, with its ``spend_id`` if committed, and
        nothing new is held; its expired or released one is decided against the budgets
        again and re-armed under the same id. Another charge under a key that is live or
        committed, or a key a direct spend used, is AlreadyExists.
        """
        core = self._core
        authorize(caller_tenant, charge.tenant_id)
        check_charge(charge, core.limits)
        lease = self.default_lease_s if lease_s is None else lease_s
        if not (math.isfinite(lease) and lease > 0):
            raise InvalidArgument("lease must be > 0 seconds", details={"field": "lease"})
        lease = min(lease, self.max_lease_s)  # the contract: clamped to the server maximum

        def attempt(allow: bool) -> Reservation:
            return self._reserve_once(charge, lease, allow)

        try:
            reservation = core.outside_lock_first(attempt, charge)
        except (IntegrityError, Raced):  # a concurrent Reserve stored the id first
            reservation = core.outside_lock_first(attempt, charge)  # its replay
        return self._as_now(reservation) if reservation.replayed else reservation

    def _as_now(self, replay: Reservation) -> Reservation:
        """A replayed reservation with its budgets' statuses as computed now (read as a
        check reads, figured outside any lock): after its commit, a live one's own hold
        composed in once as a new reservation's projection, a committed one as it stands
        (with the other live reservations, as always)."""
        core = self._core
        charge, now = replay.charge, core.clock()
        with core.tx(readonly=True) as conn:
            rows = core.dry_rows(conn, charge)
            ids = [r.id for r in rows]
            held = live_reservation_atoms(conn, charge.tenant_id, ids, now, replay.reservation_id)
        live = not replay.spend_id
        atoms = atoms_of(charge) if live else Counter()
        statuses = core.project(rows, held, atoms, want_tight=False, events=int(live))
        return replace(replay, statuses=statuses)

    def _reserve_once(self, charge: Charge, lease: float, allow_tight: bool) -> Reservation:
        core = self._core
        now = core.clock()
        rid = reservation_id(charge.tenant_id, charge.idempotency_key)
        with core.tx() as conn:
            # The key's row is locked before the budgets, in Commit's order (no deadlock).
            kept = stored(conn, rid, lock=True)
            if (replay := replay_of(kept, charge, now)) is not None:
                if not replay.spend_id and replay.expires_at < now + lease:
                    extend(conn, rid, now + lease)  # the retry needs its time
                    replay = replace(replay, expires_at=now + lease)
                return replay
            rows, _ = charge_budgets(conn, charge, now, create=True)
            # PostgreSQL: a Reserve of the key that held the tenant budget's lock before us
            # has committed its row by now, and a new statement sees it.
            if kept is None and stored(conn, rid, lock=False) is not None:
                raise Raced
            self._sweep(conn, charge.tenant_id, now)
            if event_by_key(conn, charge) is not None:
                raise AlreadyExists("a spend with this idempotency key is already committed")
            try:  # the key's own row never counts against it (stored meanwhile: see reserve)
                statuses = core.decide(
                    conn, rows, charge, now, exclude=rid, allow_tight=allow_tight
                )
            except BudgetExhausted:
                core.refused("budget_exhausted")
                raise
            ids = [r.id for r in rows]
            hold(conn, rid, charge, ids, now + lease, rearm=kept is not None)
        return Reservation(rid, charge, now + lease, statuses)

    def commit(self, caller_tenant: str, reservation_id: str) -> Receipt:
        """Turn a live reservation into a spend; an expired one is FailedPrecondition."""
        started = time.perf_counter()
        with self._core.tx() as conn:
            row = self._reservation(conn, caller_tenant, reservation_id)
            charge = Charge.from_json(json.loads(row.charge))
            if row.status == "committed":
                return replay_or_conflict(event_by_key(conn, charge), charge)
            error = self._lapse(conn, row)
            if error is None:
                receipt = self._spends.spend_in(conn, charge, enforce=False, exclude=reservation_id)
                conn.execute(
                    update(reservations)
                    .where(reservations.c.id == reservation_id)
                    .values(status="committed", spend_id=receipt.spend_id)
                )
        if error is not None:  # raised after the commit so that "expired" is stored
            raise error
        self._core.record(receipt, started, "commit")
        return receipt

    def release(self, caller_tenant: str, reservation_id: str) -> bool:
        """Give a reservation's budget back; False when it was already released or had
        expired (a no-op). A committed one is FailedPrecondition."""
        with self._core.tx() as conn:
            row = self._reservation(conn, caller_tenant, reservation_id)
            if row.status == "committed":
                raise FailedPrecondition("reservation already committed")
            live = row.status == "live" and row.expires_at > self._core.clock()
            if row.status == "live":
                conn.execute(
                    update(reservations)
                    .where(reservations.c.id == reservation_id)
                    .values(status="released" if live else "expired")
                )
        if row.status == "live" and not live and self._core.metrics:
            self._core.metrics.reservations_expired.inc()  # it lapsed before this Release
        return live

    def outstanding(self) -> float:
        """Live, unexpired reservations in the whole ledger (read at scrape time); NaN when
        the database cannot answer (a scrape must not fail)."""
        try:
            with self._core.tx(readonly=True) as conn:
                q = select(func.count()).select_from(reservations)
                q = q.where(
                    reservations.c.status == "live",
                    reservations.c.expires_at > self._core.clock(),
                )
                return float(conn.execute(q).scalar_one())
        except Unavailable:
            return math.nan

    def _reservation(self, conn: Connection, caller_tenant: str, rid: str) -> Any:
        check_text("reservation_id", rid, self._core.limits.max_id_bytes, required=True)
        q = select(reservations).where(reservations.c.id == rid).with_for_update()
        row = conn.execute(q).first()
        if row is None or row.tenant_id != caller_tenant:
            raise NotFound("no such reservation", details={"reservation_id": rid})
        return row

    def _lapse(self, conn: Connection, row: Any) -> FailedPrecondition | None:
        """The error that stops committing ``row`` (marking a lapsed lease expired), if any."""
        details = {"reservation_id": row.id}
        if row.status == "live" and row.expires_at <= self._core.clock():
            conn.execute(
                update(reservations).where(reservations.c.id == row.id).values(status="expired")
            )
            if self._core.metrics:
                self._core.metrics.reservations_expired.inc()
            return FailedPrecondition("reservation lease expired", details=details)
        if row.status != "live":
            return FailedPrecondition(f"reservation is {row.status}", details=details)
        return None

    def _sweep(self, conn: Connection, tenant_id: str, now: float) -> None:
        """Mark this tenant's lapsed reservations expired (they already stopped counting)."""
        res = conn.execute(
            update(reservations)
            .where(
                reservations.c.tenant_id == tenant_id,
                reservations.c.status == "live",
                reservations.c.expires_at <= now,
            )
            .values(status="expired")
        )
        if self._core.metrics and res.rowcount:
            self._core.metrics.reservations_expired.inc(res.rowcount)
