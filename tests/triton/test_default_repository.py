"""The real ``triton_models/`` repository with the committed default weights: every model
loads in the bundled tritonserver (``veil triton``'s defaults: all models at start) and
answers exactly as the in-process backend does."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.inference.backend import InferenceSettings
from services.inference.factory import create_backend
from services.serving.contract import MODELS, ProtectParams
from services.triton.server import TritonServer
from services.triton.settings import TritonSettings

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture(scope="module")
def server():
    settings = TritonSettings(
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        startup_timeout_s=240,
    )
    with TritonServer(settings) as running:  # triton_models/ on the packaged store
        yield running


def test_every_default_model_serves_like_the_local_backend(server):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    params = ProtectParams(iterations=2)
    models = list(MODELS)

    async def compare() -> None:
        local = create_backend(InferenceSettings(backend="local", models=models))
        triton = create_backend(
            InferenceSettings(backend="triton", triton_url=server.grpc_url, models=models)
        )
        try:
            assert await triton.ready() and await local.ready()
            z = await triton.encode(images)
            np.testing.assert_allclose(z, await local.encode(images), atol=1e-4)
            x_t = rng.standard_normal(images.shape).astype(np.float32)
            decoded = await triton.decode(z, x_t, 5)
            np.testing.assert_allclose(decoded, await local.decode(z, x_t, 5), atol=1e-3)
            logits, features = await triton.classify(images)
            want_logits, want_features = await local.classify(images)
            np.testing.assert_allclose(logits, want_logits, atol=1e-4)
            np.testing.assert_allclose(features, want_features, atol=1e-4)
            got = await triton.protect(images, params=params)
            want = await local.protect(images, params=params)
            np.testing.assert_allclose(got.protected, want.protected, atol=1e-4)
            assert got.steps_run == want.steps_run == 2
            fast = await triton.protect_fast(images)
            want_fast = await local.protect_fast(images)
            np.testing.assert_allclose(fast.protected, want_fast.protected, atol=1e-4)
        finally:
            await local.close()
            await triton.close()

    asyncio.run(compare())
