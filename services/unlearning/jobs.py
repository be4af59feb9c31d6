"""Unlearning jobs and the model versions they publish, in a database every replica shares.

SQLite (one replica, the default) or PostgreSQL (several). Two tables here, beside the
model registry's (``services.unlearning.registry``):

- ``unlearning_jobs``: what was asked (the spec, as JSON), whose it is, where it stands,
  and who runs it: a replica *claims* a queued job with a lease (``worker``,
  ``lease_until``) that it renews while training. A replica that dies stops renewing; once
  the lease lapses the job is claimable again, from the start (``attempts`` counts the
  tries; past ``max_attempts`` it is FAILED). Nothing is lost on a restart: a job is in a
  row before SubmitJob answers.
- ``unlearning_versions`` (the registry's): every version above 1 of a served model, with
  its tenant. A version is inserted LOADING before its files are written, and turns READY
  in the same transaction that marks its job SUCCEEDED; a LOADING row whose job is not
  SUCCEEDED is the trace of an interrupted publication, which the next claimant of the job removes
  (files and row), so no half-published version survives.

Every method is one short transaction; times are seconds since the epoch.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.unlearning.registry import RegistryStore, Version, metadata
from services.unlearning.trained import TrainedStore

jobs = Table(
    "unlearning_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("tenant", String(255), nullable=False, index=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("fingerprint", String(64), nullable=False),
    Column("model_name", String(255), nullable=False),
    Column("base_version", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("phase", String(64), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False, index=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("result_version", Integer, nullable=False, default=0),
    Column("report", Text, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker", String(64), nullable=True),
    Column("lease_until", Float, nullable=True),
    UniqueConstraint("tenant", "idempotency_key", name="uq_unlearning_jobs_key"),
)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class JobSpec:
    """What a caller asked (the domain form of ``SubmitJobRequest``)."""

    model_name: str
    base_version: int
    """As asked: 0 = the latest READY version the tenant sees."""
    dataset_uri: str
    removed_ids: tuple[str, ...]
    replaced_ids: tuple[str, ...]
    attributes: tuple[str, ...]
    method: str
    options: dict[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    trained_entry: str = ""
    """``retrain`` only: a store entry trained at scale on ``dataset_uri``, published
    instead of training here (``SubmitJobRequest.trained_entry``)."""

    def to_json(self) -> str:
        data = asdict(self)
        if not self.trained_entry:  # the form specs had before the field: same fingerprint
            del data["trained_entry"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        for key in ("removed_ids", "replaced_ids", "attributes"):
            data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class Job:
    job_id: str
    tenant: str
    spec: JobSpec
    base_version: int
    """The version unlearned from, resolved when the job was accepted."""
    state: str
    progress: float
    phase: str
    message: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    result_version: int
    report: dict[str, Any] | None
    cancel_requested: bool
    attempts: int

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def _job(row: Row[Any]) -> Job:
    return Job(
        job_id=row.job_id,
        tenant=row.tenant,
        spec=JobSpec.from_json(row.spec),
        base_version=int(row.base_version),
        state=row.state,
        progress=float(row.progress),
        phase=row.phase,
        message=row.message,
        created_at=float(row.created_at),
        started_at=row.started_at,
        finished_at=row.finished_at,
        result_version=int(row.result_version),
        report=None if row.report is None else json.loads(row.report),
        cancel_requested=bool(row.cancel_requested),
        attempts=int(row.attempts),
    )


class JobStore(RegistryStore, TrainedStore):
    """The unlearning tables on one engine; every method is one short transaction."""

    metadata = metadata

    # -- jobs: callers ---------------------------------------------------------------------

    def submit(self, tenant: str, spec: JobSpec, base_version: int, fingerprint: str) -> Job:
        """A new QUEUED job; with an idempotency key already used, the original job (or
        ALREADY_EXISTS when that key was used for another request)."""
        key = spec.idempotency_key or None
        if key is not None:
            found = self._by_key(tenant, key, fingerprint)
            if found is not None:
                return found
        job_id = uuid.uuid4().hex
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(jobs).values(
                        job_id=job_id,
                        tenant=tenant,
                        idempotency_key=key,
                        fingerprint=fingerprint,
                        model_name=spec.model_name,
                        base_version=base_version,
                        spec=spec.to_json(),
                        state=QUEUED,
                        progress=0.0,
                        phase="queued",
                        message="",
                        created_at=time.time(),
                        result_version=0,
                        cancel_requested=False,
                        attempts=0,
                    )
                )
        except IntegrityError:  # a concurrent submit with the same key stored first
            found = self._by_key(tenant, key or "", fingerprint)
            if found is None:
                raise
            return found
        return self.get(tenant, job_id)

    def _by_key(self, tenant: str, key: str, fingerprint: str) -> Job | None:
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)
            ).first()
        if row is None:
            return None
        if row.fingerprint != fingerprint:
            raise AlreadyExists(
                "idempotency key already used for another request",
                details={"field": "idempotency_key"},
            )
        return _job(row)

    def get(self, tenant: str, job_id: str) -> Job:
        """The job; NOT_FOUND when unknown or another tenant's (the same answer)."""
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.job_id == job_id, jobs.c.tenant == tenant)
            ).first()
        if row is None:
            raise NotFound(f"no unlearning job {job_id!r}")
        return _job(row)

    def list_jobs(
        self, tenant: str, state: str, model_name: str, offset: int, limit: int
    ) -> tuple[list[Job], int]:
        """One page of the tenant's jobs, newest first, and how many match in all."""
        where = [jobs.c.tenant == tenant]
        if state:
            where.append(jobs.c.state == state)
        if model_name:
            where.append(jobs.c.model_name == model_name)
        with self._tx(readonly=True) as conn:
            total = conn.execute(select(func.count()).select_from(jobs).where(*where)).scalar_one()
            rows = conn.execute(
                select(jobs)
                .where(*where)
                .order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc())
                .offset(offset)
                .limit(limit)
            ).all()
        return [_job(r) for r in rows], int(total)

    def cancel(self, tenant: str, job_id: str, reason: str) -> Job:
        """A QUEUED job is CANCELLED at once; a RUNNING one is asked to stop (its worker sees
        ``cancel_requested``); a terminal one is FAILED_PRECONDITION."""
        message = f"cancelled: {reason}" if reason else "cancelled"
        with self._tx() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.job_id == job_id, jobs.c.tenant == tenant)
            ).first()
            if row is None:
                raise NotFound(f"no unlearning job {job_id!r}")
            if row.state in TERMINAL:
                raise FailedPrecondition(
                    f"unlearning job {job_id!r} is already {row.state}; only a queued or "
                    "running job can be cancelled"
                )
            values: dict[str, Any] = {"cancel_requested": True, "message": message}
            if row.state == QUEUED:
                values |= {"state": CANCELLED, "finished_at": time.time(), "progress": 1.0}
            conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**values))
        return self.get(tenant, job_id)

    # -- jobs: workers ---------------------------------------------------------------------

    def claim(self, worker: str, lease_s: float, max_attempts: int) -> Job | None:
        """Take the oldest job that is QUEUED, or RUNNING under a lapsed lease (its replica
        died), for ``worker``; a job past ``max_attempts`` is FAILED instead. None: none."""
        while True:
            now = time.time()
            with self._tx() as conn:
                row = conn.execute(
                    select(jobs)
                    .where(
                        or_(
                            jobs.c.state == QUEUED,
                            and_(jobs.c.state == RUNNING, jobs.c.lease_until < now),
                        )
                    )
                    .order_by(jobs.c.created_at, jobs.c.job_id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                if row.state == RUNNING and row.cancel_requested:
                    self._end(conn, row.job_id, CANCELLED, row.message or "cancelled")
                    continue
                if row.attempts >= max_attempts:
                    self._end(
                        conn,
                        row.job_id,
                        FAILED,
                        f"interrupted {row.attempts} times (its replica stopped); not retried",
                    )
                    continue
                resumed = row.state == RUNNING
                conn.execute(
                    update(jobs)
                    .where(jobs.c.job_id == row.job_id)
                    .values(
                        state=RUNNING,
                        worker=worker,
                        lease_until=now + lease_s,
                        attempts=row.attempts + 1,
                        started_at=now,
                        progress=0.0,
                        phase="starting",
                        message="restarted after an interruption" if resumed else "",
                    )
                )
                job_id, tenant = row.job_id, row.tenant
            return self.get(tenant, job_id)

    def _end(self, conn: Connection, job_id: str, state: str, message: str) -> None:
        conn.execute(
            update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(
                state=state,
                message=message,
                finished_at=time.time(),
                progress=1.0,
                worker=None,
                lease_until=None,
            )
        )

    def heartbeat(
        self,
        job_id: str,
        worker: str,
        lease_s: float,
        phase: str | None = None,
        progress: float | None = None,
    ) -> tuple[bool, bool]:
        """Renew ``worker``'s lease (and record progress). (still ours, cancel requested)."""
        values: dict[str, Any] = {"lease_until": time.time() + lease_s}
        if phase is not None:
            values["phase"] = phase
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, progress))
        with self._tx() as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.job_id == job_id, jobs.c.worker == worker, jobs.c.state == RUNNING)
                .values(**values)
            ).rowcount
            flag = conn.execute(
                select(jobs.c.cancel_requested).where(jobs.c.job_id == job_id)
            ).scalar_one_or_none()
        return bool(done), bool(flag)

    def release(self, worker: str) -> int:
        """End ``worker``'s leases now (it is stopping): its running jobs are claimable at
        once instead of when their leases lapse. How many."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    update(jobs)
                    .where(jobs.c.worker == worker, jobs.c.state == RUNNING)
                    .values(lease_until=0.0)
                ).rowcount
            )

    def finish(self, job_id: str, worker: str, state: str, message: str) -> bool:
        """End ``worker``'s job FAILED or CANCELLED; False when it is no longer its own."""
        with self._tx() as conn:
            owned = conn.execute(
                select(jobs.c.job_id).where(
                    jobs.c.job_id == job_id, jobs.c.worker == worker, jobs.c.state == RUNNING
                )
            ).first()
            if owned is None:
                return False
            self._end(conn, job_id, state, message)
            return True

    def succeed(
        self,
        job_id: str,
        worker: str,
        version: Version,
        metrics: dict[str, float],
        report: dict[str, Any],
    ) -> bool:
        """In one transaction: the job SUCCEEDED with its report, its ``version`` READY and
        its tenant's ``production`` alias.
        False (nothing changed) when the job is no longer ``worker``'s."""
        with self._tx() as conn:
            row = conn.execute(
                select(jobs.c.model_name).where(
                    jobs.c.job_id == job_id, jobs.c.worker == worker, jobs.c.state == RUNNING
                )
            ).first()
            if row is None:
                return False
            self.publish_ready(conn, row.model_name, version.serial, metrics)
            self._end(conn, job_id, SUCCEEDED, "")
            conn.execute(
                update(jobs)
                .where(jobs.c.job_id == job_id)
                .values(result_version=version.version, report=json.dumps(report, sort_keys=True))
            )
            return True

    def counts(self) -> dict[str, int]:
        """Jobs per state (the metrics' gauge)."""
        with self._tx(readonly=True) as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
        return {state: int(n) for state, n in rows}
