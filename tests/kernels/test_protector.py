"""The fast-protection generator (services/kernels/protector.py): the ℓ∞ bound holds
whatever the weights, outputs are deterministic and independent of the batch, a short
training run raises FMD's objective, and ``veil train protector`` writes a store entry
that names its authorized model and resumes from its checkpoints."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from services.cli.train import add_train_parser
from services.kernels.checks import KernelInputError
from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.models import load_protector
from services.kernels.protector import (
    Protector,
    ProtectorConfig,
    build_protector,
    feature_distortion,
    protect_fast,
)
from services.kernels.store import DEFAULT_ROOT, ModelStore
from services.kernels.training.data import load_table
from services.kernels.training.loop import TrainConfig
from services.kernels.training.protector import protector_loss, train_protector

CONFIG = ProtectorConfig(resolution=16, widths=(8, 16), blocks=1, epsilon=8 / 255)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    torch.manual_seed(0)
    return build_classifier(ClassifierConfig(num_classes=3, resolution=16, width=8)).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def saturated() -> Protector:
    """A generator whose output sits at ±2ε everywhere (tanh saturated)."""
    protector = build_protector(replace(CONFIG, gain=1e6)).eval()
    with torch.no_grad():
        protector.out.weight.zero_()
        assert protector.out.bias is not None
        protector.out.bias.copy_(torch.tensor([1.0, -1.0, 2.0]))
    return protector


@pytest.mark.parametrize("make", [lambda: build_protector(CONFIG).eval(), saturated])
def test_the_bound_and_the_range_hold_whatever_the_weights(make) -> None:
    protector = make()
    x = images(8)
    x[0] = 1.0  # at the edges of the range the clamp takes over
    x[1] = -1.0
    with torch.no_grad():
        out = protector(x)
    assert float((out - x).abs().max()) <= protector.bound + 1e-6  # float rounding of x + δ
    assert out.min() >= -1.0 and out.max() <= 1.0
    with torch.no_grad():
        assert float(protector.perturbation(x).abs().max()) <= 2 * protector.config.epsilon


def test_a_saturated_generator_reaches_the_bound() -> None:
    x = images(4) * 0.5  # away from the range's edges
    with torch.no_grad():
        moved = (saturated()(x) - x).abs()
    torch.testing.assert_close(moved, torch.full_like(x, 2 * CONFIG.epsilon))


def test_shapes_determinism_and_batch_independence(classifier) -> None:
    torch.manual_seed(0)
    protector = build_protector(CONFIG).eval()
    x = images(5)
    a, da = protect_fast(protector, classifier, x)
    b, db = protect_fast(protector, classifier, x)
    assert a.shape == x.shape and da.shape == (5,)
    assert torch.equal(a, b) and torch.equal(da, db)
    one, d_one = protect_fast(protector, classifier, x[2:3])
    torch.testing.assert_close(one, a[2:3], atol=1e-6, rtol=0)
    torch.testing.assert_close(d_one, da[2:3], atol=1e-5, rtol=1e-4)
    assert torch.allclose(da, feature_distortion(classifier, x, a, CONFIG.feature_layer))


def test_wrong_inputs_and_configs_are_typed(classifier) -> None:
    protector = build_protector(CONFIG)
    with pytest.raises(KernelInputError):
        protector(images(1)[:, :, :8, :8])
    with pytest.raises(KernelInputError):
        protector(images(1) * 3)
    for bad in ({"arch": "gan"}, {"widths": ()}, {"epsilon": 2.0}, {"resolution": 15}, {"gain": 0}):
        with pytest.raises(KernelInputError):
            ProtectorConfig(**bad)
    assert ProtectorConfig.from_dict(CONFIG.to_dict()) == CONFIG


def test_a_short_training_run_raises_the_objective(classifier) -> None:
    table = load_table("synthfaces://?n=64&seed=3", 16, cache_dir=None)
    x = table.batch(torch.arange(32))
    config = TrainConfig(steps=30, batch_size=16, lr=3e-3, ema_decay=0.0, threads=1, progress=False)
    torch.manual_seed(config.seed)
    before = float(protector_loss(build_protector(CONFIG), classifier, x).detach())
    result = train_protector(table, classifier, CONFIG, config, held=table)
    after = float(protector_loss(result.model, classifier, x).detach())
    assert after < before
    assert result.metrics["feature distortion"] > 0
    assert 0.0 <= result.metrics["authorized prediction kept"] <= 1.0


def _train(tmp_path: Path, *extra: str) -> int:
    parser = argparse.ArgumentParser(prog="veil")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["train", "protector", "--data", "synthfaces://?n=40&seed=0", "--batch-size", "2",
            "--threads", "1", "--checkpoint-every", "2", "--out", str(tmp_path / "store"),
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--cache-dir", str(tmp_path / "cache"),
            "--widths", "4,8", "--blocks", "1", "--no-progress", *extra]  # fmt: skip
    args = parser.parse_args(argv)
    return int(args.handler(args))


@pytest.mark.slow
def test_veil_train_protector_records_its_recipe_and_resumes(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_ROOT / "task-resnet", tmp_path / "store" / "task-resnet")
    store = ModelStore(tmp_path / "store")
    assert _train(tmp_path, "--steps", "2") == 0
    manifest = store.manifest("protector")
    assert manifest.kind == "protector"
    assert manifest.command.startswith("veil train protector ") and "--seed 0" in manifest.command
    assert manifest.config["authorized"] == "task-resnet"
    assert manifest.config["authorized_sha256"] == store.manifest("task-resnet").sha256
    assert load_protector("protector", store).config.widths == (4, 8)
    assert _train(tmp_path, "--steps", "4", "--resume") == 0
    assert store.manifest("protector").metrics["resumed from"] == 2
    assert _train(tmp_path, "--authorized", "nope", "--steps", "1") == 2
