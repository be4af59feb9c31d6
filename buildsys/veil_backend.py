"""The build backend: setuptools, with the wheel's import packages under one ``veil`` name.

The checkout keeps its top-level folders (``services/``, ``triton_models/``, ``proto/``), and
an editable install serves them as they are. A wheel that installed them so would put
packages named ``services`` and ``proto`` into site-packages, where anything else of those
names collides with them. :func:`build_wheel` therefore builds the wheel with setuptools,
then maps it: every file of those packages moves under ``veil/`` (``veil/services/…``),
the Python sources' imports of them and the module names they spell as strings
(``"services.cli"`` for ``python -m``, the registry's app modules) gain the ``veil.``
prefix, the console script becomes ``veil.services.cli.main:main``, and ``RECORD`` is
written again. An ``import services …`` statement (rather than ``from services …``) would
rebind a different name once prefixed, so one is refused, as is any file left outside.

``tests/test_packaging.py`` installs the built wheel in a clean venv and runs it from
outside the checkout.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (  # noqa: F401  (the rest of the backend, unchanged)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

NAMESPACE = "veil"
PACKAGES = ("services", "triton_models", "proto")
_NAMES = "|".join(PACKAGES)
FROM_IMPORT = re.compile(rf"^(\s*)from ({_NAMES})(?=[.\s])", re.MULTILINE)
PLAIN_IMPORT = re.compile(rf"^\s*import ({_NAMES})\b", re.MULTILINE)
MODULE_STRING = re.compile(rf"(?<=[\"'])({_NAMES})(?=\.[A-Za-z_])")
"""A string that starts with a module path of the packages (``"services.cli"``,
``f"services._proto.{x}"``): the only spelling of module names outside imports here."""
INIT = f'"""Veil, installed: {", ".join(PACKAGES)} of the repository, under one name."""\n'


class MappingError(RuntimeError):
    """The wheel holds something the mapping cannot move safely."""


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    name = str(build_meta.build_wheel(wheel_directory, config_settings, metadata_directory))
    map_wheel(Path(wheel_directory) / name)
    return name


def map_source(text: str, path: str) -> str:
    """``text`` of ``path`` with its imports and module strings under :data:`NAMESPACE`."""
    plain = PLAIN_IMPORT.search(text)
    if plain:
        raise MappingError(f"{path}: `import {plain.group(1)}…` cannot be mapped; use `from`")
    text = FROM_IMPORT.sub(rf"\1from {NAMESPACE}.\2", text)
    return MODULE_STRING.sub(rf"{NAMESPACE}.\1", text)


def map_wheel(wheel: Path) -> None:
    """Rewrite ``wheel`` in place (see the module docstring)."""
    with zipfile.ZipFile(wheel) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    dist_info = next(i.filename.split("/")[0] for i, _ in entries if ".dist-info/" in i.filename)
    files: dict[str, bytes] = {f"{NAMESPACE}/__init__.py": INIT.encode()}
    infos: dict[str, zipfile.ZipInfo] = {}
    for info, data in entries:
        top, _, rest = info.filename.partition("/")
        if top == dist_info:
            if rest == "RECORD":
                continue
            if rest == "entry_points.txt":
                data = re.sub(rb"= (services)\.", b"= " + NAMESPACE.encode() + rb".\1.", data)
            elif rest == "top_level.txt":
                data = f"{NAMESPACE}\n".encode()
            files[info.filename] = data
            infos[info.filename] = info
            continue
        if top not in PACKAGES:
            raise MappingError(f"{info.filename}: outside {PACKAGES}; the mapping would miss it")
        if info.filename.endswith((".py", ".pyi")):
            data = map_source(data.decode(), info.filename).encode()
        files[f"{NAMESPACE}/{info.filename}"] = data
        infos[f"{NAMESPACE}/{info.filename}"] = info
    record = f"{dist_info}/RECORD"
    lines = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    files[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            if name in infos:  # the original's time and mode
                entry.date_time = infos[name].date_time
                entry.external_attr = infos[name].external_attr
            entry.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(entry, data)
    tmp.replace(wheel)


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
