"""Trained models in the registry: what ``veil train`` wrote into the model store, with
where it came from — the shared models every tenant sees (read-only, no aliases).

A trained model is named by its store entry (``diffae``, ``probes``, ``task-resnet``, …).
Each registration of a new content (a new SHA-256) of the entry is a new version, numbered
1, 2, … per entry; registering the content the entry's newest version has changes
nothing. The store keeps only
the newest content of an entry (``veil train`` overwrites it), so only the newest version
is servable: the older ones stay as history, RETIRED.

A registration of the sanitizer's models (kinds :data:`KEPT_KINDS`: the encoder, its
probes and its in-domain score) also keeps a copy of the content it registers, as the
store entry ``<entry>-r<number>`` (:func:`keep`): the entry itself is overwritten by the
next training, the copy never is, so every kept registration stays servable and an
operator alias (``production``, set with scope ``modelregistry:promote``) can point at
any of them; a sanitizer that follows the alias serves what it names.

``veil train`` registers what it writes (``services.cli.train``); the unlearning service,
when it starts, adopts every entry of its model store whose current content is not yet
registered (the packaged defaults, or an entry trained with ``--no-register``), with the
lineage its manifest records.

Table ``registry_trained`` (beside the registry's, in the unlearning service's database):
entry, number, kind, SHA-256, resolution, classes, target, lineage (JSON: command, seed,
data, created_at, registered_by) and metrics (JSON) at registration.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from services.common.db import TableStore
from services.common.errors import Unavailable, VeilError
from services.kernels.manifests import (
    DEFAULT_ROOT,
    MANIFEST,
    WEIGHTS,
    Manifest,
    ModelIntegrityError,
    StoreReader,
    kept_entry,
    manifest_lineage,
    sha256_file,
)
from services.unlearning.registry import READY, RETIRED, Version, metadata

log = logging.getLogger(__name__)

trained = Table(
    "registry_trained",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("resolution", Integer, nullable=False),
    Column("num_classes", Integer, nullable=False),
    Column("target", String(255), nullable=False),
    Column("lineage", Text, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("registered_at", Float, nullable=False),
)

VERSION_ENTRY = re.compile(r"-[vr]\d+$")
"""A tenant's version of a served model (``<entry>-v<serial>``: the registry's versions
table knows those) or a kept registration (``<entry>-r<number>``): not trained models of
their own."""
KEPT_KINDS = ("diffae", "probes", "domain")
"""Kinds whose registrations are kept whole in the store (:func:`keep`): what a sanitizer
that follows the registry loads."""
TRAINED_BY = "veil train"
ADOPTED = "adopted from the model store at start"


@dataclass(frozen=True)
class Trained:
    """One registration of a store entry's content."""

    name: str
    kind: str
    sha256: str
    resolution: int
    num_classes: int
    target: str
    lineage: dict[str, str]
    metrics: dict[str, float]
    number: int = 0
    registered_at: float = 0.0
    current: bool = True
    """The newest registration of the entry: the content the store holds now."""

    def as_version(self) -> Version:
        """As the registry answers versions: the tenant-free version of a shared model."""
        return Version(
            model_name=self.name,
            version=self.number,
            tenant="",
            state=READY if self.current else RETIRED,
            parent_version=0,
            parent_job_id="",
            method="",
            metrics=dict(self.metrics),
            created_at=self.registered_at,
            serial=self.number,
            lineage={**self.lineage, "sha256": self.sha256},
        )


def from_manifest(manifest: Manifest, registered_by: str) -> Trained:
    """What a store manifest says of its entry, as a registration (nothing is loaded)."""
    config = manifest.config
    return Trained(
        name=manifest.name,
        kind=manifest.kind,
        sha256=manifest.sha256,
        resolution=int(config.get("resolution", 0) or 0),
        num_classes=int(config.get("num_classes", 0) or 0),
        target=str(config.get("target", "")),
        lineage={**manifest_lineage(manifest), "registered_by": registered_by},
        metrics={
            k.replace(" ", "_"): float(v)
            for k, v in (manifest.metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
    )


def _trained(row: Row[Any], newest: int) -> Trained:
    return Trained(
        name=row.name,
        kind=row.kind,
        sha256=row.sha256,
        resolution=int(row.resolution),
        num_classes=int(row.num_classes),
        target=row.target,
        lineage=json.loads(row.lineage),
        metrics=json.loads(row.metrics),
        number=int(row.number),
        registered_at=float(row.registered_at),
        current=int(row.number) == newest,
    )


class TrainedStore(TableStore):
    """Registrations of trained store entries; every method is one short transaction."""

    metadata = metadata

    def register(self, record: Trained) -> tuple[Trained, bool]:
        """Register ``record``'s content of its entry: (its registration, whether it is
        new). The content the newest registration has already returns that one; any other
        (an earlier content back again included) is the entry's next number. Two writers
        at once: the primary key gives one of them the number, the other retries."""
        for _ in range(20):
            try:
                with self._tx() as conn:
                    newest = conn.execute(
                        select(trained)
                        .where(trained.c.name == record.name)
                        .order_by(trained.c.number.desc())
                        .limit(1)
                    ).first()
                    if newest is not None and newest.sha256 == record.sha256:
                        return _trained(newest, int(newest.number)), False
                    number = int(newest.number) + 1 if newest is not None else 1
                    now = time.time()
                    conn.execute(
                        insert(trained).values(
                            name=record.name,
                            number=number,
                            kind=record.kind,
                            sha256=record.sha256,
                            resolution=record.resolution,
                            num_classes=record.num_classes,
                            target=record.target,
                            lineage=json.dumps(record.lineage, sort_keys=True),
                            metrics=json.dumps(record.metrics, sort_keys=True),
                            registered_at=now,
                        )
                    )
                return replace(record, number=number, registered_at=now, current=True), True
            except IntegrityError:
                continue  # another writer took the number (or registered the content)
        raise Unavailable(f"could not register {record.name!r}: too much contention; retry")

    def trained_versions(self, name: str) -> list[Trained]:
        """Every registration of ``name``, newest first (empty: not a trained model)."""
        with self._tx(readonly=True) as conn:
            rows = conn.execute(
                select(trained).where(trained.c.name == name).order_by(trained.c.number.desc())
            ).all()
        newest = int(rows[0].number) if rows else 0
        return [_trained(r, newest) for r in rows]

    def trained_models(self) -> list[Trained]:
        """The newest registration of every trained entry, by name."""
        newest = (
            select(trained.c.name, func.max(trained.c.number).label("top"))
            .group_by(trained.c.name)
            .subquery()
        )
        with self._tx(readonly=True) as conn:
            rows = conn.execute(
                select(trained)
                .join(
                    newest,
                    (trained.c.name == newest.c.name) & (trained.c.number == newest.c.top),
                )
                .order_by(trained.c.name)
            ).all()
        return [_trained(r, int(r.number)) for r in rows]


def keep(root: Path, record: Trained) -> str | None:
    """Keep what registration ``record`` registered: the store entry at ``root`` copied
    whole to :func:`kept_entry` (written beside it, then renamed into place), for kinds
    :data:`KEPT_KINDS`; its name, or None for other kinds. An existing copy is left as it
    is (a copy is never rewritten). ModelIntegrityError, and nothing kept, when the entry
    no longer holds the registered content (it was overwritten since)."""
    if record.kind not in KEPT_KINDS:
        return None
    name = kept_entry(record.name, record.number)
    final = root / name
    if (final / MANIFEST).is_file():
        return name
    reader = StoreReader(root)
    manifest, _ = reader.blob(record.name)  # its weights checked against its manifest
    if manifest.sha256 != record.sha256:
        raise ModelIntegrityError(
            f"{record.name!r} no longer holds registration {record.number} "
            f"(sha256 {record.sha256[:12]}…): it was overwritten before it could be kept"
        )
    tmp = root / f".keep-{os.getpid()}-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(root / record.name, tmp)
    copied = Manifest.from_dict(json.loads((tmp / MANIFEST).read_text()))
    if copied.sha256 != record.sha256 or sha256_file(tmp / WEIGHTS) != record.sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelIntegrityError(f"{record.name!r} changed while it was kept; register again")
    try:
        os.rename(tmp, final)
    except OSError:  # another writer kept it first (same registration: same content)
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / MANIFEST).is_file():
            raise
    return name


def register_kept(
    store: TrainedStore, root: Path, manifest: Manifest, registered_by: str
) -> tuple[Trained, bool]:
    """Register the entry ``manifest`` describes (:meth:`TrainedStore.register`) and
    :func:`keep` that registration, unless ``root`` is the packaged store (the install
    tree: nothing is kept there)."""
    record, new = store.register(from_manifest(manifest, registered_by))
    if root.resolve() != DEFAULT_ROOT.resolve():
        keep(root, record)
    return record, new


def adopt(store: TrainedStore, root: Path) -> list[Trained]:
    """Register the current content of every entry of the model store at ``root`` that is
    not yet registered (the service's start-up): the registrations it made. An entry whose
    manifest is unreadable is left out (logged): serving refuses it anyway."""
    reader = StoreReader(root)
    made = []
    for path in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
        name = path.parent.name
        if VERSION_ENTRY.search(name) or name.startswith("."):
            continue
        try:
            manifest = reader.manifest(name)
        except VeilError as exc:
            log.warning("model store entry %s not registered: %s", name, exc.message)
            continue
        if (manifest.data or {}).get("tenant"):  # one tenant's retrain: never everyone's
            continue
        try:
            record, new = register_kept(store, root, manifest, ADOPTED)
        except ModelIntegrityError as exc:
            log.warning("model store entry %s not kept: %s", name, exc.message)
            continue
        if new:
            made.append(record)
    return made
