"""The real ``triton_models/`` repository with the committed default weights: the models
whose defaults exist load in the bundled tritonserver and answer exactly as the
in-process backend does. (``veil_encoder``/``veil_decoder`` join once a default ``diffae``
is committed; until then they are not loaded: explicit model control.)"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.common.inference import (
    CLASSIFIER,
    PROTECT,
    InferenceSettings,
    ProtectParams,
    create_backend,
)
from services.common.triton import TritonServer
from services.common.triton_settings import TritonSettings

pytestmark = [pytest.mark.triton, pytest.mark.slow]
MODELS = [CLASSIFIER, PROTECT]


@pytest.fixture(scope="module")
def server():
    settings = TritonSettings(
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        startup_timeout_s=240,
        model_control_mode="explicit",
        load_models=MODELS,
    )
    with TritonServer(settings) as running:  # triton_models/ on the packaged store
        yield running


def test_default_classifier_and_protect_serve_like_the_local_backend(server):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(2, 3, 32, 32)).astype(np.float32)
    params = ProtectParams(iterations=2)

    async def compare() -> None:
        local = create_backend(InferenceSettings(backend="local", models=MODELS))
        triton = create_backend(
            InferenceSettings(backend="triton", triton_url=server.grpc_url, models=MODELS)
        )
        try:
            assert await triton.ready()
            logits, features = await triton.classify(images)
            want_logits, want_features = await local.classify(images)
            np.testing.assert_allclose(logits, want_logits, atol=1e-4)
            np.testing.assert_allclose(features, want_features, atol=1e-4)
            got = await triton.protect(images, params=params)
            want = await local.protect(images, params=params)
            np.testing.assert_allclose(got[0], want[0], atol=1e-4)
        finally:
            await local.close()
            await triton.close()

    asyncio.run(compare())
