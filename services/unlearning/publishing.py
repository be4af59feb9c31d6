"""Model versions on disk: the store entry and the Triton version directory, published
atomically.

Version N of the served model (N > 1) is two directories:

- ``<store>/<entry>-vN/`` with ``weights.safetensors`` and ``manifest.json`` (the model
  store's format: ``services.kernels.store``), the manifest carrying where it came from
  (``unlearning``: parent version, method, job, revision) and its metrics;
- ``<repository>/<model>/N/model.py``, a copy of version 1's (the code is the same; the
  version number picks the entry: ``services.serving.entries.version_entry``), when the
  service writes to a Triton model repository; the same for each model of ``also`` that
  the repository holds (``veil_protect``: FMD against that version).

N is the version's *serial* (``services.unlearning.registry``): unique across tenants,
never shown to one.

Each is written whole into a hidden temporary directory beside its final place
(``.unlearning-<job>-…``), flushed, and renamed into place: a reader sees the directory
complete or not at all. :meth:`Publisher.remove` and :meth:`Publisher.sweep` delete what an
interrupted publication left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, NotFound

WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
TMP_PREFIX = ".unlearning-"


def version_entry(entry: str, version: int) -> str:
    """Store entry of version ``version``: 1 (or 0) → ``entry``, N → ``entry-vN``; the same
    rule as ``services.serving.entries.version_entry`` (a test holds them equal)."""
    return entry if version <= 1 else f"{entry}-v{version}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class Weights:
    """A new version's content: serialized safetensors and the manifest fields to write."""

    blob: bytes
    config: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    command: str = ""


class Publisher:
    """Writes and removes versions of ``model`` (store entry ``entry``) under ``store`` and,
    if given, the Triton ``repository``."""

    def __init__(
        self,
        store: Path,
        entry: str,
        model: str,
        repository: Path | None,
        also: tuple[str, ...] = (),
    ) -> None:
        self.store = Path(store)
        self.entry = entry
        self.model = model
        self.repository = None if repository is None else Path(repository)
        self.also = also

    def served_models(self) -> list[str]:
        """The repository's models a version is served by: ``model`` and those of ``also``
        whose version 1 the repository holds (just ``model`` without a repository)."""
        if self.repository is None:
            return [self.model]
        root = self.repository
        return [self.model] + [m for m in self.also if (root / m / "1" / "model.py").is_file()]

    def entry_dir(self, version: int) -> Path:
        return self.store / version_entry(self.entry, version)

    def version_dir(self, version: int, model: str = "") -> Path | None:
        if self.repository is None:
            return None
        return self.repository / (model or self.model) / str(version)

    def manifest(self, version: int) -> dict[str, Any]:
        """The store manifest of ``version``; NOT_FOUND when the store lacks it."""
        path = self.entry_dir(version) / MANIFEST
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise NotFound(
                f"model {self.model!r} version {version} has no weights in the store "
                f"({version_entry(self.entry, version)!r} in {self.store})"
            ) from None
        except ValueError:
            raise FailedPrecondition(
                f"the manifest of {version_entry(self.entry, version)!r} is unreadable"
            ) from None

    def blob(self, version: int) -> bytes:
        """The weights of ``version`` (checked against its manifest's SHA-256)."""
        manifest = self.manifest(version)
        blob = (self.entry_dir(version) / WEIGHTS).read_bytes()
        if hashlib.sha256(blob).hexdigest() != manifest.get("sha256"):
            raise FailedPrecondition(f"the weights of version {version} fail their SHA-256")
        return blob

    def publish(self, job_id: str, version: int, weights: Weights) -> None:
        """Write version ``version`` (store entry, then repository directory), each renamed
        into place whole. An existing final directory is an error (numbers are unique)."""
        name = version_entry(self.entry, version)
        targets = [self.version_dir(version, m) for m in self.served_models()]
        for final in (self.entry_dir(version), *targets):
            if final is not None and final.exists():
                raise FailedPrecondition(
                    f"{final} exists already: version {version} of {self.model!r} was made "
                    "outside this service's database; move it away"
                )
        manifest = {
            "name": name,
            "kind": "classifier",
            "version": 1,
            "config": weights.config,
            "sha256": hashlib.sha256(weights.blob).hexdigest(),
            "command": weights.command,
            "seed": None,
            "data": weights.data,
            "metrics": weights.metrics,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "torch": "",
            "unlearning": weights.provenance,
        }
        self.store.mkdir(parents=True, exist_ok=True)
        tmp = self.store / f"{TMP_PREFIX}{job_id}-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write(tmp / WEIGHTS, weights.blob)
        _write(tmp / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        _fsync_dir(tmp)
        os.rename(tmp, self.entry_dir(version))
        _fsync_dir(self.store)
        try:
            for target in targets:
                if target is not None:
                    self._publish_version_dir(job_id, version, target)
        except BaseException:
            for target in targets:
                if target is not None:
                    shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(self.entry_dir(version), ignore_errors=True)
            raise

    def _publish_version_dir(self, job_id: str, version: int, target: Path) -> None:
        source = target.parent / "1" / "model.py"
        if not source.is_file():
            raise FailedPrecondition(f"the model repository has no {source}")
        tmp_dir = target.parent / f"{TMP_PREFIX}{job_id}-{version}"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        _write(tmp_dir / "model.py", source.read_bytes())
        _fsync_dir(tmp_dir)
        os.rename(tmp_dir, target)
        _fsync_dir(target.parent)

    def remove(self, version: int) -> None:
        """Delete version ``version`` (repository directory first, then the store entry)."""
        if version <= 1:
            return
        for model in self.served_models():
            target = self.version_dir(version, model)
            if target is not None:
                shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(self.entry_dir(version), ignore_errors=True)

    def sweep(self, job_id: str) -> int:
        """Delete the temporary directories a publication of ``job_id`` left; how many."""
        roots = [self.store]
        if self.repository is not None:
            roots += [self.repository / model for model in self.served_models()]
        gone = 0
        for root in roots:
            for path in root.glob(f"{TMP_PREFIX}{job_id}-*") if root.is_dir() else ():
                shutil.rmtree(path, ignore_errors=True)
                gone += 1
        return gone
