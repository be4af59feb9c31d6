"""FMD (services/kernels/fmd.py): the ε-ball and the pixel range hold exactly, the features
move more with more iterations, the CE term keeps the authorized model right, and a
deadline stops the loop early (on a fake clock) with what that many steps give."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.nn import functional as F

from services.kernels import fmd
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


class FakeClock:
    """``fmd.monotonic`` replaced: every run of the model's stem costs one second."""

    def __init__(self, model: Classifier) -> None:
        self.now = 0.0
        self.handle = model.stages["stem"].register_forward_hook(self.tick)

    def tick(self, *_: object) -> None:
        self.now += 1.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(trained, monkeypatch) -> Iterator[FakeClock]:
    fake = FakeClock(trained[0])
    monkeypatch.setattr(fmd, "monotonic", fake)
    yield fake
    fake.handle.remove()


def test_no_deadline_runs_every_step(trained) -> None:
    model, x, y = trained
    assert protect(model, x, y, iterations=3)[1].steps == 3
    assert protect(model, x, y, iterations=3, time_budget_s=1e6)[1].steps == 3


def test_a_budget_stops_before_the_step_that_would_overrun_it(trained, clock) -> None:
    """The two clean passes take 2 s, so the first step is estimated at 3 s (a step ≈ three
    forwards) and fits in 10 s; each step then costs 1 s (one pass; the CE term's gradient
    moves x* = x, so no escape pass) and ends at 3, 4, …, 10 s. The ninth would end at
    11 s: not started. The result is exactly that of 8 iterations."""
    model, x, y = trained
    protected, stats = protect(model, x, y, iterations=50, time_budget_s=10.0)
    assert stats.steps == 8
    assert clock.now == 12.0  # the loop ended at 10 s; the final stats take two passes
    replay, replay_stats = protect(model, x, y, iterations=8)
    assert torch.equal(protected, replay)
    assert torch.equal(stats.feature_distortion, replay_stats.feature_distortion)
    clock.now = 0.0  # 4 s: the first step, estimated to end at 5 s, is not started
    assert protect(model, x, y, iterations=50, time_budget_s=4.0)[1].steps == 0


def test_a_past_deadline_runs_no_step(trained) -> None:
    model, x, y = trained
    protected, stats = protect(model, x, y, iterations=5, deadline=fmd.monotonic() - 1.0)
    assert stats.steps == 0 and torch.equal(protected, x)
    assert protect(model, x, y, iterations=5, time_budget_s=0.0)[1].steps == 0


def test_the_earlier_of_deadline_and_budget_wins(trained, clock) -> None:
    model, x, y = trained
    budget = protect(model, x, y, iterations=50, deadline=1e9, time_budget_s=10.0)[1].steps
    clock.now = 0.0
    deadline = protect(model, x, y, iterations=50, deadline=20.0, time_budget_s=1e9)[1].steps
    assert (budget, deadline) == (8, 18)


@pytest.mark.parametrize(
    "kwargs",
    [{"time_budget_s": -1.0}, {"time_budget_s": float("nan")}, {"deadline": "soon"}],
    ids=["negative", "nan", "not-a-number"],
)
def test_bad_deadlines_are_typed(trained, kwargs) -> None:
    model, x, _ = trained
    with pytest.raises(KernelInputError):
        protect(model, x, iterations=1, **kwargs)
