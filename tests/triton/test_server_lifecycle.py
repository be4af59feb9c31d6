"""The bundled tritonserver as Veil runs it: start, serve, infer, fail loudly, stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from services.triton.server import TritonServer, TritonStartError, free_port
from services.triton.settings import REPO_ROOT
from tests.support.triton import (
    BROKEN_ERROR,
    add_sub_repository,
    broken_repository,
    free_port_settings,
    http_ready,
    processes_mentioning,
)

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture
def client(triton: TritonServer):
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        yield c


def add_sub_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = []
    for name, value in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def test_server_and_models_ready(triton: TritonServer, client) -> None:
    assert triton.running() and triton.is_ready()
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("venv_check")
    assert triton.start() is triton and triton.pid is not None  # idempotent: same process


def test_add_sub_inference(client) -> None:
    a = np.array([[1, 2, 3, 4], [10, 20, 30, 40]], dtype=np.float32)
    b = np.array([[0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4]], dtype=np.float32)
    result = client.infer("add_sub", add_sub_inputs(a, b), client_timeout=30)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize(
    ("shape", "datatype"),
    [([1, 3], "FP32"), ([1, 4], "INT32")],
    ids=["wrong-shape", "wrong-dtype"],
)
def test_bad_input_is_an_error_not_a_hang(client, shape: list[int], datatype: str) -> None:
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, shape, datatype)
        dtype = np.float32 if datatype == "FP32" else np.int32
        tensor.set_data_from_numpy(np.ones(shape, dtype=dtype))
        inputs.append(tensor)
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub", inputs, client_timeout=10)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_model_error_comes_back_in_the_response(client) -> None:
    a = np.array([[1, np.nan, 3, 4]], dtype=np.float32)
    with pytest.raises(InferenceServerException, match="inputs must be finite"):
        client.infer("add_sub", add_sub_inputs(a, a), client_timeout=10)


def test_stub_runs_in_this_venv_with_the_repo_importable(client) -> None:
    x = grpcclient.InferInput("X", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    result = client.infer("venv_check", [x], client_timeout=30)
    np.testing.assert_array_equal(result.as_numpy("Y"), [2, 4, 6])
    services_file, prefix = (v.decode() for v in result.as_numpy("ORIGIN"))
    assert Path(services_file).parent == REPO_ROOT / "services"
    assert Path(prefix) == Path(sys.prefix)


def test_metrics_endpoint(triton: TritonServer, client) -> None:
    client.infer("add_sub", add_sub_inputs(*[np.ones((1, 4), np.float32)] * 2))
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert 'nv_inference_request_success{model="add_sub"' in text


def test_stop_terminates_within_grace_and_removes_the_workspace(tmp_path: Path) -> None:
    repository = add_sub_repository(tmp_path / "models")
    server = TritonServer(free_port_settings(repository))
    server.start()
    pid, workspace = server.pid, server.workspace
    assert pid is not None and workspace is not None and (workspace / "backends").is_dir()
    started = time.monotonic()
    assert server.stop(grace=10.0) == 0
    assert time.monotonic() - started < 10.0
    assert not workspace.exists()
    assert processes_mentioning(str(repository)) == []
    assert not server.running() and not server.is_ready()
    assert server.stop() is None  # idempotent


def test_broken_model_fails_start_and_leaves_nothing(tmp_path: Path) -> None:
    repository = broken_repository(tmp_path / "models")
    server = TritonServer(free_port_settings(repository))
    with pytest.raises(TritonStartError, match=BROKEN_ERROR):
        server.start()
    assert not server.running() and server.workspace is None
    assert processes_mentioning(str(repository)) == []


def test_explicit_mode_loads_only_the_listed_models(tmp_path: Path) -> None:
    repository = broken_repository(tmp_path / "models")
    settings = free_port_settings(
        repository, model_control_mode="explicit", load_models=["add_sub"]
    )
    with TritonServer(settings) as server, grpcclient.InferenceServerClient(server.grpc_url) as c:
        assert c.is_model_ready("add_sub")
        assert not c.is_model_ready("broken")
    assert processes_mentioning(str(repository)) == []


def test_cli_exits_nonzero_when_the_server_cannot_start(tmp_path: Path) -> None:
    repository = broken_repository(tmp_path / "models")
    command = [sys.executable, "-m", "services.cli", "triton", "--model-repository"]
    command += [str(repository), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 1
    assert BROKEN_ERROR in done.stderr
    assert processes_mentioning(str(repository)) == []


def test_cli_starts_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    repository = add_sub_repository(tmp_path / "models")
    http_port = free_port()
    command = [sys.executable, "-m", "services.cli", "triton", "--model-repository"]
    command += [str(repository), "--http-port", str(http_port)]
    command += ["--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        deadline = time.monotonic() + 90
        while not http_ready(http_port) and time.monotonic() < deadline:
            assert proc.poll() is None, "veil triton exited before it was ready"
            time.sleep(0.2)
        assert http_ready(http_port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert processes_mentioning(str(repository)) == []
