"""Classifiers: logits, named feature maps per layer, determinism, config round trips,
typed errors; the unauthorized role end to end through ``veil train classifier``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from services.cli.train import add_train_parser
from services.kernels.checks import KernelInputError
from services.kernels.classifiers import ARCHITECTURES, ClassifierConfig, build_classifier
from services.kernels.store import ModelStore
from services.kernels.training.classifier import labels_for
from services.kernels.training.data import ImageTable


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_and_every_feature_layer(arch: str) -> None:
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch=arch, num_classes=3, resolution=16, width=8))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert model(x).shape == (2, 3)
    assert "penultimate" in model.feature_layers and "block1" in model.feature_layers
    for layer in model.feature_layers:
        feats = model.features(x, layer)
        assert feats.shape[0] == 2 and feats.ndim in (2, 4)
    assert model.features(x, "penultimate").shape == (2, 32)
    assert model.predict(x).shape == (2,)


def test_features_carry_gradients_to_the_input() -> None:
    model = build_classifier(ClassifierConfig(resolution=16, width=8)).eval()
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_(True)
    model.features(x, "block2").square().mean().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_unknown_layer_and_bad_input_are_typed_errors() -> None:
    model = build_classifier(ClassifierConfig(arch="vgg", resolution=16, width=8))
    with pytest.raises(KernelInputError, match="one of"):
        model.features(torch.zeros(1, 3, 16, 16), "stem")
    with pytest.raises(KernelInputError, match=r"\(B, 3, 16, 16\)"):
        model(torch.zeros(1, 16, 16, 3))
    with pytest.raises(KernelInputError, match="arch"):
        ClassifierConfig(arch="convnext")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seed_same_model_and_logits(arch: str) -> None:
    config = ClassifierConfig(arch=arch, num_classes=3, resolution=16, width=8)
    torch.manual_seed(3)
    first = build_classifier(config).eval()
    torch.manual_seed(3)
    second = build_classifier(config).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert torch.equal(first(x), second(x)) and torch.equal(first(x), first(x))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_round_trips_into_a_model_that_takes_the_weights(arch: str) -> None:
    config = ClassifierConfig(arch=arch, num_classes=3, resolution=16, width=8, role="unauthorized")
    model = build_classifier(config).eval()
    again = ClassifierConfig.from_dict({**config.to_dict(), "added_later": 1})
    assert again == config
    rebuilt = build_classifier(again).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(model(x), rebuilt(x))


@pytest.mark.parametrize("arch,bad,divisor", [("mlpmixer", 36, 8), ("vit", 30, 4)])
def test_token_models_stages_are_maps_on_an_8x8_patch_grid(
    arch: str, bad: int, divisor: int
) -> None:
    """The mixer and the ViT cut 32 px into an 8×8 grid of patches (4 px each); a side their
    patch does not divide is refused."""
    model = build_classifier(ClassifierConfig(arch=arch, resolution=32, width=8))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for layer in ("stem", "block1", "block4"):
        assert model.features(x, layer).shape == (2, 32, 8, 8)
    with pytest.raises(KernelInputError, match=f"divisible by {divisor}"):
        build_classifier(ClassifierConfig(arch=arch, resolution=bad))


def test_mixer_sees_where_a_feature_sits() -> None:
    """Token mixing is position-specific (Tolstikhin et al. 2021, §2): unlike a pure
    per-patch MLP followed by a mean, it tells a shifted image from the original."""
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="mlpmixer", resolution=16, width=8)).eval()
    x = torch.zeros(1, 3, 16, 16)
    x[..., 2:4, 2:4] = 1.0
    shifted = torch.roll(x, shifts=(8, 8), dims=(-2, -1))
    assert not torch.allclose(
        model.features(x, "penultimate"), model.features(shifted, "penultimate")
    )


def test_vit_sees_where_a_feature_sits_and_attends_across_the_image() -> None:
    """The learned position embeddings tell a shifted image from the original through the
    mean over patches; attention lets one patch change every patch's features (no conv
    receptive field)."""
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="vit", resolution=16, width=8)).eval()
    x = torch.zeros(1, 3, 16, 16)
    x[..., 0:4, 0:4] = 1.0
    shifted = torch.roll(x, shifts=(8, 8), dims=(-2, -1))
    assert not torch.allclose(
        model.features(x, "penultimate"), model.features(shifted, "penultimate")
    )
    corner = model.features(x, "block1") - model.features(torch.zeros_like(x), "block1")
    assert float(corner[..., -1, -1].abs().max()) > 0  # the far patch moved too


def test_unauthorized_models_learn_the_task_labels() -> None:
    table = ImageTable(
        images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8),
        attributes=torch.tensor([[0], [1], [1], [0]]),
        tasks=torch.tensor([2, 0, 1, 2]),
        attribute_names=("smiling",),
        num_task_classes=3,
        uri="test://",
    )
    unauthorized = ClassifierConfig(role="unauthorized", num_classes=3)
    assert torch.equal(labels_for(table, unauthorized), table.tasks)
    attacker = ClassifierConfig(role="attacker", target="smiling")
    assert torch.equal(labels_for(table, attacker), table.attributes[:, 0])
    tenant = ClassifierConfig(role="task", target="smiling")  # a task other than pose
    assert torch.equal(labels_for(table, tenant), table.attributes[:, 0])
    with pytest.raises(KernelInputError, match="role"):
        ClassifierConfig(role="outsider")


def test_veil_train_classifier_role_unauthorized(tmp_path: Path) -> None:
    """``--role unauthorized`` trains on the pose labels into ``unauth-<arch>``; with an
    ``--attribute``, on that attribute (another task) into ``unauth-<attribute>-<arch>``; an
    attacker without one is refused."""
    parser = argparse.ArgumentParser(prog="veil")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    common = ["--out", str(tmp_path / "store"), "--data", "synthfaces://?n=24&seed=0",
              "--cache-dir", str(tmp_path), "--checkpoint-dir", str(tmp_path / "ckpt"),
              "--steps", "2", "--batch-size", "2", "--threads", "1", "--no-progress"]  # fmt: skip
    base = ["train", "classifier", "--role", "unauthorized", "--arch", "mlpmixer", "--width", "4"]
    refused = parser.parse_args(["train", "classifier", "--role", "attacker", *common])
    assert refused.handler(refused) == 2
    other = parser.parse_args([*base, "--attribute", "smiling", "--seed", "14", *common])
    assert other.handler(other) == 0
    smiling = ModelStore(tmp_path / "store").manifest("unauth-smiling-mlpmixer")
    assert (smiling.config["target"], smiling.config["num_classes"]) == ("smiling", 2)
    assert "--attribute smiling" in smiling.command
    args = parser.parse_args([*base, "--seed", "13", *common])
    assert args.handler(args) == 0
    manifest = ModelStore(tmp_path / "store").manifest("unauth-mlpmixer")
    assert manifest.config["role"] == "unauthorized" and manifest.config["target"] == "pose"
    assert manifest.config["num_classes"] == 3 and manifest.seed == 13
    assert "--role unauthorized" in manifest.command and "--attribute" not in manifest.command
