"""The model registry: which versions of a served model exist, whose they are, where they
came from, and which one each alias names — in the unlearning service's database.

A model is named per tenant. Version 1 is the trained default every tenant shares (its
store entry, registered by ``veil train``); every later version belongs to one tenant and
is numbered *within that tenant* (2, 3, … for each tenant), so a tenant's numbers reveal
nothing of another's activity. Each version also has a *serial*: the number of its
version directory in the Triton repository and of its store entry (``<entry>-v<serial>``),
unique across tenants. Serials never leave the servers: callers name versions by their
own numbers or by alias, and a version of another tenant is answered exactly as an
unknown one.

Tables (SQLAlchemy Core, created beside the job table):

- ``unlearning_versions``: one row per version above 1 — ``version`` is the serial (the
  primary key with the model name, as before tenants had their own numbers), ``number``
  the tenant's (NULL in rows written before: then it equals the serial), state, parent
  (a tenant number), the job and method that made it, metrics at publish and ``lineage``
  (JSON: data revision, command, reason).
- ``registry_aliases``: (tenant, model, alias) → number; a shared trained model's aliases
  are the operator's, under tenant :data:`SHARED`. ``production`` is what a caller
  gets for version 0 (the latest READY version when unset); a publish moves it to the new
  version and ``previous`` to the one it replaces, in the transaction that marks the
  version READY.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from services.common.db import TableStore
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

metadata = MetaData()

versions = Table(
    "unlearning_versions",
    metadata,
    Column("model_name", String(255), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("tenant", String(255), nullable=False, index=True),
    Column("state", String(16), nullable=False),
    Column("parent_version", Integer, nullable=False),
    Column("parent_job_id", String(64), nullable=False, default=""),
    Column("method", String(32), nullable=False),
    Column("metrics", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("number", Integer, nullable=True),
    Column("lineage", Text, nullable=True),
    UniqueConstraint("tenant", "model_name", "idempotency_key", name="uq_unlearning_versions_key"),
    Index("uq_unlearning_versions_number", "tenant", "model_name", "number", unique=True),
)

aliases = Table(
    "registry_aliases",
    metadata,
    Column("tenant", String(255), primary_key=True),
    Column("model_name", String(255), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("number", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

LOADING, READY, RETIRED, BROKEN = "loading", "ready", "retired", "failed"
SERVABLE = (READY, RETIRED)
PRODUCTION, PREVIOUS = "production", "previous"
SHARED = "*"
"""The ``tenant`` of a shared trained model's aliases: the operator's, the same for every
tenant (no tenant id is ``*``)."""
ALIAS = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
BASE = 1
"""The shared version every tenant sees: the trained default."""


@dataclass(frozen=True)
class Version:
    model_name: str
    version: int
    """The tenant's number for it (1 = the shared base)."""
    tenant: str
    state: str
    parent_version: int
    parent_job_id: str
    method: str
    metrics: dict[str, float]
    created_at: float
    serial: int = 0
    """Its store entry and Triton version directory (never shown to callers)."""
    lineage: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


def _number(row: Row[Any]) -> int:
    return int(row.version if row.number is None else row.number)


def _version(row: Row[Any]) -> Version:
    return Version(
        model_name=row.model_name,
        version=_number(row),
        tenant=row.tenant,
        state=row.state,
        parent_version=int(row.parent_version),
        parent_job_id=row.parent_job_id,
        method=row.method,
        metrics=json.loads(row.metrics),
        created_at=float(row.created_at),
        serial=int(row.version),
        lineage=json.loads(row.lineage) if row.lineage else {},
    )


tenant_number = func.coalesce(versions.c.number, versions.c.version)


def check_alias(alias: str) -> str:
    if not ALIAS.match(alias):
        raise InvalidArgument(
            f"an alias is 1–64 characters of [a-z0-9-], starting with a letter; got {alias!r}",
            details={"field": "alias"},
        )
    return alias


class RegistryStore(TableStore):
    """The registry's rows; every method is one short transaction. Methods that take a
    ``tenant`` see only that tenant's versions (above 1); the rest are the publisher's,
    which works by serial."""

    metadata = metadata

    # -- publishing (by serial) ------------------------------------------------------------

    def allocate(
        self,
        tenant: str,
        model_name: str,
        parent_version: int,
        method: str,
        job_id: str = "",
        idempotency_key: str = "",
        lineage: dict[str, Any] | None = None,
    ) -> Version:
        """A new LOADING version of ``tenant``: the tenant's next number and the model's
        next serial (both above 1 and every stored one; never reused while the row
        exists)."""
        for _ in range(20):
            try:
                with self._tx() as conn:
                    top = conn.execute(
                        select(func.max(versions.c.version)).where(
                            versions.c.model_name == model_name
                        )
                    ).scalar_one_or_none()
                    mine = conn.execute(
                        select(func.max(tenant_number)).where(
                            versions.c.model_name == model_name, versions.c.tenant == tenant
                        )
                    ).scalar_one_or_none()
                    made = Version(
                        model_name=model_name,
                        version=max(int(mine or BASE), BASE) + 1,
                        tenant=tenant,
                        state=LOADING,
                        parent_version=parent_version,
                        parent_job_id=job_id,
                        method=method,
                        metrics={},
                        created_at=time.time(),
                        serial=max(int(top or BASE), BASE) + 1,
                        lineage=dict(lineage or {}),
                    )
                    conn.execute(
                        insert(versions).values(
                            model_name=made.model_name,
                            version=made.serial,
                            number=made.version,
                            tenant=made.tenant,
                            state=made.state,
                            parent_version=made.parent_version,
                            parent_job_id=made.parent_job_id,
                            method=made.method,
                            metrics="{}",
                            created_at=made.created_at,
                            idempotency_key=idempotency_key or None,
                            lineage=json.dumps(made.lineage, sort_keys=True),
                        )
                    )
                return made
            except IntegrityError:  # another replica took that number (or that key)
                if idempotency_key:
                    raise
                continue
        raise FailedPrecondition(f"could not allocate a version of {model_name!r}; retry")

    def mark_version(
        self, model_name: str, serial: int, state: str, metrics: dict[str, float] | None = None
    ) -> None:
        values: dict[str, Any] = {"state": state}
        if metrics is not None:
            values["metrics"] = json.dumps(metrics, sort_keys=True)
        with self._tx() as conn:
            conn.execute(
                update(versions)
                .where(versions.c.model_name == model_name, versions.c.version == serial)
                .values(**values)
            )

    def publish_ready(
        self,
        conn: Connection,
        model_name: str,
        serial: int,
        metrics: dict[str, float],
    ) -> None:
        """In the caller's transaction: version ``serial`` READY with its metrics, its
        tenant's ``production`` alias moved to it and ``previous`` to what that named."""
        row = conn.execute(
            select(versions).where(
                versions.c.model_name == model_name, versions.c.version == serial
            )
        ).first()
        if row is None:
            raise NotFound(f"no version with serial {serial} of {model_name!r}")
        conn.execute(
            update(versions)
            .where(versions.c.model_name == model_name, versions.c.version == serial)
            .values(state=READY, metrics=json.dumps(metrics, sort_keys=True))
        )
        self._point(conn, row.tenant, model_name, PRODUCTION, _number(row))

    def promote(self, model_name: str, serial: int, metrics: dict[str, float]) -> None:
        """:meth:`publish_ready` in a transaction of its own."""
        with self._tx() as conn:
            self.publish_ready(conn, model_name, serial, metrics)

    def delete_version(self, model_name: str, serial: int) -> None:
        with self._tx() as conn:
            conn.execute(
                sql_delete(versions).where(
                    versions.c.model_name == model_name, versions.c.version == serial
                )
            )

    def unfinished_versions(self, job_id: str) -> list[Version]:
        """LOADING versions of ``job_id``: an interrupted publication's leftovers."""
        with self._tx(readonly=True) as conn:
            rows = conn.execute(
                select(versions).where(
                    versions.c.parent_job_id == job_id, versions.c.state == LOADING
                )
            ).all()
        return [_version(r) for r in rows]

    # -- a tenant's view (by number) -------------------------------------------------------

    def version_by_key(self, tenant: str, model_name: str, key: str) -> Version | None:
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(versions).where(
                    versions.c.tenant == tenant,
                    versions.c.model_name == model_name,
                    versions.c.idempotency_key == key,
                )
            ).first()
        return None if row is None else _version(row)

    def get_version(self, tenant: str, model_name: str, number: int) -> Version | None:
        """The tenant's version ``number`` (above 1), or None (unknown or another
        tenant's: the same answer)."""
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(versions).where(
                    versions.c.tenant == tenant,
                    versions.c.model_name == model_name,
                    tenant_number == number,
                )
            ).first()
        return None if row is None else _version(row)

    def latest_ready(self, tenant: str, model_name: str) -> Version | None:
        with self._tx(readonly=True) as conn:
            row = conn.execute(
                select(versions)
                .where(
                    versions.c.tenant == tenant,
                    versions.c.model_name == model_name,
                    versions.c.state == READY,
                )
                .order_by(tenant_number.desc())
                .limit(1)
            ).first()
        return None if row is None else _version(row)

    def list_versions(
        self, tenant: str, model_name: str, offset: int, limit: int
    ) -> tuple[list[Version], int]:
        """One page of the tenant's versions (above 1), newest first, and their count."""
        where = (versions.c.tenant == tenant, versions.c.model_name == model_name)
        with self._tx(readonly=True) as conn:
            total = conn.execute(
                select(func.count()).select_from(versions).where(*where)
            ).scalar_one()
            rows = conn.execute(
                select(versions)
                .where(*where)
                .order_by(tenant_number.desc())
                .offset(offset)
                .limit(limit)
            ).all()
        return [_version(r) for r in rows], int(total)

    def retire_above(self, tenant: str, model_name: str, number: int, below: int) -> int:
        """Retire the tenant's READY versions numbered in (``number``, ``below``); how many."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    update(versions)
                    .where(
                        versions.c.tenant == tenant,
                        versions.c.model_name == model_name,
                        versions.c.state == READY,
                        tenant_number > number,
                        tenant_number < below,
                    )
                    .values(state=RETIRED)
                ).rowcount
            )

    # -- aliases ---------------------------------------------------------------------------

    def aliases(self, tenant: str, model_name: str) -> dict[str, int]:
        """The tenant's aliases of ``model_name``: alias → number."""
        with self._tx(readonly=True) as conn:
            rows = conn.execute(
                select(aliases.c.alias, aliases.c.number).where(
                    aliases.c.tenant == tenant, aliases.c.model_name == model_name
                )
            ).all()
        return {alias: int(number) for alias, number in rows}

    def set_alias(self, tenant: str, model_name: str, alias: str, number: int) -> None:
        """Point ``alias`` at the tenant's servable version ``number`` (1 = the base);
        NOT_FOUND when the tenant has no such version. Moving ``production`` moves
        ``previous`` to what it named."""
        check_alias(alias)
        with self._tx() as conn:
            if number != BASE:
                row = conn.execute(
                    select(versions.c.state).where(
                        versions.c.tenant == tenant,
                        versions.c.model_name == model_name,
                        tenant_number == number,
                    )
                ).first()
                if row is None:
                    raise NotFound(f"no version {number} of {model_name!r}")
                if row.state not in SERVABLE:
                    raise FailedPrecondition(
                        f"version {number} of {model_name!r} is {row.state}; it cannot be served"
                    )
            self._point(conn, tenant, model_name, alias, number)

    def set_shared_alias(self, model_name: str, alias: str, number: int, served: int) -> None:
        """Point the operator's ``alias`` of a shared trained model at its registration
        ``number`` (the caller checked that it is servable). Moving ``production`` moves
        ``previous`` to what it named (``served``, the newest, when it named nothing)."""
        check_alias(alias)
        with self._tx() as conn:
            self._point(conn, SHARED, model_name, alias, number, unset=served)

    def _point(
        self,
        conn: Connection,
        tenant: str,
        model: str,
        alias: str,
        number: int,
        unset: int = BASE,
    ) -> None:
        """Point ``alias`` at ``number``; moving ``production`` moves ``previous`` to what
        it named (``unset`` when it named nothing)."""
        key = (aliases.c.tenant == tenant, aliases.c.model_name == model)
        old = conn.execute(
            select(aliases.c.number).where(*key, aliases.c.alias == alias)
        ).scalar_one_or_none()
        if old == number:
            return
        if alias == PRODUCTION:
            self._upsert(conn, tenant, model, PREVIOUS, unset if old is None else int(old))
        self._upsert(conn, tenant, model, alias, number)

    @staticmethod
    def _upsert(conn: Connection, tenant: str, model: str, alias: str, number: int) -> None:
        """Insert or move one alias in one statement (``ON CONFLICT DO UPDATE`` on both
        databases): two publishes racing to create a tenant's first alias both succeed,
        the later commit's version wins."""
        values = {
            "tenant": tenant,
            "model_name": model,
            "alias": alias,
            "number": number,
            "updated_at": time.time(),
        }
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(aliases).values(**values)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=[aliases.c.tenant, aliases.c.model_name, aliases.c.alias],
                set_={"number": number, "updated_at": values["updated_at"]},
            )
        )


def with_aliases(version: Version, names: dict[str, int]) -> Version:
    """``version`` with the aliases (of ``names``) that point at it."""
    pointing = sorted(alias for alias, number in names.items() if number == version.version)
    return replace(version, aliases=tuple(pointing))
