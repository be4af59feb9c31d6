"""One contract, every inference backend: same outputs as the kernels called directly,
the same typed errors, and a readiness that tells the truth (and never hangs).

The Triton backend runs against the session's real tritonserver (``veil_triton``, tests/conftest.py)
over a store of random-init tiny models; the local backend reads the same kind of store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.common.errors import InvalidArgument, ModelNotReady, Unavailable
from services.inference.backend import InferenceBackend, InferenceSettings
from services.inference.factory import create_backend
from services.kernels import fmd
from services.kernels.models import load_classifier, load_diffae
from services.kernels.store import ModelStore
from services.serving.contract import CLASSIFIER, ProtectParams
from tests.support.triton import (
    CLASSIFIER_ENTRY,
    DIFFAE_ENTRY,
    light_triton,
    tiny_store,
)

TRITON = pytest.param("triton", marks=[pytest.mark.triton, pytest.mark.slow])


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(params=["local", TRITON])
def settings(request: pytest.FixtureRequest, local_store: Path) -> InferenceSettings:
    if request.param == "local":
        return InferenceSettings(backend="local", store=local_store)
    server = request.getfixturevalue("veil_triton")
    return InferenceSettings(backend="triton", triton_url=server.grpc_url, timeout_s=30)


@pytest.fixture(scope="module")
def kernels(local_store: Path) -> dict[str, Any]:
    store = ModelStore(local_store)
    return {
        "diffae": load_diffae(DIFFAE_ENTRY, store),
        "clf": load_classifier(CLASSIFIER_ENTRY, store),
    }


def call(settings: InferenceSettings, fn: Callable[[InferenceBackend], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        backend = create_backend(settings)
        try:
            return await fn(backend)
        finally:
            await backend.close()

    return asyncio.run(main())


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, 16, 16)).astype(np.float32)


def test_ready(settings: InferenceSettings) -> None:
    assert call(settings, lambda b: b.ready()) is True


def test_encode_and_decode_match_the_kernels(settings, kernels) -> None:
    x = images(3)
    noise = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)

    async def both(backend: InferenceBackend) -> tuple[np.ndarray, np.ndarray]:
        z = await backend.encode(x)
        return z, await backend.decode(z, noise, 3)

    z, decoded = call(settings, both)
    diffae = kernels["diffae"]
    expected_z = diffae.encode(torch.from_numpy(x))
    np.testing.assert_allclose(z, expected_z.numpy(), atol=1e-5)
    expected = diffae.decode(expected_z, torch.from_numpy(noise), 3)
    np.testing.assert_allclose(decoded, expected.numpy(), atol=1e-5)


def test_classify_matches_the_kernel(settings, kernels) -> None:
    x = images(4, seed=2)
    logits, features = call(settings, lambda b: b.classify(x))
    clf = kernels["clf"]
    with torch.no_grad():
        expected_features = clf.features(torch.from_numpy(x), "penultimate")
        expected_logits = clf(torch.from_numpy(x))
    np.testing.assert_allclose(features, expected_features.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits, expected_logits.numpy(), atol=1e-5)


def test_protect_matches_the_kernel(settings, kernels) -> None:
    x = images(2, seed=3)
    params = ProtectParams(epsilon=8 / 255, step_size=2 / 255, iterations=3, ce_weight=1.0)
    protected, distortion = call(settings, lambda b: b.protect(x, None, params))
    f32 = lambda v: float(np.float32(v))  # noqa: E731 - the wire carries float32
    expected, stats = fmd.protect(
        kernels["clf"],
        torch.from_numpy(x),
        epsilon=f32(params.epsilon),
        step_size=f32(params.step_size),
        iterations=3,
        ce_weight=1.0,
    )
    np.testing.assert_allclose(protected, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(distortion, stats.feature_distortion.numpy(), rtol=1e-4)


@pytest.mark.parametrize(
    "bad",
    [
        lambda b: b.encode(images(1) * 3),
        lambda b: b.encode(images(1)[:, :, :8, :8]),
        lambda b: b.decode(np.zeros((1, 8), np.float32), images(1), 0),
        lambda b: b.protect(images(1), np.array([7])),
    ],
    ids=["out-of-range", "wrong-resolution", "zero-steps", "label-out-of-range"],
)
def test_bad_input_is_invalid_argument(settings, bad) -> None:
    with pytest.raises(InvalidArgument):
        call(settings, bad)


def test_missing_weights_are_model_not_ready(tmp_path: Path) -> None:
    settings = InferenceSettings(backend="local", store=tmp_path, models=[CLASSIFIER])
    assert call(settings, lambda b: b.ready()) is False
    with pytest.raises(ModelNotReady, match="cannot be loaded"):
        call(settings, lambda b: b.classify(images(1)))


@pytest.mark.triton
@pytest.mark.slow
def test_triton_stopped_means_not_ready_and_fast_failures(tmp_path: Path, local_store) -> None:
    server = light_triton(tmp_path, local_store).start()
    settings = InferenceSettings(
        backend="triton", triton_url=server.grpc_url, models=[CLASSIFIER], timeout_s=3.0
    )

    async def scenario(backend: InferenceBackend) -> None:
        assert await backend.ready()
        await backend.classify(images(1))
        server.stop(grace=5.0)
        assert not await backend.ready()
        started = time.monotonic()
        with pytest.raises((Unavailable, ModelNotReady)):
            await backend.classify(images(1))
        assert time.monotonic() - started < settings.timeout_s + 1.0

    try:
        call(settings, scenario)
    finally:
        server.stop()
