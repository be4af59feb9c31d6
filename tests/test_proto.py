"""The veil.v1 contracts: generated stubs are current, services are complete, files documented."""

from __future__ import annotations

import importlib
import importlib.resources
import shutil
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from services._proto import generate

ROOT = generate.REPO_ROOT
PROTO_V1 = ROOT / "proto" / "veil" / "v1"
EVOLUTION_HEADER = "// Evolution rules for every file in package veil.v1 (read before editing):"

SERVICES = {
    "diagnostics": ("Diagnostics", {"WhoAmI", "InspectImage"}),
    "accountant": (
        "Accountant",
        {
            "PutBudget",
            "GetBudget",
            "ListBudgets",
            "Check",
            "Spend",
            "Reserve",
            "Commit",
            "Release",
            "ListEvents",
            "ExportAudit",
            "ChargeBatch",
        },
    ),
    "sanitizer": (
        "Sanitizer",
        {
            "ListAttributes",
            "CreatePreview",
            "Release",
            "CancelPreview",
            "Sanitize",
            "SanitizeBatch",
        },
    ),
    "unlearning": (
        "Unlearning",
        {
            "SubmitJob",
            "GetJob",
            "ListJobs",
            "CancelJob",
            "WatchJob",
            "ListModelVersions",
            "GetModelVersion",
            "RollbackModel",
        },
    ),
    "protection": ("Protection", {"Protect", "ProtectBatch", "Evaluate"}),
}
STREAMING = {  # (client streaming, server streaming) for every streaming RPC
    "veil.v1.Accountant.ExportAudit": (False, True),
    "veil.v1.Unlearning.WatchJob": (False, True),
    "veil.v1.Protection.ProtectBatch": (True, True),
    "veil.v1.Sanitizer.SanitizeBatch": (True, True),
}


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """A copy of proto/ and the committed stubs, safe to tamper with."""
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(
        ROOT / "services" / "_proto",
        tmp_path / "services" / "_proto",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return tmp_path


def test_committed_stubs_match_protos() -> None:
    assert generate.drift(ROOT) == []
    assert generate.main(["--check"]) == 0


def test_generation_is_deterministic() -> None:
    assert generate.generate(ROOT) == generate.generate(ROOT)


def test_check_detects_edited_stub(tree_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stub = tree_copy / "services/_proto/veil/v1/accountant_pb2.pyi"
    stub.write_text(stub.read_text() + "# tampered\n")
    assert generate.main(["--check", "--root", str(tree_copy)]) == 1
    err = capsys.readouterr().err
    assert "differs: services/_proto/veil/v1/accountant_pb2.pyi" in err
    assert "+# tampered" not in err and "-# tampered" in err


def test_check_detects_missing_and_extra_files(tree_copy: Path) -> None:
    (tree_copy / "services/_proto/veil/v1/common_pb2.py").unlink()
    (tree_copy / "services/_proto/veil/v1/stale_pb2.py").write_text("")
    problems = generate.drift(tree_copy)
    assert "missing: services/_proto/veil/v1/common_pb2.py" in problems
    assert "extra: services/_proto/veil/v1/stale_pb2.py" in problems


def test_check_detects_edited_proto_and_regenerate_fixes_it(tree_copy: Path) -> None:
    proto = tree_copy / "proto/veil/v1/common.proto"
    proto.write_text(proto.read_text() + "\n// A new message.\nmessage Added {}\n")
    assert generate.main(["--check", "--root", str(tree_copy)]) == 1
    assert generate.main(["--root", str(tree_copy)]) == 0
    assert generate.main(["--check", "--root", str(tree_copy)]) == 0


def test_imports_are_rewritten_into_services() -> None:
    for path in (ROOT / "services/_proto/veil/v1").glob("*.py*"):
        text = path.read_text()
        assert "from veil." not in text and "import veil." not in text, path


@pytest.mark.parametrize("module", sorted(SERVICES))
def test_service_and_rpcs_present(module: str) -> None:
    service_name, rpcs = SERVICES[module]
    pb2 = importlib.import_module(f"services._proto.veil.v1.{module}_pb2")
    grpc_mod = importlib.import_module(f"services._proto.veil.v1.{module}_pb2_grpc")
    service = pb2.DESCRIPTOR.services_by_name[service_name]
    assert service.full_name == f"veil.v1.{service_name}"
    assert {m.name for m in service.methods} == rpcs
    assert hasattr(grpc_mod, f"{service_name}Stub")
    assert hasattr(grpc_mod, f"add_{service_name}Servicer_to_server")
    for method in service.methods:
        expected = STREAMING.get(method.full_name, (False, False))
        assert (method.client_streaming, method.server_streaming) == expected, method.full_name


@pytest.mark.parametrize("proto", sorted(p.name for p in PROTO_V1.glob("*.proto")))
def test_proto_opens_with_evolution_rules(proto: str) -> None:
    text = (PROTO_V1 / proto).read_text()
    assert text.startswith(EVOLUTION_HEADER)
    head = text.split("syntax", 1)[0]
    for rule in ("renumber", "reserved", "optional", "meaning", "UNSPECIFIED = 0", "veil.v2"):
        assert rule in head, (proto, rule)
    assert "package veil.v1;" in text


def _descriptors(tmp: Path) -> descriptor_pb2.FileDescriptorSet:
    include = importlib.resources.files("grpc_tools") / "_proto"
    out = tmp / "set.pb"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{include}",
        f"--descriptor_set_out={out}",
        "--include_source_info",
        *generate.proto_files(ROOT),
    ]
    assert protoc.main(args) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _elements(fd: descriptor_pb2.FileDescriptorProto):
    """(path, name) of every message, field, enum, enum value, service and RPC."""

    def message(msg, path):
        yield path, msg.name
        for i, f in enumerate(msg.field):
            yield (*path, 2, i), f"{msg.name}.{f.name}"
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                yield from message(nested, (*path, 3, i))
        for i, e in enumerate(msg.enum_type):
            yield from enum(e, (*path, 4, i))

    def enum(e, path):
        yield path, e.name
        for i, v in enumerate(e.value):
            yield (*path, 2, i), v.name

    for i, msg in enumerate(fd.message_type):
        yield from message(msg, (4, i))
    for i, e in enumerate(fd.enum_type):
        yield from enum(e, (5, i))
    for i, s in enumerate(fd.service):
        yield (6, i), s.name
        for j, m in enumerate(s.method):
            yield (6, i, 2, j), f"{s.name}.{m.name}"


def test_every_element_has_a_doc_comment(tmp_path: Path) -> None:
    undocumented = []
    for fd in _descriptors(tmp_path).file:
        if not fd.name.startswith("veil/"):
            continue
        documented = {
            tuple(loc.path) for loc in fd.source_code_info.location if loc.leading_comments.strip()
        }
        undocumented += [f"{fd.name}: {n}" for p, n in _elements(fd) if p not in documented]
    assert undocumented == []
