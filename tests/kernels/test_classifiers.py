"""Classifiers: logits, named feature maps per layer, typed errors."""

from __future__ import annotations

import pytest
import torch

from services.kernels.checks import KernelInputError
from services.kernels.classifiers import ARCHITECTURES, ClassifierConfig, build_classifier


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
        ClassifierConfig(arch="vit")
