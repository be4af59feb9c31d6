"""Logging: ``configure_logging`` owns the root logger (level and format hold even when a
library called ``logging.basicConfig`` first), JSON lines parse and carry the request
fields, and every RPC writes one access-log line that never holds a payload."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.runtime.logging import JsonFormatter
from tests.support.server import bearer, make_app

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter at the repository root (logging is process-wide)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_json_lines_from_a_real_server_after_an_earlier_basic_config():
    done = run_python(
        """
        import logging
        logging.basicConfig(level=logging.ERROR, format="EARLIER %(message)s")  # a library
        from services.runtime.logging import configure_logging
        configure_logging("info", "json")

        import grpc
        from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
        from tests.support.server import bearer, make_app, serve

        logging.getLogger("veil.test").debug("not at INFO")
        with serve(make_app()) as running, grpc.insecure_channel(running.target) as channel:
            stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
            metadata = (*bearer(), ("x-request-id", "req-42"))
            stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(tenant_id="acme"), metadata=metadata)
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("veil.test").exception("it broke")
        """
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    (access,) = [line for line in lines if line["logger"] == "veil.access"]
    assert access["level"] == "INFO"
    assert access["method"] == "/veil.v1.Diagnostics/WhoAmI"
    assert (access["status"], access["tenant"], access["request_id"]) == ("OK", "acme", "req-42")
    assert isinstance(access["duration_ms"], float)
    assert any("serving on" in line["message"] for line in lines)  # the runtime's own INFO
    (broken,) = [line for line in lines if line["message"] == "it broke"]
    assert "ZeroDivisionError" in broken["exception"]
    assert "not at INFO" not in done.stderr and "EARLIER" not in done.stderr


def test_text_format_honours_the_level_set_after_an_earlier_basic_config():
    done = run_python(
        """
        import logging
        logging.basicConfig(level=logging.WARNING)
        from services.runtime.logging import configure_logging
        configure_logging("DEBUG", "text")
        logging.getLogger("veil.test").debug("debug is shown")
        """
    )
    (line,) = done.stderr.splitlines()
    assert line.endswith(" DEBUG veil.test: debug is shown")


@pytest.fixture
def access(caplog):
    """``access(n)``: the first ``n`` access-log records, waiting for them (the server may
    write its line just after the client has its answer)."""
    caplog.set_level(logging.INFO, logger="veil.access")

    def records(n: int) -> list[logging.LogRecord]:
        deadline = time.monotonic() + 5
        while len(found := [r for r in caplog.records if r.name == "veil.access"]) < n:
            assert time.monotonic() < deadline, f"{len(found)} access lines, expected {n}"
            time.sleep(0.01)
        return found[:n]

    return records


def test_one_access_line_per_rpc_with_its_fields(serve_app, channel_to, access):
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(serve_app(make_app())))
    stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(tenant_id="acme"), metadata=bearer())
    with pytest.raises(grpc.RpcError):
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=bearer("wrong"))
    with pytest.raises(grpc.RpcError):
        stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(tenant_id="globex"), metadata=bearer())
    ok, unauthenticated, denied = (json.loads(JsonFormatter().format(r)) for r in access(3))
    assert (ok["status"], ok["tenant"]) == ("OK", "acme")
    assert unauthenticated["status"] == "UNAUTHENTICATED" and "tenant" not in unauthenticated
    assert (denied["status"], denied["tenant"]) == ("PERMISSION_DENIED", "acme")
    assert all(len(line["request_id"]) == 32 for line in (ok, unauthenticated, denied))
    assert len({line["request_id"] for line in (ok, unauthenticated, denied)}) == 3
    assert "globex" not in access(3)[2].getMessage()  # the request is never logged


def test_streaming_rpcs_are_logged_once_too(serve_app, channel_to, access, caplog):
    """Reflection (like health) logs at DEBUG: probes would flood the INFO log."""
    caplog.set_level(logging.DEBUG, logger="veil.access")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel_to(serve_app(make_app())))
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(stub.ServerReflectionInfo(iter([ask, ask]), metadata=bearer()))
    assert len(responses) == 2
    (record,) = access(1)
    assert (record.method, record.status) == (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "OK",
    )
    assert record.levelno == logging.DEBUG


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123_x.y:z", True), ("two words", False), ("x" * 129, False)],
)
def test_request_id_is_taken_only_when_sane(serve_app, channel_to, access, given, kept):
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(serve_app(make_app())))
    stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=(*bearer(), ("x-request-id", given)))
    (record,) = access(1)
    assert (record.request_id == given) is kept
