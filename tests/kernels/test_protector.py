"""The fast-protection generator (services/kernels/protector.py): the ℓ∞ bound holds
whatever the weights, outputs are deterministic and independent of the batch, a short
training run raises FMD's objective (also with surrogates and a pipeline drawn per step),
old manifests still load, the packaged generator names the packaged authorized model, and
``veil train protector`` writes a store entry that names its authorized model and its
surrogates, resumes from its checkpoints and warm-starts from another generator."""

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
    for bad in (
        {"robustness": "blur"},
        {"surrogate_weight": -1.0},
        {"diversity": -1},
        {"surrogate_cap": 0.0},
    ):
        with pytest.raises(KernelInputError):
            ProtectorConfig(**bad)


def test_the_transfer_fields_round_trip_and_an_old_manifest_still_loads() -> None:
    robust = replace(
        CONFIG, surrogates=("s1", "s2"), surrogate_weight=2.0, surrogate_cap=4.0, robustness="jpeg"
    )
    assert ProtectorConfig.from_dict(robust.to_dict()) == robust
    assert robust.to_dict()["surrogates"] == ["s1", "s2"]
    old = CONFIG.to_dict()
    for key in ("surrogates", "surrogate_weight", "surrogate_cap", "diversity", "robustness"):
        del old[key]
    loaded = ProtectorConfig.from_dict(old)
    assert loaded == CONFIG  # missing fields: the authorized model alone, no pipeline
    assert (loaded.surrogates, loaded.robustness) == ((), "none")


def test_the_packaged_protector_names_the_packaged_authorized_model() -> None:
    store = ModelStore(DEFAULT_ROOT)
    config = ProtectorConfig.from_dict(store.manifest("protector").config)
    assert config.authorized_sha256 == store.manifest(config.authorized).sha256
    for name in config.surrogates:
        assert store.manifest(name).kind == "classifier"
    assert load_protector("protector", store).config == config


@pytest.fixture(scope="module")
def surrogates() -> tuple[Classifier, ...]:
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        config = ClassifierConfig(num_classes=3, resolution=16, width=8)
        out.append(build_classifier(config).eval().requires_grad_(False))
    return tuple(out)


def test_the_surrogate_and_eot_objective_has_gradients_and_keeps_the_bound(
    classifier, surrogates
) -> None:
    config = replace(
        CONFIG, surrogates=("a", "b"), surrogate_weight=1.0, diversity=2, robustness="jpeg"
    )
    torch.manual_seed(0)
    protector = build_protector(config)
    x = images(6)
    gen = torch.Generator().manual_seed(3)
    loss = protector_loss(protector, classifier, x, surrogates, gen)
    loss.backward()
    grads = [p.grad for p in protector.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    alone = protector_loss(protector, classifier, x, (), torch.Generator().manual_seed(3))
    assert float(loss.detach()) != float(alone.detach())  # the surrogates' term counts
    capped = build_protector(replace(config, surrogate_cap=1e-3))
    capped.load_state_dict(protector.state_dict())
    low = protector_loss(capped, classifier, x, surrogates, torch.Generator().manual_seed(3))
    assert float(low.detach()) >= float(loss.detach())  # a CE counts up to the cap only
    with torch.no_grad():
        out = protector(x)
    assert float((out - x).abs().max()) <= protector.bound + 1e-6


def test_a_short_robust_run_with_surrogates_trains_and_reports(classifier, surrogates) -> None:
    table = load_table("synthfaces://?n=32&seed=3", 16, cache_dir=None)
    config = replace(CONFIG, surrogates=("a", "b"), diversity=2, robustness="full")
    train_config = TrainConfig(
        steps=4, batch_size=4, lr=3e-3, ema_decay=0.0, threads=1, progress=False
    )
    result = train_protector(
        table, classifier, config, train_config, held=table, surrogates=surrogates
    )
    x = table.batch(torch.arange(8))
    with torch.no_grad():
        assert float((result.model(x) - x).abs().max()) <= result.model.bound + 1e-6
    for key in ("authorized kept after JPEG 75", "surrogate protected accuracy"):
        assert 0.0 <= result.metrics[key] <= 1.0
    with pytest.raises(ValueError):
        train_protector(table, classifier, config, train_config, surrogates=surrogates[:1])


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
    for name in ("task-resnet", "surrogate-resnet"):
        shutil.copytree(DEFAULT_ROOT / name, tmp_path / "store" / name)
    store = ModelStore(tmp_path / "store")
    robust = ("--surrogates", "surrogate-resnet", "--diversity", "2", "--robustness", "jpeg")
    assert _train(tmp_path, "--steps", "2", *robust) == 0
    manifest = store.manifest("protector")
    assert manifest.config["surrogates"] == ["surrogate-resnet"]
    assert manifest.config["robustness"] == "jpeg"
    assert "--surrogates surrogate-resnet" in manifest.command
    assert manifest.kind == "protector"
    assert manifest.command.startswith("veil train protector ") and "--seed 0" in manifest.command
    assert manifest.config["authorized"] == "task-resnet"
    assert manifest.config["authorized_sha256"] == store.manifest("task-resnet").sha256
    assert load_protector("protector", store).config.widths == (4, 8)
    assert _train(tmp_path, "--steps", "4", "--resume", *robust) == 0
    assert store.manifest("protector").metrics["resumed from"] == 2
    assert _train(tmp_path, "--authorized", "nope", "--steps", "1") == 2
    assert _train(tmp_path, "--surrogates", "nope", "--steps", "1") == 2
    assert _train(tmp_path, "--steps", "2") == 0  # none named: the authorized model alone
    assert store.manifest("protector").config["surrogates"] == []
    assert _train(tmp_path, "--steps", "1", "--init-from", "protector") == 0  # a warm start
    assert store.manifest("protector").command.count("veil train protector ") == 2
    assert _train(tmp_path, "--steps", "1", "--init-from", "protector", "--widths", "8,16") == 2
    assert _train(tmp_path, "--steps", "1", "--init-from", "task-resnet") == 2
