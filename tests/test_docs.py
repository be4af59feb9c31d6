"""The docs, held against the code, so that they cannot drift (issue #24).

Each check is a function that takes the text of a document (and, where it needs them, the
code's facts from :func:`read_facts`) and returns its problems as sentences. The tests below
assert that the real docs have none, then feed the same functions mutated copies to show
that each one fails when a service, a layer rule, a status or a figure changes without the
docs.

1. **Status** (:func:`status_problems`, README.md ``## Status``). Its first table has the
   columns ``service | package | proto service | k8s | status`` (in any order); a status is
   ``available`` or ``not yet`` (anything after a colon is a comment). Every service package
   (a package under ``services/`` with an ``app.py``), every service ``veil serve`` knows
   (``services/cli/registry.py``) and every ``service`` of ``proto/veil/v1/*.proto`` but the
   shared ``Diagnostics`` has a row. An ``available`` row must name a package that exists,
   whose ``app.py`` registers the servicer of the row's proto service
   (``add_<Name>Servicer_to_server``); a proto service that the .proto files declare; and a
   folder under ``k8s/base/`` that holds a ``kind: Deployment`` manifest and that
   ``k8s/base/kustomization.yaml`` lists. A ``not yet`` row fails as soon as its package has an
   ``app.py`` or ``veil serve`` knows the service. The second table
   (``part | where | status``, status ``available``, ``never run`` or ``not yet``) names, in
   backticks, paths that must exist; a ``not yet`` part names none (``—``).
2. **RPCs** (:func:`rpc_problems`). For each row of the status table, the README's one
   ``##`` section whose heading names the service and which holds a table whose first
   column is headed ``RPC`` names, in that column, exactly the rpcs of the row's proto
   service. Every rpc of ``Diagnostics`` is named somewhere in the README.
3. **Figures** (:func:`figure_problems`, README.md and docs/*.md). A *measured figure* is,
   outside code (fenced blocks, inline code, HTML comments and link targets are ignored), a
   number followed by a unit (``ms s min h MB MiB GB GiB dB %``, or ``×`` not followed by a
   digit: a ratio, not a size such as 32×32), or a table cell that starts with a decimal
   number (``0.427``, ``**1.000**``, ``0.27 / 0.28``; ``279 vs 255`` is not). A section (the text
   from one heading, of any level, to the next) holding a measured figure must also hold the
   command that measured it (inline code or a fenced block with ``python -m bench.<name>``,
   ``make <target>`` or ``veil <command>``) and a date, ``YYYY-MM-DD``. Settings and defaults
   are not measurements: write them in backticks (``16 MiB``) and the rule skips them.
4. **Diagram** (:func:`diagram_problems`, docs/ARCHITECTURE.md). The first fenced block is the
   diagram. Its words, outside parentheses (which hold comments) and but for ``everything``,
   are package names: ``x`` is ``services.x``, ``triton_models/`` is ``triton_models``, and a
   dotted row of the table (``services.kernels.mechanism``) may be written ``kernels.mechanism``
   or by its last part. The names must be exactly the packages of the "Allowed arrows" table,
   and each must exist.
5. **Layout** (:func:`layout_problems`, the ``## Layout`` blocks of README.md and
   docs/DESIGN.md). The packages the block names (``services/x/``, or ``  x/`` indented two
   spaces under ``services/``) must exist, and every package directly under ``services/`` must
   be named; ``services/<service>/`` stands for every package with an ``app.py``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import yaml

from services.cli.registry import SERVICES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ARCHITECTURE = DOCS / "ARCHITECTURE.md"

SHARED_PROTO_SERVICES = frozenset({"Diagnostics"})
"""Proto services every server mounts (services.runtime), not a service of their own."""


# ---------------------------------------------------------------------------------------------
# The code's facts


@dataclass(frozen=True)
class Facts:
    """What the tree holds, as the checks need it."""

    root: Path
    packages: frozenset[str]
    """Every package and module under ``services/``, dotted (``services.kernels.mechanism``)."""
    servicers: dict[str, frozenset[str]]
    """Package with an ``app.py`` → the proto services whose servicers its app.py registers."""
    protos: dict[str, frozenset[str]]
    """Proto service (``Accountant``) → its rpcs."""
    k8s: frozenset[str]
    """Folders under k8s/base/ (``k8s/base/accountant``) with a Deployment, listed there."""
    served: frozenset[str] = field(default_factory=frozenset)
    """The services ``veil serve`` knows."""

    def exists(self, path: str) -> bool:
        return (self.root / path).exists()


def _packages(root: Path) -> frozenset[str]:
    found = set()
    for path in (root / "services").rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found.add(".".join(parts))
    return frozenset(found)


def _proto_services(root: Path) -> dict[str, frozenset[str]]:
    protos: dict[str, frozenset[str]] = {}
    for path in sorted((root / "proto" / "veil" / "v1").glob("*.proto")):
        text = re.sub(r"//[^\n]*", "", path.read_text())
        for name, body in re.findall(r"\bservice\s+(\w+)\s*\{(.*?)\n\}", text, flags=re.S):
            protos[name] = frozenset(re.findall(r"\brpc\s+(\w+)\s*\(", body))
    return protos


def _k8s(root: Path) -> frozenset[str]:
    base = root / "k8s" / "base"
    listed = yaml.safe_load((base / "kustomization.yaml").read_text()).get("resources", [])
    found = set()
    for name in listed:
        folder = base / name
        manifests = folder.glob("*.yaml") if folder.is_dir() else []
        if any(re.search(r"^kind:\s*Deployment\b", m.read_text(), re.M) for m in manifests):
            found.add(f"k8s/base/{name}")
    return frozenset(found)


def read_facts(root: Path = ROOT) -> Facts:
    servicers = {}
    for app in sorted((root / "services").glob("*/app.py")):
        package = f"services.{app.parent.name}"
        servicers[package] = frozenset(
            re.findall(r"\badd_(\w+)Servicer_to_server\b", app.read_text())
        )
    registry = root / "services" / "cli" / "registry.py"
    served = re.findall(r'^\s*"(\w+)": ServiceEntry\(', registry.read_text(), flags=re.M)
    return Facts(
        root=root,
        packages=_packages(root),
        servicers=servicers,
        protos=_proto_services(root),
        k8s=_k8s(root),
        served=frozenset(served),
    )


# ---------------------------------------------------------------------------------------------
# Markdown


def _lines_outside_fences(text: str) -> list[tuple[str, bool]]:
    """(line, inside a fenced code block) for every line."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            out.append((line, True))
            fenced = not fenced
        else:
            out.append((line, fenced))
    return out


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for each heading of any level outside code; '' for the text before
    the first one. The body keeps its fenced blocks."""
    found: list[tuple[str, list[str]]] = [("", [])]
    for line, fenced in _lines_outside_fences(text):
        if not fenced and re.match(r"#{1,6} ", line):
            found.append((line.lstrip("#").strip(), []))
        else:
            found[-1][1].append(line)
    return [(heading, "\n".join(body)) for heading, body in found]


def section(text: str, heading: str) -> str:
    """The body of the first section whose heading is ``heading``."""
    for name, body in sections(text):
        if name == heading:
            return body
    raise LookupError(f"no section {heading!r}")


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


def tables(text: str) -> list[list[list[str]]]:
    """Every table outside code: rows of raw cells, the header first, the separator dropped."""
    found: list[list[list[str]]] = []
    previous = False
    for line, fenced in _lines_outside_fences(text):
        is_row = not fenced and line.lstrip().startswith("|")
        if is_row:
            row = _cells(line)
            if all(re.fullmatch(r":?-+:?", c) for c in row if c):
                continue
            if not previous:
                found.append([])
            found[-1].append(row)
        previous = is_row
    return found


def plain(cell: str) -> str:
    """A cell without backticks and emphasis."""
    return cell.replace("`", "").replace("**", "").strip()


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _records(table: list[list[str]]) -> list[dict[str, str]]:
    header = [plain(c).lower() for c in table[0]]
    return [dict(zip(header, row, strict=False)) for row in table[1:]]


# ---------------------------------------------------------------------------------------------
# 1. Status

STATUS_COLUMNS = ("service", "package", "proto service", "k8s", "status")
SERVICE_STATES = ("available", "not yet")
PART_STATES = ("available", "never run", "not yet")


def _state(cell: str) -> str:
    return plain(cell).split(":")[0].strip().lower()


def status_rows(readme: str) -> list[dict[str, str]]:
    """The service table of README's ``## Status``: one dict per row, cells stripped."""
    for table in tables(section(readme, "Status")):
        header = tuple(plain(c).lower() for c in table[0])
        if set(STATUS_COLUMNS) <= set(header):
            return [{k: plain(v) for k, v in row.items()} for row in _records(table)]
    raise LookupError(f"README's Status section has no table with columns {STATUS_COLUMNS}")


def _protos(row: dict[str, str]) -> list[str]:
    """The proto services of a row: one, or several separated by commas (a server that
    serves more than one, e.g. unlearning and its model registry)."""
    return [p.strip().removeprefix("veil.v1.") for p in row["proto service"].split(",") if p]


def _service_row_problems(row: dict[str, str], facts: Facts) -> list[str]:
    name, package, state = row["service"], row["package"], _state(row["status"])
    k8s = row["k8s"].rstrip("/")
    if state not in SERVICE_STATES:
        return [f"{name}: status {row['status']!r} is none of {SERVICE_STATES}"]
    if state == "not yet":
        problems = []
        if package in facts.servicers:
            problems.append(f"{name}: says 'not yet' but {package} has an app.py")
        if name in facts.served:
            problems.append(f"{name}: says 'not yet' but `veil serve {name}` exists")
        return problems
    problems = []
    if package not in facts.packages:
        problems.append(f"{name}: package {package} does not exist")
    for proto in _protos(row):
        if package in facts.packages and proto not in facts.servicers.get(package, frozenset()):
            problems.append(f"{name}: {package}/app.py registers no {proto} servicer")
        if proto not in facts.protos:
            problems.append(f"{name}: no `service {proto}` in proto/veil/v1/*.proto")
    if k8s not in facts.k8s:
        problems.append(f"{name}: {k8s or '(none)'} is no Deployment listed in k8s/base/")
    if name not in facts.served:
        problems.append(f"{name}: `veil serve {name}` does not know it")
    return problems


def _part_problems(readme: str, facts: Facts) -> list[str]:
    parts = [t for t in tables(section(readme, "Status")) if plain(t[0][0]).lower() == "part"]
    if not parts:
        return ["README's Status section has no `part | where | status` table"]
    problems = []
    for row in _records(parts[0]):
        part, state, paths = plain(row["part"]), _state(row["status"]), code_spans(row["where"])
        if state not in PART_STATES:
            problems.append(f"part {part!r}: status {row['status']!r} is none of {PART_STATES}")
        elif state == "not yet" and paths:
            problems.append(f"part {part!r}: says 'not yet' but names {paths}")
        elif state != "not yet" and not paths:
            problems.append(f"part {part!r}: says {state!r} but names no path")
        problems += [f"part {part!r}: {p} does not exist" for p in paths if not facts.exists(p)]
    return problems


def status_problems(readme: str, facts: Facts) -> list[str]:
    """Every way README's status tables disagree with the code (see the module docstring)."""
    rows = status_rows(readme)
    problems = [p for row in rows for p in _service_row_problems(row, facts)]
    packages = {row["package"] for row in rows}
    names = {row["service"] for row in rows}
    protos = {proto for row in rows for proto in _protos(row)}
    problems += [
        f"{p} (it has an app.py) has no status row" for p in facts.servicers.keys() - packages
    ]
    problems += [f"`veil serve {n}` has no status row" for n in facts.served - names]
    problems += [
        f"proto service {p} has no status row"
        for p in facts.protos.keys() - SHARED_PROTO_SERVICES - protos
    ]
    return problems + _part_problems(readme, facts)


# ---------------------------------------------------------------------------------------------
# 2. RPCs


def _rpc_sections(readme: str, service: str) -> list[tuple[str, set[str]]]:
    """(heading, rpcs named in its RPC tables) for each section naming ``service``."""
    found = []
    for heading, body in sections(readme):
        if not re.search(rf"\b{re.escape(service)}\b", heading, flags=re.I):
            continue
        rpc_tables = [t for t in tables(body) if plain(t[0][0]) == "RPC"]
        if rpc_tables:
            named = {
                name
                for table in rpc_tables
                for row in table[1:]
                for name in code_spans(row[0])
                if re.fullmatch(r"[A-Z]\w*", name)
            }
            found.append((heading, named))
    return found


def rpc_problems(readme: str, facts: Facts) -> list[str]:
    """Every rpc the README's RPC tables miss or invent, per service of the status table."""
    problems = []
    for row in status_rows(readme):
        protos = [p for p in _protos(row) if p in facts.protos]
        if _state(row["status"]) != "available" or not protos:
            continue
        found = _rpc_sections(readme, row["service"])
        if len(found) != len(protos):
            headings = [h for h, _ in found]
            problems.append(
                f"{row['service']}: want {len(protos)} section(s) naming it with an RPC table "
                f"(one per proto service), got {headings}"
            )
            continue
        where = " + ".join(f"'{h}'" for h, _ in found)
        named = set().union(*(n for _, n in found))
        rpcs = set().union(*(facts.protos[p] for p in protos))
        for proto in protos:
            problems += [
                f"{proto}.{r} is missing from {where}" for r in facts.protos[proto] - named
            ]
        problems += [f"{where} names {r}, no rpc of {', '.join(protos)}" for r in named - rpcs]
    spans = set(code_spans(readme))
    for proto in SHARED_PROTO_SERVICES & facts.protos.keys():
        problems += [
            f"{proto}.{r} is named nowhere in the README" for r in facts.protos[proto] - spans
        ]
    return problems


# ---------------------------------------------------------------------------------------------
# 3. Figures

UNITS = r"ms|s|min|h|MB|MiB|GB|GiB|dB|%"
FIGURE = re.compile(rf"(?<![\w.])\d+(?:\.\d+)?\s?(?:(?:{UNITS})(?!\w)|×(?!\s?\d))")
TABLE_FIGURE = re.compile(r"\**[-+]?\d+\.\d+")
COMMAND = re.compile(r"\bpython -m bench\.\w+|^make [a-z]|\bveil [a-z]")
DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")


def _prose(body: str) -> str:
    """The section's text outside code: no fenced blocks, inline code, comments, link targets."""
    text = "\n".join(line for line, fenced in _lines_outside_fences(body) if not fenced)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"`[^`\n]*`", "", text)


def figures(body: str) -> list[str]:
    """The measured figures of one section (see the module docstring)."""
    prose = _prose(body)
    found = [m.group(0) for m in FIGURE.finditer(prose)]
    for table in tables(prose):
        found += [c for row in table[1:] for c in row if TABLE_FIGURE.match(c)]
    return found


def _commands(body: str) -> list[str]:
    fenced = [line for line, inside in _lines_outside_fences(body) if inside]
    return [c for c in code_spans(body) + fenced if COMMAND.search(c.strip())]


def _dates(body: str) -> list[str]:
    dates = []
    for text in DATE.findall(body):
        try:
            dates.append(dt.date.fromisoformat(text).isoformat())
        except ValueError:
            continue
    return dates


def figure_problems(text: str, name: str = "doc") -> list[str]:
    """Each section with a measured figure but no command or no date beside it."""
    problems = []
    for heading, body in sections(text):
        found = figures(body)
        if not found:
            continue
        missing = [
            what
            for what, ok in (
                ("a bench/make/veil command", _commands(body)),
                ("a date", _dates(body)),
            )
            if not ok
        ]
        if missing:
            where = f"{name} '{heading or '(top)'}'"
            problems.append(f"{where}: figures {found[:3]} without {' or '.join(missing)}")
    return problems


# ---------------------------------------------------------------------------------------------
# 4. The architecture diagram

DIAGRAM_WORDS = frozenset({"everything"})
"""Words of the diagram that name no package."""


def _package_exists(package: str, root: Path) -> bool:
    path = root / package.replace(".", "/")
    return (
        (path / "__init__.py").is_file()
        or path.with_suffix(".py").is_file()
        or (package == "triton_models" and path.is_dir())
    )


def diagram_packages(architecture: str) -> set[str]:
    """The packages the diagram names, each as the table writes it."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", architecture, flags=re.S | re.M)
    if not blocks:
        return set()
    words = re.sub(r"\([^()]*\)", " ", blocks[0])
    rows = {plain(r[0]) for r in tables(section(architecture, "Allowed arrows"))[0][1:]}
    named = set()
    for word in re.findall(r"[A-Za-z_][\w.]*/?", words):
        word = word.rstrip("/.")
        if word in DIAGRAM_WORDS:
            continue
        full = (
            word if word.startswith("services") or word == "triton_models" else f"services.{word}"
        )
        by_last = [r for r in rows if r.endswith(f".{word}")]
        named.add(full if full in rows or len(by_last) != 1 else by_last[0])
    return named


def diagram_problems(architecture: str, root: Path = ROOT) -> list[str]:
    """How the diagram's package names differ from the "Allowed arrows" table."""
    rows = {plain(r[0]) for r in tables(section(architecture, "Allowed arrows"))[0][1:]}
    named = diagram_packages(architecture)
    problems = [
        f"{p} has a row in 'Allowed arrows' but is not in the diagram" for p in rows - named
    ]
    problems += [
        f"the diagram names {p}, which has no row in 'Allowed arrows'" for p in named - rows
    ]
    problems += [
        f"the diagram names {p}, which does not exist"
        for p in named
        if not _package_exists(p, root)
    ]
    return sorted(problems)


# ---------------------------------------------------------------------------------------------
# 5. The layout blocks


def layout_problems(text: str, root: Path = ROOT, name: str = "doc") -> list[str]:
    """Packages under services/ that a ``## Layout`` block misses or invents."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section(text, "Layout"), flags=re.S | re.M)
    if not blocks:
        return [f"{name}: the Layout section has no block"]
    named = set(re.findall(r"\bservices/(\w+)/", blocks[0]))
    named |= set(re.findall(r"^ {2}(\w+)/", blocks[0], flags=re.M))
    on_disk = {p.parent.name for p in (root / "services").glob("*/__init__.py")}
    required = set(on_disk)
    if "services/<service>/" in blocks[0]:
        required -= {p.parent.name for p in (root / "services").glob("*/app.py")}
    problems = [f"{name}: Layout misses services/{p}/" for p in sorted(required - named)]
    return problems + [
        f"{name}: Layout names services/{p}/, which does not exist" for p in sorted(named - on_disk)
    ]


# ---------------------------------------------------------------------------------------------
# The real docs


def test_readme_status_table_matches_the_code() -> None:
    assert status_problems(README.read_text(), read_facts()) == []


def test_readme_names_every_rpc_of_every_service() -> None:
    assert rpc_problems(README.read_text(), read_facts()) == []


DOC_FILES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("doc", DOC_FILES, ids=[p.relative_to(ROOT).as_posix() for p in DOC_FILES])
def test_every_measured_figure_carries_its_command_and_date(doc: Path) -> None:
    assert figure_problems(doc.read_text(), doc.name) == []


@pytest.mark.parametrize("doc", [README, DOCS / "DESIGN.md"], ids=["README.md", "docs/DESIGN.md"])
def test_the_layout_names_every_package(doc: Path) -> None:
    assert layout_problems(doc.read_text(), name=doc.name) == []


def test_architecture_diagram_names_exactly_the_table_packages() -> None:
    assert diagram_problems(ARCHITECTURE.read_text()) == []


def test_the_checks_see_the_docs() -> None:
    """Guards against a parser that silently finds nothing."""
    readme = README.read_text()
    facts = read_facts()
    assert {r["service"] for r in status_rows(readme)} >= {"accountant", "unlearning"}
    assert facts.protos["Accountant"] >= {"Spend", "ChargeBatch"}
    assert "k8s/base/unlearning" in facts.k8s
    assert facts.servicers["services.unlearning"] == {"Unlearning", "ModelRegistry"}
    assert {"accountant", "sanitizer", "protection", "unlearning"} <= facts.served
    assert facts.served == set(SERVICES)
    assert sum(bool(figures(body)) for _, body in sections(readme)) >= 5
    assert {"services.cli", "services.kernels", "triton_models"} <= diagram_packages(
        ARCHITECTURE.read_text()
    )


# ---------------------------------------------------------------------------------------------
# Each check fails when the code moves without the docs (or the docs without the code)


def _edit_row(readme: str, service: str, old: str, new: str) -> str:
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"| {service} |") and old in line:
            lines[i] = line.replace(old, new)
            return "\n".join(lines)
    raise AssertionError(f"no status row for {service} with {old!r}")


def test_status_fails_when_a_row_says_not_yet_for_a_service_that_exists(tmp_path: Path) -> None:
    copy = tmp_path / "README.md"
    copy.write_text(_edit_row(README.read_text(), "unlearning", "| available", "| not yet"))
    problems = status_problems(copy.read_text(), read_facts())
    assert any("unlearning: says 'not yet'" in p for p in problems), problems


def test_status_fails_when_a_service_lands_without_a_row() -> None:
    facts = read_facts()
    grown = replace(
        facts,
        servicers={**facts.servicers, "services.billing": frozenset({"Billing"})},
        protos={**facts.protos, "Billing": frozenset({"Charge"})},
        served=facts.served | {"billing"},
    )
    problems = status_problems(README.read_text(), grown)
    assert "services.billing (it has an app.py) has no status row" in problems
    assert "`veil serve billing` has no status row" in problems
    assert "proto service Billing has no status row" in problems


def test_status_fails_when_a_row_is_dropped() -> None:
    lines = [ln for ln in README.read_text().splitlines() if not ln.startswith("| protection |")]
    problems = status_problems("\n".join(lines), read_facts())
    assert "services.protection (it has an app.py) has no status row" in problems


def test_status_fails_when_an_available_service_loses_a_piece() -> None:
    facts = read_facts()
    readme = README.read_text()
    no_k8s = replace(facts, k8s=facts.k8s - {"k8s/base/protection"})
    assert any("protection: k8s/base/protection" in p for p in status_problems(readme, no_k8s))
    no_servicer = replace(facts, servicers={**facts.servicers, "services.protection": frozenset()})
    assert any(
        "registers no Protection servicer" in p for p in status_problems(readme, no_servicer)
    )
    renamed = _edit_row(readme, "protection", "veil.v1.Protection", "veil.v1.Shield")
    assert any("no `service Shield`" in p for p in status_problems(renamed, facts))
    unknown = _edit_row(readme, "protection", "available", "done-ish")
    assert any("is none of" in p for p in status_problems(unknown, facts))


def test_status_fails_when_a_part_names_a_missing_path() -> None:
    readme = README.read_text()
    assert "`services/kernels/weights/`" in section(readme, "Status")
    moved = readme.replace("`services/kernels/weights/`", "`services/kernels/no-such-weights/`")
    problems = status_problems(moved, read_facts())
    assert any("no-such-weights/ does not exist" in p for p in problems), problems


def test_facts_are_read_from_a_tree(tmp_path: Path) -> None:
    (tmp_path / "services" / "billing").mkdir(parents=True)
    (tmp_path / "services" / "__init__.py").write_text("")
    (tmp_path / "services" / "billing" / "__init__.py").write_text("")
    (tmp_path / "services" / "billing" / "app.py").write_text(
        "billing_pb2_grpc.add_BillingServicer_to_server\n"
    )
    (tmp_path / "services" / "cli").mkdir()
    (tmp_path / "services" / "cli" / "registry.py").write_text(
        'SERVICES = {\n    "billing": ServiceEntry("services.billing.app"),\n}\n'
    )
    (tmp_path / "proto" / "veil" / "v1").mkdir(parents=True)
    (tmp_path / "proto" / "veil" / "v1" / "billing.proto").write_text(
        "// service Old { rpc Gone(A) returns (B); }\n"
        "service Billing {\n  // Charge a card.\n  rpc Charge(A) returns (B);\n"
        "  rpc Refund(stream A) returns (stream B);\n}\n"
    )
    (tmp_path / "k8s" / "base" / "billing").mkdir(parents=True)
    (tmp_path / "k8s" / "base" / "kustomization.yaml").write_text("resources:\n  - billing\n")
    (tmp_path / "k8s" / "base" / "billing" / "deployment.yaml").write_text("kind: Deployment\n")
    facts = read_facts(tmp_path)
    assert facts.protos == {"Billing": {"Charge", "Refund"}}
    assert facts.servicers == {"services.billing": {"Billing"}}
    assert facts.k8s == {"k8s/base/billing"} and facts.served == {"billing"}
    readme = (
        "# Billing\n\n## Status\n\n| service | package | proto service | k8s | status |\n"
        "|---|---|---|---|---|\n"
        "| billing | `services.billing` | `veil.v1.Billing` | `k8s/base/billing/` | available |\n\n"
        "| part | where | status |\n|---|---|---|\n"
        "| the service | `services/billing/` | available |\n"
        "| a GPU build | — | not yet |\n\n"
        "## The billing service\n\n| RPC | what it does |\n|---|---|\n"
        "| `Charge`, `Refund` | charge, refund |\n"
    )
    assert status_problems(readme, facts) == []
    assert rpc_problems(readme, facts) == []
    assert rpc_problems(readme.replace(", `Refund`", ""), facts) == [
        "Billing.Refund is missing from 'The billing service'"
    ]
    (tmp_path / "k8s" / "base" / "billing" / "deployment.yaml").write_text("kind: Service\n")
    assert status_problems(readme, read_facts(tmp_path)) == [
        "billing: k8s/base/billing is no Deployment listed in k8s/base/"
    ]


def test_rpcs_fail_when_the_proto_and_the_readme_part() -> None:
    facts = read_facts()
    readme = README.read_text()
    grown = replace(
        facts, protos={**facts.protos, "Accountant": facts.protos["Accountant"] | {"Refund"}}
    )
    assert any("Accountant.Refund is missing" in p for p in rpc_problems(readme, grown))
    lines = [ln for ln in readme.splitlines() if not ln.startswith("| `ChargeBatch` |")]
    assert any(
        "Accountant.ChargeBatch is missing" in p for p in rpc_problems("\n".join(lines), facts)
    )
    invented = readme.replace("| `Check` | dry run", "| `Check`, `Peek` | dry run")
    assert any("names Peek" in p for p in rpc_problems(invented, facts))
    no_whoami = readme.replace("`WhoAmI`", "WhoAmI")
    assert "Diagnostics.WhoAmI is named nowhere in the README" in rpc_problems(no_whoami, facts)


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("## Speed\n\nA spend takes 1.18 ms of CPU.\n", True),
        ("## Speed\n\nDynamic batching gains 1.40× at concurrency 16.\n", True),
        ("## Speed\n\n| model | req/s |\n|---|---:|\n| classifier | 225.0 |\n", True),
        ("## Speed\n\n| claimed ε | 1 |\n|---|---|\n| lower bound | **0.815** |\n", True),
        ("## Speed\n\nThe fast mode took 11 s.\n", True),
        ("## Speed\n\nMeasured with `python -m bench.serving`: 1.40× at 16.\n", True),
        ("## Speed\n\nMeasured 2026-12-06: 1.40× at 16.\n", True),
        ("## Speed\n\nMeasured 2026-12-06 with `python -m bench.serving`: 1.40× at 16.\n", False),
        ("## Speed\n\n1.40× (`make bench`, 2026-12-06)\n", False),
        ("## Speed\n\nOn 2026-02-30 with `python -m bench.serving`: 1.40×.\n", True),  # no date
        ("## Sizes\n\nModels at 32×32 and 64×64, a z of 64 dims, 10 000 steps.\n", False),
        ("## Config\n\n| variable | default |\n|---|---|\n| `X_BYTES` | `16 MiB` |\n", False),
        ("## Code\n\n```python\nprint(f'{1.5:.1f} ms')\n```\n", False),
        ("## Links\n\nSee [the bench](bench/figures/0.5s.png) and `--delay-us 2000`.\n", False),
    ],
)
def test_figures_need_a_command_and_a_date(text: str, flagged: bool) -> None:
    assert bool(figure_problems(text)) == flagged, figure_problems(text)


def test_figures_are_checked_per_section() -> None:
    text = (
        "## A\n\nMeasured 2026-12-06 with `python -m bench.a`: 3.1 ms.\n\n"
        "## B\n\nAnd 4.2 ms here, from nowhere.\n"
    )
    problems = figure_problems(text, "X.md")
    assert len(problems) == 1 and problems[0].startswith("X.md 'B'"), problems
    readme = README.read_text()
    undated = re.sub(r"\b\d{4}-\d{2}-\d{2}\b", "recently", readme)
    assert len(figure_problems(undated)) >= 5


ARCH = """# Packages

```
 cli ──▶ everything
 accountant (a service; it reaches another
     │       only through its client)
     ▼
 runtime ──▶ common (leaf) ◀── kernels ◀── triton_models/
                          ◀── kernels.mechanism
```

## Allowed arrows

| package | what lives there | may import |
|---|---|---|
| `services.common` | the leaf | — |
| `services.runtime` | transport | `services.common` |
| `services.kernels` | torch | `services.common` |
| `services.kernels.mechanism` | numpy | `services.common` |
| `services.cli` | the command | `services.runtime` |
| `services.accountant` | the ledger | `services.runtime` |
| `triton_models` | Triton | `services.kernels` |

## Modules a package never loads
"""


def test_the_diagram_check_passes_on_a_matching_diagram() -> None:
    assert diagram_problems(ARCH) == []
    assert diagram_problems(ARCH.replace("◀── kernels.mechanism", "◀── mechanism")) == []


def test_the_diagram_check_fails_when_a_layer_changes_without_the_diagram() -> None:
    last = "| `triton_models` | Triton | `services.kernels` |\n"
    grown = ARCH.replace(last, last + "| `services.triton` | tritonserver | `services.common` |\n")
    assert diagram_problems(grown) == [
        "services.triton has a row in 'Allowed arrows' but is not in the diagram"
    ]
    dropped = ARCH.replace(" ◀── triton_models/", "")
    assert diagram_problems(dropped) == [
        "triton_models has a row in 'Allowed arrows' but is not in the diagram"
    ]
    invented = ARCH.replace("runtime ──▶", "runtime ──▶ billing ──▶")
    assert diagram_problems(invented) == [
        "the diagram names services.billing, which does not exist",
        "the diagram names services.billing, which has no row in 'Allowed arrows'",
    ]


def test_the_layout_check_fails_when_a_package_moves() -> None:
    design = (DOCS / "DESIGN.md").read_text()
    assert "\n  triton/ " in design
    dropped = design.replace("\n  triton/ ", "\n  tritonx/ ")
    assert layout_problems(dropped, name="D") == [
        "D: Layout misses services/triton/",
        "D: Layout names services/tritonx/, which does not exist",
    ]
    readme = README.read_text()
    generic = readme.replace("services/<service>/", "services/each-service/")
    assert "README.md: Layout misses services/unlearning/" in layout_problems(
        generic, name="README.md"
    )
