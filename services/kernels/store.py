"""The model store: one directory per model, weights verified before they are read.

    <root>/<name>/weights.safetensors
    <root>/<name>/manifest.json   {name, kind, version, config, command, seed, data,
                                   metrics, sha256, created_at, torch}

safetensors holds only tensors (no pickled code), and :meth:`ModelStore.load` checks the
file's SHA-256 against the manifest before deserialising a byte of it, so a tampered or
truncated file is refused whole. The default store ships inside the package
(``services/kernels/weights/``): models trained here, with the command and seed that
made them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

DEFAULT_ROOT = Path(__file__).resolve().parent / "weights"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KINDS = ("diffae", "classifier", "probes", "protector")


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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ModelStore:
    """Models under ``root`` (default: the weights shipped with the package)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else DEFAULT_ROOT

    def path(self, name: str) -> Path:
        if not NAME.match(name):
            raise InvalidArgument(f"model name {name!r} must match {NAME.pattern}")
        return self.root / name

    def save(
        self,
        name: str,
        kind: str,
        tensors: dict[str, torch.Tensor],
        config: dict[str, Any],
        *,
        command: str = "",
        seed: int | None = None,
        data: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> Manifest:
        """Write (or replace, with version + 1) model ``name``; returns its manifest."""
        if kind not in KINDS:
            raise InvalidArgument(f"kind must be one of {KINDS}; got {kind!r}")
        directory = self.path(name)
        directory.mkdir(parents=True, exist_ok=True)
        version = 1
        if (directory / MANIFEST).is_file():
            version = self.manifest(name).version + 1
        blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        manifest = Manifest(
            name=name,
            kind=kind,
            version=version,
            config=config,
            sha256=hashlib.sha256(blob).hexdigest(),
            command=command,
            seed=seed,
            data=data or {},
            metrics=metrics or {},
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            torch=torch.__version__,
        )
        _write_atomic(directory / WEIGHTS, blob)
        text = json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n"
        _write_atomic(directory / MANIFEST, text.encode())
        return manifest

    def manifest(self, name: str) -> Manifest:
        path = self.path(name) / MANIFEST
        if not path.is_file():
            raise NotFound(f"no model {name!r} in {self.root}")
        try:
            return Manifest.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ModelIntegrityError(f"manifest of {name!r} is unreadable: {exc}") from None

    def load(self, name: str, kind: str | None = None) -> tuple[Manifest, dict[str, torch.Tensor]]:
        """Manifest and tensors of ``name``, after checking the weights' SHA-256."""
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
        return manifest, load_safetensors(blob)

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
