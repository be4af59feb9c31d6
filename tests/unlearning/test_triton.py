"""Done-when: a job submitted over gRPC, watched to completion, and its new version served
by a real tritonserver (explicit model control: the service writes ``veil_classifier/2/``
and ``veil_protect/2/`` and asks Triton to load them), answering differently from version 1;
a second tenant's version is its own number 2 and another serial, served beside it."""

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
from services.inference.backend import InferenceSettings, ProtectParams
from services.inference.local import LocalBackend
from services.inference.remote import TritonBackend
from services.serving.contract import CLASSIFIER, PROTECT
from services.triton.server import TritonServer
from tests.support.server import serve
from tests.support.triton import copy_repository, free_port_settings
from tests.unlearning.conftest import (
    MODEL,
    TOKEN_A,
    TOKEN_B,
    Client,
    settings,
    submit_request,
)

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture
def triton(tmp_path: Path, store: Path) -> Iterator[TritonServer]:
    repository = copy_repository(tmp_path / "repo", store, models=(CLASSIFIER, PROTECT))
    protect = repository / PROTECT / "config.pbtxt"  # FMD against the classifier alone
    text = protect.read_text()
    protect.write_text(
        text.replace(text.split('"surrogates" value: { string_value: "')[1].split('"')[0], "")
    )
    config = free_port_settings(
        repository,
        model_control_mode="explicit",
        load_models=[CLASSIFIER, PROTECT],
        startup_timeout_s=90,
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
        for token, steps in ((TOKEN_A, "4"), (TOKEN_B, "6")):  # two tenants' versions
            client = Client(channel, token)
            job = client.SubmitJob(submit_request(options={"steps": steps}))
            events = client.wait(job.status.job_id)
            state = events[-1].status
            assert state.state == common_pb2.JOB_STATE_SUCCEEDED, state.message
            done = client.GetJob(pb.GetJobRequest(job_id=job.status.job_id))
            assert done.result_model.version == 2  # each tenant's own number
    repository = Path(triton.settings.model_repository)
    for model in (MODEL, PROTECT):  # serials 2 (acme's) and 3 (globex's), both models
        assert all((repository / model / v / "model.py").is_file() for v in ("2", "3"))

    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)

    async def infer() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        remote = TritonBackend(InferenceSettings(backend="triton", triton_url=triton.grpc_url))
        local = LocalBackend(InferenceSettings(store=store, models=[MODEL]))
        params = ProtectParams(iterations=3)
        try:
            new, _ = await remote.classify(images, version=2)
            old, _ = await remote.classify(images, version=1)
            expected, _ = await local.classify(images, version=2)
            fmd = [
                np.asarray((await remote.protect(images, None, params, version=v)).protected)
                for v in (1, 2, 3)
            ]
            return new, old, expected, fmd
        finally:
            await remote.close()
            await local.close()

    new, old, expected, fmd = asyncio.run(infer())
    assert not np.allclose(new, old)
    np.testing.assert_allclose(new, expected, rtol=1e-4, atol=1e-5)
    # FMD runs against the version asked for: three versions, three perturbations.
    assert not np.allclose(fmd[0], fmd[1]) and not np.allclose(fmd[1], fmd[2])
