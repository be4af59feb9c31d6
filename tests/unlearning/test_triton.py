"""Done-when: a job submitted over gRPC, watched to completion, and its new version served
by a real tritonserver (explicit model control: the service writes ``veil_classifier/2/``
and asks Triton to load it), answering differently from version 1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")

from services._proto.veil.v1 import common_pb2
from services._proto.veil.v1 import unlearning_pb2 as pb
from services.inference.backend import InferenceSettings
from services.inference.local import LocalBackend
from services.inference.remote import TritonBackend
from services.serving.contract import CLASSIFIER
from services.triton.server import TritonServer
from tests.support.server import serve
from tests.support.triton import copy_repository, free_port_settings
from tests.unlearning.conftest import MODEL, TOKEN_A, Client, settings, submit_request

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture
def triton(tmp_path: Path, store: Path) -> Iterator[TritonServer]:
    repository = copy_repository(tmp_path / "repo", store, models=(CLASSIFIER,))
    config = free_port_settings(
        repository, model_control_mode="explicit", load_models=[CLASSIFIER], startup_timeout_s=90
    )
    with TritonServer(config) as server:
        yield server


def test_a_new_version_is_served_by_triton(
    tmp_path: Path, store: Path, triton: TritonServer
) -> None:
    from services.unlearning.app import build_app

    inference = InferenceSettings(backend="triton", triton_url=triton.grpc_url, models=[MODEL])
    config = settings(
        tmp_path, store, inference=inference, model_repository=triton.settings.model_repository
    )
    with serve(build_app(config)) as running, grpc.insecure_channel(running.target) as channel:
        client = Client(channel, TOKEN_A)
        job = client.SubmitJob(submit_request())
        events = client.wait(job.status.job_id)
        assert events[-1].status.state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].status.message
        done = client.GetJob(pb.GetJobRequest(job_id=job.status.job_id))
    assert done.result_model.version == 2
    assert (Path(triton.settings.model_repository) / MODEL / "2" / "model.py").is_file()

    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)

    async def infer() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        remote = TritonBackend(InferenceSettings(backend="triton", triton_url=triton.grpc_url))
        local = LocalBackend(InferenceSettings(store=store, models=[MODEL]))
        try:
            new, _ = await remote.classify(images, version=2)
            old, _ = await remote.classify(images, version=1)
            expected, _ = await local.classify(images, version=2)
            return new, old, expected
        finally:
            await remote.close()
            await local.close()

    new, old, expected = asyncio.run(infer())
    assert not np.allclose(new, old)
    np.testing.assert_allclose(new, expected, rtol=1e-4, atol=1e-5)
