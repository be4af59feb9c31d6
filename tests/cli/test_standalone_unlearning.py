"""The unlearning service run on its own, as the README tells an operator: ``veil models
prepare DIR``, then the two commands it prints — ``veil triton`` with explicit model
control and ``veil serve unlearning`` — each a real process; a job submitted over gRPC is
published and served by that Triton. The one liberty: the prepared store's ``task-resnet``
is swapped for a tiny one (16×16, 285 faces) so the job takes seconds, so ``veil_protect``
runs FMD without surrogates (theirs are 32×32) and ``veil_protector`` (trained against the
packaged classifier, which it checks) is left out of the repository."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import unlearning_pb2 as pb
from tests.support.server import free_port
from tests.support.triton import http_ready, processes_mentioning
from tests.unlearning.conftest import ENTRY, TOKEN_A, TOKENS, Client, submit_request, tiny_store

pytestmark = [pytest.mark.triton, pytest.mark.slow, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
VEIL = [sys.executable, "-m", "services.cli"]


def _prepared(tmp_path: Path) -> tuple[str, str]:
    """The two commands ``veil models prepare`` prints, with the tiny model swapped in."""
    done = subprocess.run(
        [*VEIL, "models", "prepare", str(tmp_path / "veil")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    triton = next(line for line in lines if line.startswith("veil triton "))
    serve = next(line for line in lines if line.endswith("veil serve unlearning"))
    store = tmp_path / "veil" / "store"
    tiny = tiny_store(tmp_path / "tiny")
    for name in ("weights.safetensors", "manifest.json"):
        (store / ENTRY / name).write_bytes((tiny / ENTRY / name).read_bytes())
    protect = tmp_path / "veil" / "triton_models" / "veil_protect" / "config.pbtxt"
    text = protect.read_text()
    surrogates = text.split('"surrogates" value: { string_value: "')[1].split('"')[0]
    protect.write_text(text.replace(surrogates, ""))
    # The fast-mode generator refuses to load beside another authorized model than its own.
    shutil.rmtree(tmp_path / "veil" / "triton_models" / "veil_protector")
    return triton, serve


def _start(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    words = shlex.split(command)
    assert words[0] == "veil"
    return subprocess.Popen(
        [*VEIL, *words[1:]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[str]:
    triton_command, serve_command = _prepared(tmp_path)
    grpc_port, http_port, metrics_port, port = (free_port() for _ in range(4))
    env = dict(os.environ, VEIL_DATA_DIR=str(tmp_path / "data"))
    ports = f" --grpc-port {grpc_port} --http-port {http_port} --metrics-port {metrics_port}"
    triton = _start(triton_command + ports, env)
    words = shlex.split(serve_command)
    settings = dict(word.split("=", 1) for word in words if "=" in word)
    env = dict(
        env,
        **settings,
        VEIL_INFERENCE_TRITON_URL=f"127.0.0.1:{grpc_port}",
        VEIL_UNLEARNING_PORT=str(port),
        VEIL_UNLEARNING_METRICS_PORT="0",
        VEIL_UNLEARNING_DATABASE_URL=f"sqlite:///{tmp_path / 'unlearning.sqlite'}",
        VEIL_UNLEARNING_TOKENS=json.dumps({t: g.model_dump() for t, g in TOKENS.items()}),
        VEIL_UNLEARNING_REFERENCE_STEPS="5",
        VEIL_UNLEARNING_WORK_DIR=str(tmp_path / "work"),
    )
    unlearning = None
    try:
        deadline = time.monotonic() + 240
        while not http_ready(http_port):
            assert triton.poll() is None, triton.stderr.read().decode()[-6000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "veil triton never became ready"
            time.sleep(0.5)
        unlearning = _start("veil serve unlearning", env)
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    request = health_pb2.HealthCheckRequest(service="readiness")
                    if health.Check(request, timeout=5).status == 1:
                        break
                except grpc.RpcError:
                    pass
                assert unlearning.poll() is None, unlearning.stderr.read().decode()[-6000:]  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "veil serve unlearning never became ready"
                time.sleep(0.3)
        yield target
    finally:
        if unlearning is not None:
            _stop(unlearning)
        _stop(triton)
    assert processes_mentioning(str(tmp_path / "veil")) == []


def test_a_job_is_published_by_the_triton_the_readme_starts(stack: str) -> None:
    started = time.monotonic()
    with grpc.insecure_channel(stack) as channel:
        client = Client(channel, TOKEN_A)
        job = client.SubmitJob(submit_request(options={"steps": "4"}))
        events = client.wait(job.status.job_id)
        assert events[-1].status.state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].status.message
        latest = client.GetModelVersion(pb.GetModelVersionRequest(ref=submit_request().base_model))
        assert latest.ref.version == 2 and latest.state == pb.MODEL_VERSION_STATE_READY
    print(f"job published through the standalone stack in {time.monotonic() - started:.1f} s")
