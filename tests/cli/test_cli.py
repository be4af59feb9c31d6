"""``veil`` as an operator runs it: real processes, real signals, real ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest

from services import __version__
from services._proto.veil.v1 import diagnostics_pb2, diagnostics_pb2_grpc
from services.runtime.client import wait_until_ready
from tests.support.server import bearer, free_port


@pytest.fixture
def accountant_env(tmp_path):
    port, metrics = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        VEIL_ACCOUNTANT_PORT=str(port),
        VEIL_ACCOUNTANT_METRICS_PORT=str(metrics),
        VEIL_ACCOUNTANT_SHUTDOWN_GRACE_S="3",
        VEIL_ACCOUNTANT_TOKENS=json.dumps({"cli-token": {"tenant": "acme"}}),
        VEIL_ACCOUNTANT_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.sqlite",
    )
    return env, port, metrics


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"veil {__version__}"


@pytest.mark.slow
def test_serve_accountant_answers_and_stops_on_sigterm(accountant_env):
    env, port, metrics = accountant_env
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "accountant"], env=env)
    try:
        wait_until_ready(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            who = diagnostics_pb2_grpc.DiagnosticsStub(channel).WhoAmI(
                diagnostics_pb2.WhoAmIRequest(), metadata=bearer("cli-token")
            )
        assert (who.tenant_id, who.service) == ("acme", "accountant")
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read()
        assert b'veil_build_info{service="accountant"' in text
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 3 + 2
    finally:
        proc.kill()


@pytest.mark.slow
def test_up_runs_the_stack_and_stops_it_on_sigint(accountant_env):
    env, port, _ = accountant_env
    # The accountant alone: with the services that call the kernels, `up` first waits for
    # tritonserver (tests/test_packaging.py runs that whole stack, installed).
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--services", "accountant"], env=env
    )
    try:
        wait_until_ready(f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        with pytest.raises(TimeoutError):  # the child is gone too
            wait_until_ready(f"127.0.0.1:{port}", timeout=0.5)
    finally:
        proc.kill()


def test_up_refuses_unknown_service():
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "up", "--services", "accountant,nope"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "nope" in out.stderr


def test_up_points_services_at_the_triton_it_started():
    from services.cli.up import service_environment

    env = service_environment({"PATH": "/bin"}, "triton", "127.0.0.1:8001")
    assert env["VEIL_INFERENCE_BACKEND"] == "triton"
    assert env["VEIL_INFERENCE_TRITON_URL"] == "127.0.0.1:8001" and env["PATH"] == "/bin"
    assert service_environment({}, "local", None) == {"VEIL_INFERENCE_BACKEND": "local"}
    # no Triton started (no service needs it): the caller's own settings stay in force
    assert service_environment({"VEIL_INFERENCE_BACKEND": "triton"}, "triton", None) == {
        "VEIL_INFERENCE_BACKEND": "triton"
    }


def test_up_starts_triton_only_for_services_that_call_the_kernels(monkeypatch):
    from services.cli import registry

    assert not registry.uses_inference(["accountant"])  # so `veil up` starts no Triton for it
    monkeypatch.setitem(
        registry.SERVICES, "kernels-user", registry.ServiceEntry("x", 1, 2, inference=True)
    )
    assert registry.uses_inference(["accountant", "kernels-user"])


@pytest.mark.parametrize("service", ["accountant", "unlearning"])
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path, service):
    """A setting that can never work stops `veil serve` at once: exit 2, one line per bad
    setting naming its variable, no traceback, nothing served."""
    prefix = f"VEIL_{service.upper()}_"
    env = dict(os.environ)
    env[prefix + "DATABASE_URL"] = "sqlite:///relative.sqlite"
    env[prefix + "PORT"] = "not-a-port"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", service],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr, done.stderr
    assert any(prefix + "DATABASE_URL" in line and "absolute" in line for line in lines)
    assert any(prefix + "PORT" in line for line in lines)
    assert not (tmp_path / "relative.sqlite").exists()
