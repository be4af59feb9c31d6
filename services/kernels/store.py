"""The model store: one directory per model, weights verified before they are read.

Reading manifests and checking weights is :class:`~services.kernels.manifests.StoreReader`
(no torch: what a service on the Triton backend uses); :class:`ModelStore` adds the
weights as torch tensors, written with their manifest and read back after the SHA-256
check. safetensors holds only tensors (no pickled code). The default store ships inside
the package (``services/kernels/weights/``): models trained here, with the command and
seed that made them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from services.common.errors import InvalidArgument
from services.kernels.manifests import (
    DEFAULT_ROOT,
    KINDS,
    MANIFEST,
    WEIGHTS,
    Manifest,
    ModelIntegrityError,
    StoreReader,
)

__all__ = ["DEFAULT_ROOT", "MANIFEST", "WEIGHTS", "Manifest", "ModelIntegrityError", "ModelStore"]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ModelStore(StoreReader):
    """Models under ``root`` (default: the weights shipped with the package)."""

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

    def load(self, name: str, kind: str | None = None) -> tuple[Manifest, dict[str, torch.Tensor]]:
        """Manifest and tensors of ``name``, after checking the weights' SHA-256."""
        manifest, blob = self.blob(name, kind)
        return manifest, load_safetensors(blob)
