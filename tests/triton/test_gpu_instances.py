"""The GPU path: which device a Triton instance runs on, and (on a machine with a CUDA GPU,
marker ``gpu``) the repository rendered for ``KIND_GPU`` serving every model on the GPU
with the same answers as the in-process backend on the CPU."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from services.inference.backend import InferenceSettings
from services.inference.factory import create_backend
from services.kernels.store import ModelStore
from services.serving.contract import MODELS
from services.serving.loading import build_kernel, instance_device
from services.triton.repository import render
from services.triton.server import TritonServer
from services.triton.settings import REPO_ROOT
from tests.support.triton import CLASSIFIER_ENTRY, free_port_settings, tiny_store


def test_instance_kind_picks_the_device() -> None:
    assert instance_device({"model_instance_kind": "CPU"}) == "cpu"
    assert instance_device({}) == "cpu"
    gpu = {"model_instance_kind": "GPU", "model_instance_device_id": "1"}
    assert instance_device(gpu) == "cuda:1"


def test_kernel_model_lives_on_its_device(tmp_path: Path) -> None:
    store = ModelStore(tiny_store(tmp_path))
    kernel = build_kernel("veil_classifier", store, CLASSIFIER_ENTRY, device="cpu")
    assert kernel.device == torch.device("cpu")
    model = kernel.model  # type: ignore[attr-defined]
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


@pytest.mark.gpu
@pytest.mark.triton
@pytest.mark.slow
def test_gpu_repository_serves_every_model_like_the_cpu(tmp_path: Path) -> None:
    store = tiny_store(tmp_path / "store")
    repository = render(
        REPO_ROOT / "triton_models",
        tmp_path / "gpu",
        kind="gpu",
        parameters={"store": str(store)},
    )
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    x_t = np.random.default_rng(1).standard_normal(images.shape).astype(np.float32)
    models = list(MODELS)

    async def compare(url: str) -> None:
        gpu = create_backend(InferenceSettings(backend="triton", triton_url=url, models=models))
        cpu = create_backend(InferenceSettings(backend="local", store=store, models=models))
        try:
            assert await gpu.ready()
            z = await gpu.encode(images)
            np.testing.assert_allclose(z, await cpu.encode(images), atol=1e-3)
            decoded = await gpu.decode(z, x_t, 3)
            np.testing.assert_allclose(decoded, await cpu.decode(z, x_t, 3), atol=1e-2)
            logits, _ = await gpu.classify(images)
            np.testing.assert_allclose(logits, (await cpu.classify(images))[0], atol=1e-3)
            out = await gpu.protect(images, time_budget_s=30.0)
            assert np.abs(out.protected - images).max() <= 2 * 16 / 255 + 1e-5
            assert 0 < out.steps_run <= 100
            fast = await gpu.protect_fast(images)
            want = await cpu.protect_fast(images)
            np.testing.assert_allclose(fast.protected, want.protected, atol=1e-4)
        finally:
            await gpu.close()
            await cpu.close()

    server = TritonServer(free_port_settings(repository, gpu_metrics=True))
    with server:
        asyncio.run(compare(server.grpc_url))
