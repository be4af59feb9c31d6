"""FMD (services/kernels/fmd.py): the ε-ball and the pixel range hold exactly, the features
move more with more iterations, and the CE term keeps the authorized model right."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.nn import functional as F

from services.kernels.checks import KernelInputError
from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.fmd import protect


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread beats contended ones on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> tuple[Classifier, torch.Tensor, torch.Tensor]:
    """A tiny classifier fitted for a few steps to a separable toy task: the class is
    which half of the image is bright."""
    torch.manual_seed(0)
    x = torch.rand(16, 3, 16, 16) * 0.6 - 0.8
    y = torch.arange(16) % 2
    x[y == 1, :, :, 8:] += 1.0
    x[y == 0, :, :, :8] += 1.0
    model = build_classifier(ClassifierConfig(num_classes=2, resolution=16, width=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    assert (model.predict(x) == y).float().mean() == 1.0
    return model, x[:4], y[:4]


def test_bound_and_range_hold_exactly(trained) -> None:
    model, x, y = trained
    protected, _ = protect(model, x, y, epsilon=8 / 255, step_size=4 / 255, iterations=5)
    assert float((protected - x).abs().max()) <= 2 * 8 / 255 + 1e-7
    assert protected.min() >= -1.0 and protected.max() <= 1.0


def test_more_iterations_distort_more(trained) -> None:
    model, x, y = trained
    one = protect(model, x, y, iterations=1, ce_weight=0.0)[1].feature_distortion
    many = protect(model, x, y, iterations=4, ce_weight=0.0)[1].feature_distortion
    assert float(many.mean()) > float(one.mean()) > 0.0


def test_ce_term_keeps_the_authorized_model_right(trained) -> None:
    model, x, y = trained
    _, stats = protect(model, x, None, iterations=10, ce_weight=5.0)
    assert torch.equal(stats.labels, y)  # None → its own (correct) predictions
    assert (stats.predictions == y).float().mean() >= 0.75
    assert float(stats.cross_entropy.max()) < 2.0


def test_deterministic_without_a_seed(trained) -> None:
    model, x, y = trained
    a, _ = protect(model, x, y, iterations=2)
    b, _ = protect(model, x, y, iterations=2)
    c, _ = protect(model, x, y, iterations=2, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": -0.1},
        {"step_size": float("nan")},
        {"iterations": 2.5},
        {"feature_layer": "nope"},
        {"labels": torch.tensor([5] * 4)},
        {"labels": torch.zeros(4)},
    ],
    ids=["epsilon", "step", "iterations", "layer", "label-range", "label-dtype"],
)
def test_bad_arguments_are_typed(trained, kwargs) -> None:
    model, x, _ = trained
    with pytest.raises(KernelInputError):
        protect(model, x, **kwargs)


def test_uint8_images_are_refused(trained) -> None:
    model, x, _ = trained
    with pytest.raises(KernelInputError):
        protect(model, (x * 127 + 128).to(torch.uint8))
