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
from services.inference.backend import InferenceBackend, InferenceSettings, ProtectOutput
from services.inference.factory import create_backend
from services.kernels import fmd
from services.kernels.defaults import DEFAULT_SURROGATES
from services.kernels.models import load_classifier, load_diffae, load_protector
from services.kernels.pipeline import ROBUSTNESS as KERNEL_ROBUSTNESS
from services.kernels.protector import protect_fast
from services.kernels.store import ModelStore
from services.serving.batch import execute_batched
from services.serving.contract import (
    CLASSIFIER,
    MODELS,
    PROTECT,
    PROTECTOR,
    ROBUSTNESS,
    ProtectParams,
    protect_inputs,
)
from services.serving.loading import build_kernel
from tests.support.triton import (
    CLASSIFIER_ENTRY,
    DIFFAE_ENTRY,
    PROTECTOR_ENTRY,
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
        "surrogates": [load_classifier(name, store) for name in DEFAULT_SURROGATES],
        "protector": load_protector(PROTECTOR_ENTRY, store),
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


@pytest.mark.parametrize("robustness", ["none", "jpeg"])
def test_protect_matches_the_kernel(settings, kernels, robustness: str) -> None:
    """Robustness included: each backend sends it and the served loop runs it."""
    x = images(2, seed=3)
    params = ProtectParams(
        epsilon=8 / 255, step_size=2 / 255, iterations=3, ce_weight=1.0, robustness=robustness
    )
    out = call(settings, lambda b: b.protect(x, None, params))
    f32 = lambda v: float(np.float32(v))  # noqa: E731 - the wire carries float32
    expected, stats = fmd.protect(
        kernels["clf"],
        torch.from_numpy(x),
        epsilon=f32(params.epsilon),
        step_size=f32(params.step_size),
        iterations=3,
        ce_weight=1.0,
        surrogates=kernels["surrogates"],
        robustness=robustness,
    )
    np.testing.assert_allclose(out.protected, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(out.feature_distortion, stats.feature_distortion.numpy(), rtol=1e-4)
    assert out.steps_run == 3


def test_protect_stops_early_within_its_time_budget(settings) -> None:
    """A budget far shorter than the loop: fewer steps than asked, every image the same
    number, and the ε-ball still holds. Split calls (over ``max_batch_size``) share it."""
    x = images(MODELS[PROTECT].max_batch_size + 2, seed=4)
    params = ProtectParams(epsilon=8 / 255, step_size=2 / 255, iterations=5_000)
    started = time.monotonic()
    out = call(settings, lambda b: b.protect(x, None, params, time_budget_s=1.0))
    took = time.monotonic() - started
    assert isinstance(out, ProtectOutput)
    assert 0 <= out.steps_run < params.iterations
    assert out.protected.shape == x.shape and out.feature_distortion.shape == (len(x),)
    assert np.abs(out.protected - x).max() <= 2 * np.float32(8 / 255) + 1e-6
    assert took < 30.0  # 5 000 steps would take minutes


def test_the_kernel_reads_the_optional_time_budget(local_store: Path) -> None:
    """Left out, ≤ 0 or infinite: no limit; NaN: a bad request (alone); two budgets: two
    batches (one loop each), the unlimited ones in one."""
    kernel = build_kernel(PROTECT, ModelStore(local_store), CLASSIFIER_ENTRY)
    base = protect_inputs(images(1), None, ProtectParams(iterations=2))
    without = {k: v for k, v in base.items() if k != "TIME_BUDGET_S"}

    def budget(value: float) -> dict[str, np.ndarray]:
        return {**base, "TIME_BUDGET_S": np.full((1, 1), value, np.float32)}

    requests = [without, budget(0.0), budget(-1.0), budget(np.inf), budget(np.nan), budget(60)]
    keys = [kernel.parse(r)[0] for r in requests[:4]] + [kernel.parse(requests[5])[0]]
    assert len(set(keys)) == 2
    results = execute_batched(kernel, requests)
    assert isinstance(results[4], InvalidArgument) and "TIME_BUDGET_S" in results[4].message
    for result in results[:4] + results[5:]:
        assert isinstance(result, dict) and result["STEPS_RUN"].tolist() == [[2]]


def test_the_kernel_reads_the_optional_robustness(local_store: Path) -> None:
    """Sent as its index in ``ROBUSTNESS``; left out: ``none`` (an older client gets what
    it got before), the same loop as index 0; an unknown index fails that request alone;
    ``none`` and ``jpeg`` batch apart and give different protections."""
    kernel = build_kernel(PROTECT, ModelStore(local_store), CLASSIFIER_ENTRY)

    def inputs(robustness: str) -> dict[str, np.ndarray]:
        params = ProtectParams(iterations=2, robustness=robustness)
        return protect_inputs(images(1, seed=6), None, params)

    assert inputs("jpeg")["ROBUSTNESS"].tolist() == [[1]]
    without = {k: v for k, v in inputs("none").items() if k != "ROBUSTNESS"}
    unknown = {**inputs("none"), "ROBUSTNESS": np.full((1, 1), len(ROBUSTNESS), np.int32)}
    requests = [without, inputs("none"), inputs("jpeg"), unknown]
    keys = [kernel.parse(r)[0] for r in requests[:3]]
    assert keys[0] == keys[1] != keys[2]
    results = execute_batched(kernel, requests)
    assert isinstance(results[3], InvalidArgument) and "ROBUSTNESS" in results[3].message
    first, none, jpeg = (r["PROTECTED"] for r in results[:3])  # type: ignore[index]
    np.testing.assert_allclose(first, none, atol=1e-6)
    assert not np.array_equal(none, jpeg)
    with pytest.raises(InvalidArgument, match="robustness"):
        protect_inputs(images(1), None, ProtectParams(robustness="webp"))


def test_the_contract_names_the_kernels_robustness() -> None:
    """The contract repeats ``pipeline.ROBUSTNESS`` (it loads no torch): same values, same
    order, since the wire carries the index."""
    assert ROBUSTNESS == KERNEL_ROBUSTNESS
    assert ProtectParams().robustness == ROBUSTNESS[0] == "none"


def test_protect_fast_matches_the_kernel(settings, kernels) -> None:
    x = images(3, seed=5)
    out = call(settings, lambda b: b.protect_fast(x))
    expected, distortion = protect_fast(kernels["protector"], kernels["clf"], torch.from_numpy(x))
    assert out.steps_run == 0
    np.testing.assert_allclose(out.protected, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(out.feature_distortion, distortion.numpy(), rtol=1e-4, atol=1e-7)
    bound = 2 * kernels["protector"].config.epsilon
    assert np.abs(out.protected - x).max() <= bound + 1e-6


@pytest.mark.parametrize(
    "bad",
    [
        lambda b: b.encode(images(1) * 3),
        lambda b: b.encode(images(1)[:, :, :8, :8]),
        lambda b: b.decode(np.zeros((1, 8), np.float32), images(1), 0),
        lambda b: b.protect(images(1), np.array([7])),
        lambda b: b.protect(images(1), time_budget_s=float("nan")),
        lambda b: b.protect_fast(images(1)[:, :, :8, :8]),
    ],
    ids=[
        "out-of-range",
        "wrong-resolution",
        "zero-steps",
        "label-out-of-range",
        "nan-budget",
        "fast-wrong-resolution",
    ],
)
def test_bad_input_is_invalid_argument(settings, bad) -> None:
    with pytest.raises(InvalidArgument):
        call(settings, bad)


def test_missing_weights_are_model_not_ready(tmp_path: Path) -> None:
    settings = InferenceSettings(backend="local", store=tmp_path, models=[CLASSIFIER])
    assert call(settings, lambda b: b.ready()) is False
    with pytest.raises(ModelNotReady, match="cannot be loaded"):
        call(settings, lambda b: b.classify(images(1)))


def test_a_protector_trained_against_other_weights_is_not_ready(tmp_path: Path) -> None:
    store = ModelStore(tiny_store(tmp_path))
    manifest = store.manifest(PROTECTOR_ENTRY)
    _, tensors = store.load(PROTECTOR_ENTRY)
    config = {**manifest.config, "authorized_sha256": "0" * 64}
    store.save(PROTECTOR_ENTRY, "protector", tensors, config)
    settings = InferenceSettings(backend="local", store=tmp_path, models=[PROTECTOR])
    assert call(settings, lambda b: b.ready()) is False
    with pytest.raises(ModelNotReady, match="trained against other weights"):
        call(settings, lambda b: b.protect_fast(images(1)))


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


def test_every_default_surrogate_list_is_the_kernels_one() -> None:
    """The local backend's default and ``veil_protect``'s config parameter repeat
    ``DEFAULT_SURROGATES`` (inference may not import the kernels): they must not drift."""
    from services.triton.settings import REPO_ROOT

    assert InferenceSettings().surrogates == list(DEFAULT_SURROGATES)
    config = (REPO_ROOT / "triton_models" / "veil_protect" / "config.pbtxt").read_text()
    names = ",".join(DEFAULT_SURROGATES)
    assert f'key: "surrogates" value: {{ string_value: "{names}" }}' in config
