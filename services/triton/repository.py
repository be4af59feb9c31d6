"""Render ``triton_models/`` for a deployment: one repository in git, variants by rewriting.

The committed repository is the CPU one (``KIND_CPU`` instance groups, the packaged model
store): what ``veil triton`` serves locally. A GPU node serves the same models with
``KIND_GPU`` instance groups; tests serve them over a store of their own, or without
dynamic batching. Rather than keep copies of every ``config.pbtxt`` in step by hand, a
variant is rendered from the one repository:

    python -m services.triton.repository triton_models /opt/veil/models-gpu --kind gpu

(the Triton image does this at build time; ``k8s/images/Dockerfile.triton``). Only the instance
groups, string parameters (``store``, ``threads``, ``package_root``) and the
``dynamic_batching`` block are rewritten; names,
tensors, batch limits and version policies stay as committed, and each rewrite is checked
to have matched (a config that no longer has the expected line is an error, not a silent
copy). The bundled tritonserver of ``nvidia-pytriton`` has no ``--model-config-name``
(it exits on the flag), so per-platform ``configs/<name>.pbtxt`` are not an option here.

Every rendered model names the package it runs (parameter ``package_root``): by default the
one rendering it (:data:`~services.triton.settings.IMPORT_ROOT`), since the python backend's
stub ignores the server's ``PYTHONPATH`` and would import whatever ``services`` its
interpreter finds (``triton_models/*/1/model.py``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from services.triton.settings import IMPORT_ROOT

INSTANCE_GROUP = re.compile(r"instance_group \[[^\]]*\]")
DYNAMIC_BATCHING = re.compile(r"dynamic_batching \{[^}]*\}\n")
COUNT = re.compile(r"count: (\d+)")


class RenderError(ValueError):
    """A config did not have what the rendering rewrites."""


def _sub_once(pattern: re.Pattern[str], repl: str, text: str, what: str, path: Path) -> str:
    out, n = pattern.subn(lambda _: repl, text)
    if n != 1:
        raise RenderError(f"{path}: expected one {what}; found {n}")
    return out


def render_config(
    text: str,
    path: Path,
    *,
    kind: Literal["cpu", "gpu"] | None = None,
    count: int | None = None,
    parameters: Mapping[str, str] | None = None,
    batching: bool = True,
    queue_delay_us: int | None = None,
) -> str:
    """One ``config.pbtxt`` rewritten (see the module docstring)."""
    if kind is not None or count is not None:
        current = INSTANCE_GROUP.search(text)
        if current is None:
            raise RenderError(f"{path}: expected one instance_group; found 0")
        found = COUNT.search(current.group(0))
        instances = count if count is not None else int(found.group(1)) if found else 1
        if instances < 1:
            raise RenderError(f"instance count must be >= 1; got {instances}")
        if kind is None:
            kind = "gpu" if "KIND_GPU" in current.group(0) else "cpu"
        group = f"instance_group [ {{ kind: KIND_{kind.upper()} count: {instances} }} ]"
        text = _sub_once(INSTANCE_GROUP, group, text, "instance_group", path)
    for key, value in (parameters or {}).items():
        pattern = re.compile(rf'key: "{re.escape(key)}" value: \{{ string_value: "[^"]*" \}}')
        replacement = f'key: "{key}" value: {{ string_value: "{value}" }}'
        text = _sub_once(pattern, replacement, text, f"parameter {key!r}", path)
    if not batching:
        text = _sub_once(DYNAMIC_BATCHING, "", text, "dynamic_batching block", path)
    elif queue_delay_us is not None:
        block = f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}\n"
        text = _sub_once(DYNAMIC_BATCHING, block, text, "dynamic_batching block", path)
    return text


def render(
    source: str | Path,
    target: str | Path,
    *,
    kind: Literal["cpu", "gpu"] | None = None,
    count: int | None = None,
    parameters: Mapping[str, str] | None = None,
    batching: bool = True,
    queue_delay_us: int | None = None,
    models: Sequence[str] | None = None,
) -> Path:
    """Copy the repository ``source`` (``models`` only, default all) to ``target`` with
    every ``config.pbtxt`` rewritten (``package_root``: this package's unless ``parameters``
    names one). ``target`` must not exist yet."""
    source, target = Path(source), Path(target)
    names = sorted(p.parent.name for p in source.glob("*/config.pbtxt"))
    if models is not None:
        unknown = sorted(set(models) - set(names))
        if unknown:
            raise RenderError(f"{source}: no model(s) {unknown}; it has {names}")
        names = [n for n in names if n in models]
    if not names:
        raise RenderError(f"{source}: no <model>/config.pbtxt found")
    parameters = {"package_root": str(IMPORT_ROOT), **(parameters or {})}
    target.mkdir(parents=True, exist_ok=False)
    for extra in source.glob("*.md"):
        shutil.copy2(extra, target / extra.name)
    for name in names:
        shutil.copytree(source / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        config = target / name / "config.pbtxt"
        text = render_config(
            config.read_text(),
            config,
            kind=kind,
            count=count,
            parameters=parameters,
            batching=batching,
            queue_delay_us=queue_delay_us,
        )
        config.write_text(text)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.triton.repository", description=__doc__.splitlines()[0]
    )
    parser.add_argument("source", type=Path, help="the repository to copy (triton_models)")
    parser.add_argument("target", type=Path, help="where to write the variant (must not exist)")
    parser.add_argument("--kind", choices=("cpu", "gpu"), help="instance kind of every model")
    parser.add_argument("--count", type=int, help="instances per device (default: as committed)")
    parser.add_argument("--store", help="model store directory the models load from")
    parser.add_argument("--threads", type=int, help="torch threads per instance")
    parser.add_argument(
        "--package-root",
        help=f"sys.path entry the models import Veil from (default: {IMPORT_ROOT})",
    )
    parser.add_argument("--no-batching", action="store_true", help="drop dynamic_batching")
    parser.add_argument("--models", help="comma-separated subset (default: all)")
    args = parser.parse_args(argv)
    try:
        out = render(
            args.source,
            args.target,
            kind=args.kind,
            count=args.count,
            parameters={
                k: str(v)
                for k, v in (
                    ("store", args.store),
                    ("threads", args.threads),
                    ("package_root", args.package_root),
                )
                if v
            },
            batching=not args.no_batching,
            models=args.models.split(",") if args.models else None,
        )
    except (RenderError, FileExistsError) as exc:
        print(f"services.triton.repository: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
