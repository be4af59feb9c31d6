"""A rotated token file takes effect without a restart (``ReloadingAuthenticator``): unit
cases on a fake clock, then a real server whose mounted-Secret-like file is swapped."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.common.errors import Unauthenticated
from services.runtime.auth import ReloadingAuthenticator
from services.runtime.settings import TokenGrant
from tests.support.server import bearer, make_app


def _write(path: Path, tokens: dict[str, dict]) -> None:
    """Replace ``path`` the way a Secret mount does: a new file renamed over the old."""
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps(tokens))
    os.replace(fresh, path)


def _meta(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_rotated_file_is_read_at_the_next_check(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"old": {"tenant": "acme"}})
    clock = Clock()
    auth = ReloadingAuthenticator({"env": TokenGrant(tenant="ops")}, path, 1.0, clock)
    assert auth.authenticate(_meta("old")).tenant == "acme"
    assert auth.authenticate(_meta("env")).tenant == "ops"

    _write(path, {"new": {"tenant": "acme", "scopes": ["accountant:*"]}})
    clock.now = 0.5  # within the check interval: the file is not looked at
    assert auth.authenticate(_meta("old")).tenant == "acme"
    clock.now = 1.5
    assert auth.authenticate(_meta("new")).scopes == frozenset({"accountant:*"})
    with pytest.raises(Unauthenticated):
        auth.authenticate(_meta("old"))  # revoked with the rotation
    assert auth.authenticate(_meta("env")).tenant == "ops"  # the environment's stay


def test_a_broken_file_keeps_the_tokens_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"old": {"tenant": "acme"}})
    clock = Clock()
    auth = ReloadingAuthenticator({}, path, 1.0, clock)
    path.write_text('{"half": ')  # a writer caught mid-way, or a bad edit
    with caplog.at_level(logging.ERROR, "services.runtime.auth"):
        for step in range(1, 5):
            clock.now = 1.5 * step
            assert auth.authenticate(_meta("old")).tenant == "acme"
    errors = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(errors) == 1 and "half" not in errors[0]  # once, and no token text logged
    _write(path, {"fixed": {"tenant": "acme"}})
    clock.now = 10.0
    assert auth.authenticate(_meta("fixed")).tenant == "acme"


def test_a_bad_file_at_start_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("not json")
    with pytest.raises(ValueError):
        ReloadingAuthenticator({}, path)


def test_a_served_token_rotates_without_a_restart(tmp_path: Path, serve_app, channel_to) -> None:
    path = tmp_path / "tokens.json"
    _write(path, {"first-token": {"tenant": "acme"}})
    server = serve_app(make_app(tokens={}, tokens_file=path))
    stub = diagnostics_pb2_grpc.DiagnosticsStub(channel_to(server))
    who = diagnostics_pb2.WhoAmIRequest()
    assert stub.WhoAmI(who, metadata=bearer("first-token")).tenant_id == "acme"
    _write(path, {"second-token": {"tenant": "acme"}})
    deadline = time.monotonic() + 10
    while True:
        try:
            stub.WhoAmI(who, metadata=bearer("second-token"))
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            assert time.monotonic() < deadline, "the new token never worked"
            time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as refused:
        stub.WhoAmI(who, metadata=bearer("first-token"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
