"""Request ids on real servers: every response carries ``x-request-id`` in its initial
metadata (the caller's when sane, else a new one; errors and streams too), every JSON log
line written while serving an RPC has it, and a delegated call carries it to the next
service, whose access line also names the tenant the delegate acts for."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from tests.runtime.delegation import DELEGATE, back_app, front_app
from tests.support.server import bearer, make_app

ROOT = Path(__file__).resolve().parents[2]
GENERATED = re.compile(r"[0-9a-f]{32}")


def echoed(metadata: object) -> str:
    """The ``x-request-id`` of a response's initial metadata (exactly one)."""
    (value,) = [v for k, v in metadata or () if k == "x-request-id"]  # type: ignore[attr-defined]
    return str(value)


@pytest.fixture
def diag(serve_app, channel_to):
    return diagnostics_pb2_grpc.DiagnosticsStub(channel_to(serve_app(make_app())))


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123_x.y:z", True), ("two words", False), ("x" * 129, False), (None, False)],
)
def test_the_response_echoes_a_sane_request_id_and_replaces_a_bad_one(diag, caplog, given, kept):
    caplog.set_level(logging.INFO, logger="veil.access")
    metadata = (*bearer(), *((("x-request-id", given),) if given is not None else ()))
    _, call = diag.WhoAmI.with_call(diagnostics_pb2.WhoAmIRequest(), metadata=metadata)
    answer = echoed(call.initial_metadata())
    assert answer == given if kept else GENERATED.fullmatch(answer)
    deadline = time.monotonic() + 5  # the access line may follow the answer by a moment
    while not (lines := [r for r in caplog.records if r.name == "veil.access"]):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert lines[0].request_id == answer  # the id the caller got is the one logged


def test_errors_carry_the_request_id_in_their_initial_metadata(diag):
    for metadata in (bearer("wrong"), ()):  # UNAUTHENTICATED, before any servicer code
        with pytest.raises(grpc.RpcError) as err:
            diag.WhoAmI(
                diagnostics_pb2.WhoAmIRequest(), metadata=(*metadata, ("x-request-id", "e1"))
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert echoed(err.value.initial_metadata()) == "e1"
    with pytest.raises(grpc.RpcError) as err:  # raised by the servicer
        diag.WhoAmI(diagnostics_pb2.WhoAmIRequest(tenant_id="globex"), metadata=bearer())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert GENERATED.fullmatch(echoed(err.value.initial_metadata()))


def test_streams_and_public_methods_carry_it_too(serve_app, channel_to):
    channel = channel_to(serve_app(make_app()))
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    stream = reflection.ServerReflectionInfo(iter([ask, ask]), metadata=(("x-request-id", "s1"),))
    assert echoed(stream.initial_metadata()) == "s1"
    assert len(list(stream)) == 2
    health = health_pb2_grpc.HealthStub(channel)
    _, call = health.Check.with_call(health_pb2.HealthCheckRequest(service=""))
    assert GENERATED.fullmatch(echoed(call.initial_metadata()))


def test_every_json_line_while_serving_has_the_request_id_and_a_delegated_call_carries_it():
    """Front and back servers in a fresh interpreter logging JSON (logging is process-wide):
    the front's own lines — on the event loop, on a worker thread, its access line — and
    the back server's access line for the delegated call all carry the caller's id; the
    back's line names the tenant the delegate acts for and the delegate."""
    code = """
        import grpc
        from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
        from services.runtime.logging import configure_logging
        from tests.runtime.delegation import back_app, front_app
        from tests.support.server import bearer, serve

        configure_logging("info", "json")
        with serve(back_app()) as back, serve(front_app(back.target)) as front:
            with grpc.insecure_channel(front.target) as channel:
                stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
                metadata = (*bearer(), ("x-request-id", "req-7"))
                answer = stub.WhoAmI(diagnostics_pb2.WhoAmIRequest(), metadata=metadata)
                assert answer.tenant_id == "acme", answer
        """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    served = [line for line in lines if line["logger"] == "veil.test.delegation"]
    assert [line["message"] for line in served] == ["on the event loop", "on a worker thread"]
    assert all(line["request_id"] == "req-7" for line in served)
    access = [line for line in lines if line["logger"] == "veil.access"]
    front, back = sorted(access, key=lambda line: "via" in line)
    assert (front["request_id"], front["tenant"]) == ("req-7", "acme") and "via" not in front
    assert (back["request_id"], back["tenant"], back["via"]) == ("req-7", "acme", DELEGATE)
    assert f"tenant=acme via={DELEGATE} request_id=req-7" in back["message"]
    outside = [line for line in lines if "serving on" in line["message"]]
    assert len(outside) == 2 and not any("request_id" in line for line in outside)


def test_a_generated_request_id_crosses_a_delegated_call_too(serve_app, channel_to, caplog):
    caplog.set_level(logging.INFO, logger="veil.access")
    back = serve_app(back_app())
    front = serve_app(front_app(back.target))
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(front))
    _, call = stub.WhoAmI.with_call(diagnostics_pb2.WhoAmIRequest(), metadata=bearer())
    front_id = echoed(call.initial_metadata())
    deadline = time.monotonic() + 5
    while len(lines := [r for r in caplog.records if r.name == "veil.access"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert {r.request_id for r in lines} == {front_id}
    assert {(r.tenant, r.via) for r in lines} == {("acme", None), ("acme", DELEGATE)}
