"""Regenerate the committed protobuf/gRPC stubs under ``services/_proto`` from ``proto/``.

``python -m services._proto.generate`` regenerates in place (``make proto``);
``--check`` regenerates into a temporary directory and exits 1 with a diff summary if the
committed files differ, are missing or are extra (``make proto-check``, run in CI).
``--root`` points at another checkout (tests use it to check a tampered copy).

protoc emits absolute imports (``from veil.v1 import common_pb2``); they are rewritten to
``from services._proto.veil.v1 import common_pb2`` so the stubs import as part of
``services``. The output depends only on the ``.proto`` files and the pinned grpcio-tools.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = "proto"
OUT_DIR = Path("services", "_proto")
PACKAGE_DIR = Path("veil")  # the generated tree, relative to OUT_DIR
INIT_DIRS = (PACKAGE_DIR, PACKAGE_DIR / "v1")
_IMPORT = re.compile(r"^(\s*)from veil(\.v\d+)? import ", re.MULTILINE)
_DIFF_LINES = 40  # lines of diff shown per differing file


def proto_files(root: Path) -> list[str]:
    """The ``.proto`` files under ``root/proto``, relative to it, sorted."""
    base = root / PROTO_DIR
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*.proto"))


def generate(root: Path) -> dict[str, str]:
    """Run protoc for ``root``'s protos and return the generated tree: path → text."""
    protos = proto_files(root)
    if not protos:
        raise SystemExit(f"no .proto files under {root / PROTO_DIR}")
    include = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{root / PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out = {
            p.relative_to(tmp).as_posix(): _rewrite_imports(p.read_text(encoding="utf-8"))
            for p in sorted(Path(tmp).rglob("*"))
            if p.is_file()
        }
    for d in INIT_DIRS:
        out.setdefault((d / "__init__.py").as_posix(), "")
    return dict(sorted(out.items()))


def _rewrite_imports(text: str) -> str:
    return _IMPORT.sub(lambda m: f"{m[1]}from services._proto.veil{m[2] or ''} import ", text)


def committed(root: Path) -> dict[str, str]:
    """The committed generated tree under ``root``: path → text (caches ignored)."""
    base = root / OUT_DIR
    return {
        p.relative_to(base).as_posix(): p.read_text(encoding="utf-8")
        for p in sorted((base / PACKAGE_DIR).rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def write(root: Path, tree: dict[str, str]) -> None:
    """Replace the generated tree under ``root`` with ``tree`` (stale files removed)."""
    base = root / OUT_DIR
    shutil.rmtree(base / PACKAGE_DIR, ignore_errors=True)
    for rel, text in tree.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (base / "__init__.py").touch()


def drift(root: Path) -> list[str]:
    """Describe how the committed tree differs from a fresh generation; empty = none."""
    want, have = generate(root), committed(root)
    problems = [f"missing: {OUT_DIR / rel}" for rel in sorted(want.keys() - have.keys())]
    problems += [f"extra: {OUT_DIR / rel}" for rel in sorted(have.keys() - want.keys())]
    for rel in sorted(want.keys() & have.keys()):
        if want[rel] != have[rel]:
            name = (OUT_DIR / rel).as_posix()
            diff = difflib.unified_diff(
                have[rel].splitlines(),
                want[rel].splitlines(),
                f"{name} (committed)",
                f"{name} (generated)",
                lineterm="",
            )
            lines = list(diff)
            more = len(lines) - _DIFF_LINES
            tail = [f"... {more} more diff lines"] if more > 0 else []
            problems.append("\n".join([f"differs: {name}", *lines[:_DIFF_LINES], *tail]))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services._proto.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail on drift, write nothing")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not args.check:
        write(root, generate(root))
        return 0
    problems = drift(root)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print("generated stubs are stale: run `make proto` and commit", file=sys.stderr)
        return 1
    print("services/_proto is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
