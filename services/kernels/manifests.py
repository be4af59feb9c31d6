"""The model store read without torch: paths, manifests, and weights checked against them.

    <root>/<name>/weights.safetensors
    <root>/<name>/manifest.json   {name, kind, version, config, command, seed, data,
                                   metrics, sha256, created_at, torch}

:class:`StoreReader` is what a service on the Triton backend needs of the store: the
manifests (a classifier's resolution and versions, which diffae a probe set was fitted on)
and small entries' weights as numpy arrays (the sanitizer's probes). Nothing here imports
torch, so such a process never loads it; :class:`services.kernels.store.ModelStore` adds
writing and reading weights as torch tensors. The weights' SHA-256 is checked against the
manifest before a byte of them is deserialised, so a tampered or truncated file is refused
whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_arrays

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

DEFAULT_ROOT = Path(__file__).resolve().parent / "weights"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KINDS = ("diffae", "classifier", "probes", "protector", "domain")


class ModelIntegrityError(FailedPrecondition):
    """A stored model's weights do not match its manifest (tampered, truncated, missing)."""

    reason = "MODEL_INTEGRITY"


@dataclass
class Manifest:
    name: str
    kind: str
    version: int
    config: dict[str, Any]
    sha256: str
    command: str = ""
    seed: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    """``{"uri": ..., "n": ...}``: what it was trained on."""
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    torch: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


KEPT = re.compile(r"^(?P<name>.+)-r(?P<number>[1-9][0-9]*)$")
"""A kept registration of a store entry (``<entry>-r<number>``, written by the model
registry; ``services.unlearning.trained.keep``)."""


def kept_entry(name: str, number: int) -> str:
    """The store entry that keeps registration ``number`` of the entry ``name``."""
    return f"{name}-r{number}"


class StoreReader:
    """Models under ``root`` (default: the weights shipped with the package), read-only."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else DEFAULT_ROOT

    def path(self, name: str) -> Path:
        if not NAME.match(name):
            raise InvalidArgument(f"model name {name!r} must match {NAME.pattern}")
        return self.root / name

    def manifest(self, name: str) -> Manifest:
        path = self.path(name) / MANIFEST
        if not path.is_file():
            raise NotFound(f"no model {name!r} in {self.root}")
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ModelIntegrityError(f"manifest of {name!r} is unreadable: {exc}") from None

    def blob(self, name: str, kind: str | None = None) -> tuple[Manifest, bytes]:
        """Manifest and the raw safetensors bytes of ``name``, after checking their SHA-256."""
        manifest = self.manifest(name)
        if kind is not None and manifest.kind != kind:
            raise InvalidArgument(f"model {name!r} is a {manifest.kind}, not a {kind}")
        path = self.path(name) / WEIGHTS
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise ModelIntegrityError(f"model {name!r} has a manifest but no {WEIGHTS}") from None
        actual = hashlib.sha256(blob).hexdigest()
        if actual != manifest.sha256:
            raise ModelIntegrityError(
                f"weights of {name!r} do not match its manifest; refusing to load",
                details={"expected_sha256": manifest.sha256, "actual_sha256": actual},
            )
        return manifest, blob

    def arrays(self, name: str, kind: str | None = None) -> tuple[Manifest, dict[str, np.ndarray]]:
        """Manifest and weights of ``name`` as numpy arrays (checked as :meth:`blob`)."""
        manifest, blob = self.blob(name, kind)
        return manifest, load_arrays(blob)

    def kept(self, name: str) -> list[str]:
        """The kept registrations of the entry ``name`` in this store, newest first."""
        found = []
        for path in self.root.glob(f"{name}-r*/{MANIFEST}") if self.root.is_dir() else ():
            match = KEPT.match(path.parent.name)
            if match and match["name"] == name:
                found.append((int(match["number"]), path.parent.name))
        return [entry for _, entry in sorted(found, reverse=True)]

    def list(self) -> list[Manifest]:
        if not self.root.is_dir():
            return []
        names = sorted(p.parent.name for p in self.root.glob(f"*/{MANIFEST}"))
        return [self.manifest(n) for n in names]

    def verify(self, name: str | None = None) -> dict[str, str]:
        """name → "ok" or why it fails, for one model or all of them."""
        names = [name] if name else [m.name for m in self.list()]
        report: dict[str, str] = {}
        for each in names:
            try:
                manifest = self.manifest(each)
                path = self.path(each) / WEIGHTS
                if not path.is_file():
                    report[each] = f"missing {WEIGHTS}"
                elif sha256_file(path) != manifest.sha256:
                    report[each] = "sha256 mismatch"
                else:
                    report[each] = "ok"
            except (NotFound, ModelIntegrityError) as exc:
                report[each] = exc.message
        return report


LINEAGE_CONFIG = ("role", "attribute", "arch", "diffae_sha256", "authorized_sha256")
"""Config keys a manifest's lineage carries besides how it was trained."""


def manifest_lineage(manifest: Manifest) -> dict[str, str]:
    """Where a store entry came from, as its manifest records it: ``command``, ``seed``,
    ``data`` (its URI), ``data_n``, ``created_at``, ``sha256`` and the config keys of
    :data:`LINEAGE_CONFIG`; empty values left out. The model registry records these for a
    trained model (plus ``registered_by``); the sanitizer reports them without a registry."""
    data = manifest.data or {}
    lineage = {
        "command": manifest.command,
        "seed": "" if manifest.seed is None else str(manifest.seed),
        "data": str(data.get("uri", "")),
        "data_n": str(data.get("n", "")),
        "created_at": manifest.created_at,
        "sha256": manifest.sha256,
    }
    for key in LINEAGE_CONFIG:
        if manifest.config.get(key) not in (None, ""):
            lineage[key] = str(manifest.config[key])
    return {k: v for k, v in lineage.items() if v != ""}
