"""The layout's rules, read from docs/ARCHITECTURE.md and held against the code's imports.

The checker reads the import graph with ``ast`` (nothing of the project is run for the
static part) and reports every import the "Allowed arrows" table does not allow, and every
direct import of a module the "never loads" table forbids. A subprocess test then imports
each package of the second table in a fresh interpreter and looks at ``sys.modules``, which
catches what a package loads through others. The "Cores without transport" table is held
the same two ways: every import of ours a core reaches (lazy ones included) is walked, then
the core is imported in a fresh interpreter. The "Services on the Triton backend" table is
held by importing, building, starting and stopping each service's app in a fresh
interpreter with ``VEIL_INFERENCE_BACKEND=triton``. Tests on temporary trees show the
checkers catching a forbidden import, so they can fail.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
CODE_DIRS = ("services", "triton_models")
GENERATED = "services/_proto/veil"


@dataclass(frozen=True)
class Rules:
    allowed: dict[str, set[str]]
    """package → the packages of ours it may import (itself and ``services`` implied)."""
    never: dict[str, set[str]]
    """package → third-party top-level modules it must never load."""
    cores: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    """core module → (what it never imports, even through others; what it never loads)."""
    on_triton: dict[str, set[str]] = field(default_factory=dict)
    """service package → what its app never loads on the Triton backend."""


def _table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells stripped of backticks) of the first table under ``## heading``."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("`", "") for c in row.strip("|").split("|")] for row in rows]
    return [row for row in cells[1:] if not set("".join(row)) <= set("-: ")]


def _names(cell: str) -> set[str]:
    return {n.strip() for n in cell.split(",") if n.strip() and n.strip() != "—"}


def read_rules(doc: Path = DOC) -> Rules:
    text = doc.read_text()
    allowed = {row[0]: _names(row[-1]) for row in _table(text, "Allowed arrows")}
    never = {row[0]: _names(row[-1]) for row in _table(text, "Modules a package never loads")}
    cores = {
        row[0]: (_names(row[-2]), _names(row[-1]))
        for row in _table(text, "Cores without transport")
    }
    on_triton = {row[0]: _names(row[-1]) for row in _table(text, "Services on the Triton backend")}
    return Rules(allowed, never, cores, on_triton)


def package_of(module: str, packages: set[str]) -> str | None:
    """The longest package of the table that ``module`` lies in (None: not ours)."""
    best = None
    for pkg in packages:
        if (module == pkg or module.startswith(pkg + ".")) and len(pkg) > len(best or ""):
            best = pkg
    return best


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            # ``from services import kernels`` imports services.kernels, not just services.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            found.append((node.lineno, base))
    return found


def violations(root: Path, rules: Rules) -> list[str]:
    """Every import under ``root`` that breaks ``rules``, as ``file:line: a -> b (why)``."""
    packages = set(rules.allowed)
    found: list[str] = []
    for top in CODE_DIRS:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith(GENERATED):
                continue
            module = module_name(path, root)
            own = package_of(module, packages)
            if own is None:
                if top == "services" and module != "services":
                    found.append(f"{rel}: module {module} lies in no package of the table")
                continue
            for line, target in imports_of(path, module):
                head = target.split(".")[0]
                if head in rules.never.get(own, set()):
                    found.append(f"{rel}:{line}: {own} -> {head} (never loads {head})")
                if head != "services" or target == "services":
                    continue
                dest = package_of(target, packages)
                if dest is None:
                    # ``from services import __version__``: an attribute of the root package.
                    if target.count(".") > 1:
                        found.append(f"{rel}:{line}: {own} -> {target} (no such package)")
                elif dest != own and dest not in rules.allowed[own]:
                    found.append(f"{rel}:{line}: {own} -> {dest} (not an allowed arrow)")
    return list(dict.fromkeys(found))  # one line per (place, arrow)


def test_the_rules_are_written_down() -> None:
    rules = read_rules()
    for pkg in ("services.common", "services.kernels", "services.serving", "triton_models"):
        assert pkg in rules.allowed
    assert rules.allowed["services.common"] == set()
    assert "services.runtime" not in rules.allowed["services.kernels"]
    assert rules.never["services.accountant"] >= {"torch"}
    for svc in ("sanitizer", "protection", "unlearning"):
        never_imports, never_loads = rules.cores[f"services.{svc}.core"]
        assert never_imports >= {"grpc", "services._proto", "services.runtime"}
        assert never_loads >= {"grpc", "torch"}
    assert rules.cores["services.accountant.ledger"][0] >= {"grpc", "services.runtime"}
    assert rules.on_triton["services.sanitizer"] >= {"torch"}
    assert rules.on_triton["services.protection"] >= {"torch"}


def test_the_code_keeps_every_arrow() -> None:
    assert violations(ROOT, read_rules()) == []


def test_every_package_under_services_is_in_the_table() -> None:
    packages = set(read_rules().allowed)
    on_disk = {
        f"services.{p.name}"
        for p in (ROOT / "services").iterdir()
        if p.is_dir() and (p / "__init__.py").exists()
    }
    assert on_disk <= packages, on_disk - packages


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        ("services/kernels/bad.py", "from services.runtime.server import X\n", "not an allowed"),
        ("services/kernels/bad.py", "import grpc\n", "never loads grpc"),
        ("services/common/bad.py", "from services.kernels import diffae\n", "not an allowed"),
        ("services/serving/bad.py", "from ..runtime import auth\n", "not an allowed"),
        ("services/accountant/bad.py", "def f():\n    import torch\n", "never loads torch"),
        ("services/sanitizer/bad.py", "from services.accountant import ledger\n", "allowed"),
        ("triton_models/m/1/model.py", "from services.inference import local\n", "allowed"),
        (
            "services/kernels/bad.py",
            "import typing\nif typing.TYPE_CHECKING:\n"
            "    from services.inference.backend import X\n",
            "not an allowed",
        ),
    ],
)
def test_the_checker_catches_a_forbidden_import(
    tmp_path: Path, rel: str, source: str, expected: str
) -> None:
    for pkg in read_rules().allowed:
        if pkg.startswith("services."):
            _write(tmp_path, pkg.replace(".", "/") + "/__init__.py", "")
    _write(tmp_path, "services/__init__.py", "")
    _write(tmp_path, "services/kernels/fine.py", "from services.common.errors import X\n")
    assert violations(tmp_path, read_rules()) == []
    _write(tmp_path, rel, source)
    found = violations(tmp_path, read_rules())
    assert len(found) == 1 and expected in found[0], found


ONLY_IN_TRITON = {"services.serving.triton_model"}
"""Imports ``triton_python_backend_utils``, which exists only inside Triton's python-backend
stub; its own imports are held by the static check, and what they load by the rest of
``services.serving``."""


def _modules_of(package: str) -> list[str]:
    base = ROOT / package.replace(".", "/")
    if base.with_suffix(".py").is_file():  # a one-module row, e.g. services.kernels.mechanism
        return [package]
    modules = (
        module_name(p, ROOT)
        for p in base.rglob("*.py")
        if p.name != "__main__.py" and not p.relative_to(ROOT).as_posix().startswith(GENERATED)
    )
    return sorted(set(modules) - ONLY_IN_TRITON)


def loaded(modules: list[str], forbidden: list[str], cwd: Path) -> list[str]:
    """Which of ``forbidden`` a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(json.dumps(sorted(n for n in {forbidden!r} if n in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", sorted(read_rules().never))
def test_a_package_never_loads_what_it_must_not(package: str) -> None:
    forbidden = sorted(read_rules().never[package])
    assert loaded(_modules_of(package), forbidden, ROOT) == []


def test_the_load_check_sees_what_is_loaded_through_another_module(tmp_path: Path) -> None:
    (tmp_path / "outer.py").write_text("import inner\n")
    (tmp_path / "inner.py").write_text("import sqlite3\n")
    assert loaded(["outer"], ["sqlite3", "tomllib"], tmp_path) == ["sqlite3"]


# -- cores without transport -------------------------------------------------------------------


def module_file(module: str, root: Path) -> Path | None:
    """The file of ``module`` under ``root`` (a module or a package), None when none is."""
    base = root / module.replace(".", "/")
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _in(module: str, packages: set[str]) -> str | None:
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def core_violations(root: Path, core: str, forbidden: set[str]) -> list[str]:
    """What ``core`` reaches of ``forbidden`` through every import of ours it reaches,
    wherever the imports stand: a package of ours as ``core -> … -> importer -> package``
    (once per importer), a third-party module as ``file:line: module imports grpc``."""
    ours = {f for f in forbidden if f.split(".")[0] == "services"}
    others = forbidden - ours
    parent: dict[str, str] = {core: ""}
    queue, found = [core], []
    while queue:
        module = queue.pop(0)
        path = module_file(module, root)
        if path is None:
            continue
        rel = path.relative_to(root).as_posix()
        for line, target in imports_of(path, module):
            head = target.split(".")[0]
            if head in others:
                found.append(f"{rel}:{line}: {module} imports {head}")
            if head != "services":
                continue
            parts = target.split(".")
            for n in range(2, len(parts) + 1):  # the packages on the way are imported too
                name = ".".join(parts[:n])
                if name in parent or module_file(name, root) is None:
                    continue
                parent[name] = module
                package = _in(name, ours)
                if package is None:
                    queue.append(name)
                    continue
                chain = [module]
                while parent[chain[-1]]:
                    chain.append(parent[chain[-1]])
                found.append(" -> ".join([*reversed(chain), package]))
    return list(dict.fromkeys(found))


def test_every_service_has_a_core_row() -> None:
    cores = set(read_rules().cores)
    services = {p.parent.name for p in (ROOT / "services").glob("*/app.py")}
    assert services, "no service package found"
    for svc in services:
        assert any(c.startswith(f"services.{svc}.") for c in cores), svc


@pytest.mark.parametrize("core", sorted(read_rules().cores))
def test_a_core_reaches_no_transport(core: str) -> None:
    assert module_file(core, ROOT) is not None, f"{core} does not exist"
    assert core_violations(ROOT, core, read_rules().cores[core][0]) == []


@pytest.mark.parametrize("core", sorted(read_rules().cores))
def test_a_core_loads_no_transport_and_no_torch(core: str) -> None:
    forbidden = sorted(read_rules().cores[core][1])
    assert loaded([core], forbidden, ROOT) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"services/svc/helper.py": "def f():\n    from services.runtime import x\n"}, "helper"),
        ({"services/svc/helper.py": "import grpc\n"}, "imports grpc"),
        ({"services/svc/helper.py": "from services import runtime\n"}, "services.runtime"),
        (
            {
                "services/svc/helper.py": "from .deeper import x\n",
                "services/svc/deeper.py": "import grpc\n",
            },
            "deeper",
        ),
    ],
)
def test_the_core_checker_follows_imports(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    for rel in ("services/__init__.py", "services/svc/__init__.py", "services/runtime/__init__.py"):
        _write(tmp_path, rel, "")
    _write(tmp_path, "services/runtime/x.py", "")
    _write(tmp_path, "services/svc/core.py", "from services.svc.helper import f\n")
    _write(tmp_path, "services/svc/helper.py", "import json\n")
    forbidden = {"grpc", "services.runtime"}
    assert core_violations(tmp_path, "services.svc.core", forbidden) == []
    for rel, text in files.items():
        _write(tmp_path, rel, text)
    found = core_violations(tmp_path, "services.svc.core", forbidden)
    assert len(found) == 1 and expected in found[0], found


# -- services on the Triton backend ------------------------------------------------------------

ON_TRITON = """
import asyncio, importlib, json, sys
app_module = importlib.import_module({package!r} + ".app")
settings = app_module.Settings(host="127.0.0.1", port=0, metrics_port=None)
assert settings.inference.backend == "triton", settings.inference.backend
app = app_module.build_app(settings)

async def cycle():  # what a server runs, but bound to no port: start, readiness, stop
    for hook in app.on_start:
        await hook()
    assert await app.ready() is False  # no Triton answers
    for hook in app.on_stop:
        await hook()

asyncio.run(cycle())
print(json.dumps(sorted(n for n in {forbidden!r} if n in sys.modules)))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("package", sorted(read_rules().on_triton))
def test_a_service_on_triton_loads_no_torch(package: str, tmp_path: Path) -> None:
    forbidden = sorted(read_rules().on_triton[package])
    env = {
        **os.environ,
        "VEIL_INFERENCE_BACKEND": "triton",
        "VEIL_INFERENCE_TRITON_URL": f"127.0.0.1:{_free_port()}",
        "VEIL_INFERENCE_READY_TIMEOUT_S": "0.5",
        "VEIL_DATA_DIR": str(tmp_path),
    }
    code = ON_TRITON.format(package=package, forbidden=forbidden)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
