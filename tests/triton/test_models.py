"""The real ``triton_models/`` on the bundled tritonserver, over a tiny model store.

The repository is a tmp copy of ``triton_models/`` whose ``store`` parameters point at a
store of random-init tiny models (fixed seeds): nothing here depends on trained weights.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from services.kernels.store import ModelStore
from services.serving.contract import CLASSIFIER, DECODER, ENCODER, MODELS, PROTECT, PROTECTOR
from services.triton.server import TritonServer, TritonStartError
from tests.support.triton import DIFFAE_ENTRY, light_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow]


@pytest.fixture
def client(veil_triton: TritonServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(veil_triton.grpc_url) as c:
        yield c


def infer_input(name: str, value: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, 3, 16, 16)).astype(np.float32)


def test_every_model_is_ready(client) -> None:
    for name in MODELS:
        assert client.is_model_ready(name), name
    config = client.get_model_config(CLASSIFIER).config
    assert config.version_policy.HasField("all")


def test_encoder_matches_the_kernel(client, veil_store: Path) -> None:
    x = images(3)
    result = client.infer(ENCODER, [infer_input("IMAGE", x, "FP32")], client_timeout=30)
    from services.kernels.models import load_diffae

    expected = load_diffae(DIFFAE_ENTRY, ModelStore(veil_store)).encode(torch.from_numpy(x))
    np.testing.assert_allclose(result.as_numpy("Z"), expected.numpy(), atol=1e-5)


def test_bad_requests_get_invalid_arg_and_the_rest_are_served(veil_triton) -> None:
    """Concurrent requests in one dynamic batch: the bad ones fail alone, typed."""
    import tritonclient.grpc.aio as aioclient

    async def send(client, x: np.ndarray):
        tensor = aioclient.InferInput("IMAGE", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            return await client.infer(CLASSIFIER, [tensor], client_timeout=30)
        except InferenceServerException as exc:
            return exc

    async def main():
        async with aioclient.InferenceServerClient(veil_triton.grpc_url) as client:
            bad_range, wrong_size = images(1) * 3, images(1)[:, :, :8, :8]
            return await asyncio.gather(
                *(send(client, x) for x in (images(2), bad_range, images(1, 1), wrong_size))
            )

    good, bad_range, good2, wrong_size = asyncio.run(main())
    assert good.as_numpy("LOGITS").shape == (2, 3)
    assert good.as_numpy("FEATURES").shape == (2, 32)
    assert good2.as_numpy("LOGITS").shape == (1, 3)
    for error in (bad_range, wrong_size):
        assert isinstance(error, InferenceServerException)
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error
        assert "images" in error.message()


def test_decoder_rejects_zero_steps(client) -> None:
    inputs = [
        infer_input("Z", np.zeros((1, 8), np.float32), "FP32"),
        infer_input("X_T", np.zeros((1, 3, 16, 16), np.float32), "FP32"),
        infer_input("STEPS", np.zeros((1, 1), np.int32), "INT32"),
    ]
    with pytest.raises(InferenceServerException) as info:
        client.infer(DECODER, inputs, client_timeout=30)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "STEPS" in info.value.message()


def test_protect_keeps_the_bound(client) -> None:
    x = images(2)
    one = np.ones((2, 1))
    inputs = [
        infer_input("IMAGE", x, "FP32"),
        infer_input("LABEL", -one.astype(np.int64), "INT64"),
        infer_input("EPSILON", (one * 8 / 255).astype(np.float32), "FP32"),
        infer_input("STEP_SIZE", (one * 2 / 255).astype(np.float32), "FP32"),
        infer_input("ITERATIONS", (one * 3).astype(np.int32), "INT32"),
        infer_input("CE_WEIGHT", one.astype(np.float32), "FP32"),
    ]
    result = client.infer(PROTECT, inputs, client_timeout=60)  # no TIME_BUDGET_S: optional
    protected = result.as_numpy("PROTECTED")
    assert np.abs(protected - x).max() <= 2 * np.float32(8 / 255) + 1e-6
    assert protected.min() >= -1 and protected.max() <= 1
    assert (result.as_numpy("FEATURE_DISTORTION") > 0).all()
    assert result.as_numpy("STEPS_RUN").tolist() == [[3], [3]]


def test_protect_time_budget_stops_the_loop(client) -> None:
    x = images(1)
    inputs = [
        infer_input("IMAGE", x, "FP32"),
        infer_input("LABEL", np.full((1, 1), -1, np.int64), "INT64"),
        infer_input("EPSILON", np.full((1, 1), 8 / 255, np.float32), "FP32"),
        infer_input("STEP_SIZE", np.full((1, 1), 2 / 255, np.float32), "FP32"),
        infer_input("ITERATIONS", np.full((1, 1), 10_000, np.int32), "INT32"),
        infer_input("CE_WEIGHT", np.ones((1, 1), np.float32), "FP32"),
        infer_input("TIME_BUDGET_S", np.full((1, 1), 0.5, np.float32), "FP32"),
    ]
    result = client.infer(PROTECT, inputs, client_timeout=60)
    assert 0 <= int(result.as_numpy("STEPS_RUN")[0, 0]) < 10_000


def test_protector_keeps_the_bound(client) -> None:
    x = images(3)
    result = client.infer(PROTECTOR, [infer_input("IMAGE", x, "FP32")], client_timeout=30)
    protected = result.as_numpy("PROTECTED")
    assert protected.shape == x.shape
    assert np.abs(protected - x).max() <= 2 * np.float32(16 / 255) + 1e-6
    assert result.as_numpy("FEATURE_DISTORTION").shape == (3, 1)


def test_missing_weights_fail_initialize_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(TritonStartError, match="cannot be loaded from the model store"):
        light_triton(tmp_path, tmp_path / "empty").start()
