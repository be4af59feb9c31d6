"""Pipeline augmentation for classifier training: the real operations, seeded, in range."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.errors import InvalidArgument
from services.kernels import pipeline
from services.kernels.checks import KernelInputError
from services.kernels.classifiers import ClassifierConfig
from services.kernels.training import TrainConfig
from services.kernels.training.augment import (
    PipelineAugment,
    augment_pipeline,
    sample_augmentation,
)
from services.kernels.training.classifier import train_classifier
from services.kernels.training.data import load_table

OFF = PipelineAugment(p_resize=0.0, p_shift=0.0, p_jpeg=0.0)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    cache = tmp_path_factory.mktemp("cache")
    return load_table("synthfaces://?n=16&seed=3", 32, cache).batch(torch.arange(16))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_nothing_fires_at_probability_zero(faces: torch.Tensor) -> None:
    """8-bit faces through no step come back unchanged (the final rounding is exact)."""
    assert torch.equal(augment_pipeline(faces, _gen(), OFF), faces)


@pytest.mark.parametrize(
    ("config", "real"),
    [
        (PipelineAugment(p_resize=1.0, p_shift=0.0, p_jpeg=0.0), "resize"),
        (PipelineAugment(p_resize=0.0, p_shift=1.0, p_jpeg=0.0, max_shift=2), "shift"),
        (PipelineAugment(p_resize=0.0, p_shift=0.0, p_jpeg=1.0), "jpeg"),
    ],
)
def test_each_step_is_the_real_operation(faces: torch.Tensor, config, real: str) -> None:
    """Each image equals the pipeline operation with the drawn parameters, and differs from
    the input where the draw is not the identity."""
    out = augment_pipeline(faces, _gen(1), config)
    draws = _gen(1)
    changed = 0
    for image, got in zip(faces, out, strict=True):
        t = sample_augmentation(config, draws)
        one = image[None]
        if real == "resize":
            assert t.scale is not None and 0.5 <= t.scale <= 2.0 and t.mode in pipeline.RESAMPLE
            want = pipeline.resize(one, t.scale, t.mode)
        elif real == "shift":
            assert max(abs(t.shift[0]), abs(t.shift[1])) <= 2
            want = pipeline.shift_approx(one, *t.shift)
        else:
            assert t.quality is not None and 50 <= t.quality <= 95
            want = pipeline.jpeg(one, t.quality)
        assert torch.equal(got[None], pipeline.quantize(want))
        changed += int(not torch.equal(got, image))
    # a few draws are the identity: a shift of (0, 0), a resize to 32 px, x2 nearest and back
    assert changed >= len(faces) // 2


def test_default_draws_cover_the_ranges() -> None:
    """Qualities over [50, 95], scales over [0.5, 2] both ways, every filter, each step about
    half the time."""
    config, gen = PipelineAugment(), _gen(5)
    draws = [sample_augmentation(config, gen) for _ in range(2000)]
    qualities = [t.quality for t in draws if t.quality is not None]
    scales = [t.scale for t in draws if t.scale is not None]
    assert min(qualities) == 50 and max(qualities) == 95
    assert 0.5 <= min(scales) < 0.55 and 1.9 < max(scales) <= 2.0
    assert {t.mode for t in draws if t.scale is not None} == set(pipeline.RESAMPLE)
    for fired in (qualities, scales, [t for t in draws if t.shift != (0, 0)]):
        assert 0.35 < len(fired) / len(draws) < 0.6
    assert all(t.quantize for t in draws)


def test_deterministic_for_a_seed_shape_and_range_kept(faces: torch.Tensor) -> None:
    first = augment_pipeline(faces, _gen(7))
    assert torch.equal(first, augment_pipeline(faces, _gen(7)))
    assert not torch.equal(first, augment_pipeline(faces, _gen(8)))
    assert first.shape == faces.shape and first.dtype == faces.dtype
    assert float(first.min()) >= -1.0 and float(first.max()) <= 1.0
    assert torch.equal(pipeline.quantize(first), first)  # 8-bit values


def test_bad_inputs_are_refused(faces: torch.Tensor) -> None:
    with pytest.raises(KernelInputError):
        augment_pipeline(faces * 3, _gen())
    with pytest.raises(KernelInputError):
        augment_pipeline(faces[0], _gen())
    with pytest.raises(KernelInputError):
        PipelineAugment(p_jpeg=1.5)
    with pytest.raises(KernelInputError):
        PipelineAugment(qualities=(0, 95))


def test_train_classifier_with_pipeline_augmentation(tmp_path: Path) -> None:
    table = load_table("synthfaces://?n=32&seed=0", 16, tmp_path)
    model = ClassifierConfig(arch="resnet", num_classes=3, resolution=16, width=4)
    config = TrainConfig(steps=2, batch_size=4, threads=1, progress=False, checkpoint_every=0)
    result = train_classifier(table, model, config, augment="pipeline")
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    with pytest.raises(InvalidArgument):
        train_classifier(table, model, config, augment="jpeg")
