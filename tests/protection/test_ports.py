"""The protection core's ``Kernels`` port, one contract run on an in-memory fake and on the
real adapter (the in-process backend, committed weights); then the core itself, with no
server, protects an image on each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import InvalidArgument
from services.common.imaging import decode_image, encode_image
from services.inference.backend import InferenceSettings, ProtectOutput, ProtectParams
from services.inference.catalog import PROTECTION_MODELS, ClassifierInfo, classifier_info
from services.kernels.data.synthfaces import SynthFaces
from services.protection.core import Params, Protection, ProtectJob
from services.protection.metrics import ProtectionMetrics
from services.protection.ports import Kernels
from services.protection.settings import ProtectionSettings

T = TypeVar("T")
FAST_EPSILON = 16 / 255
"""The committed generator's bound (its config's ``epsilon``), in [0, 1] pixel units."""


class FakeKernels:
    """The :class:`~services.protection.ports.Kernels` port without a model: logits are a
    fixed linear map of the channel means, features the pixels themselves; ``protect``
    moves every pixel by the bound, against the sign of a fixed pattern."""

    def __init__(self, num_classes: int) -> None:
        self.weights = np.random.default_rng(0).standard_normal((3, num_classes))
        self.asked: list[ProtectParams] = []

    async def classify(
        self, images: np.ndarray, *, model: str = "", version: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        flat = np.asarray(images, dtype=np.float32)
        logits = flat.reshape(len(flat), 3, -1).mean(axis=2) @ self.weights
        return logits.astype(np.float32), flat.reshape(len(flat), -1)

    def _perturb(self, images: np.ndarray, epsilon: float, steps: int) -> ProtectOutput:
        x = np.asarray(images, dtype=np.float32)
        pattern = np.sign(np.sin(np.arange(x[0].size, dtype=np.float32))).reshape(x.shape[1:])
        protected = np.clip(x - 2 * epsilon * pattern, -1.0, 1.0).astype(np.float32)
        distortion = ((protected - x) ** 2).reshape(len(x), -1).mean(axis=1)
        return ProtectOutput(protected, distortion.astype(np.float32), steps)

    async def protect(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        params: ProtectParams | None = None,
        *,
        time_budget_s: float | None = None,
        version: int = 0,
    ) -> ProtectOutput:
        chosen = params or ProtectParams()
        self.asked.append(chosen)
        return self._perturb(images, chosen.epsilon, chosen.iterations)

    async def protect_fast(self, images: np.ndarray) -> ProtectOutput:
        return self._perturb(images, FAST_EPSILON, 0)


@pytest.fixture(scope="module")
def authorized() -> ClassifierInfo:
    return classifier_info(InferenceSettings(), "veil_classifier")


@pytest.fixture(params=["fake", "local"])
def kernels(request: pytest.FixtureRequest, authorized: ClassifierInfo) -> Iterator[Kernels]:
    if request.param == "fake":
        yield FakeKernels(authorized.num_classes)
        return
    from services.inference.local import LocalBackend

    local = LocalBackend(InferenceSettings(models=PROTECTION_MODELS, surrogates=[]))
    yield local
    asyncio.run(local.close())


def images(resolution: int, n: int = 2) -> np.ndarray:
    faces = SynthFaces(n=n, seed=21, resolution=resolution)
    pixels = np.stack([faces.pixels(i) for i in range(n)]).astype(np.float32)
    return (pixels / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


def test_kernels_classify_and_protect_within_the_bound(
    kernels: Kernels, authorized: ClassifierInfo
) -> None:
    x = images(authorized.resolution)
    params = ProtectParams(epsilon=8 / 255, step_size=2 / 255, iterations=3)

    async def scenario() -> tuple[Any, ...]:
        logits, features = await kernels.classify(x, model=authorized.name, version=1)
        fmd = await kernels.protect(x, None, params)
        fast = await kernels.protect_fast(x)
        return logits, features, fmd, fast

    logits, features, fmd, fast = asyncio.run(scenario())
    assert np.asarray(logits).shape == (2, authorized.num_classes)
    assert np.asarray(features).ndim == 2 and len(features) == 2
    for out, bound, steps in ((fmd, params.epsilon, 3), (fast, FAST_EPSILON, 0)):
        protected = np.asarray(out.protected)
        assert protected.shape == x.shape and out.steps_run == steps
        assert np.abs(protected - x).max() <= 2 * bound + 1e-5
        assert np.asarray(out.feature_distortion).shape == (2,)


async def inline(fn: Callable[..., T], /, *args: Any) -> T:
    return fn(*args)


@pytest.mark.parametrize("mode", ["fmd", "fast"])
def test_the_core_protects_an_image_within_its_bound(
    kernels: Kernels, authorized: ClassifierInfo, mode: str
) -> None:
    core = Protection(
        ProtectionSettings(),
        lambda: kernels,
        authorized,
        lambda: kernels,
        {},
        ProtectionMetrics(CollectorRegistry()),
        inline,
    )
    photo = SynthFaces(n=1, seed=3, resolution=48).pixels(0)  # not the model's resolution
    job = ProtectJob(encode_image(photo), mode=mode, params=Params(iterations=3), request_id="r")
    out = asyncio.run(core.protect(job))
    assert decode_image(out.image).pixels.shape == photo.shape
    bound = Params().epsilon if mode == "fmd" else FAST_EPSILON
    assert 0 < out.linf <= bound + 1e-9
    assert out.steps_run == (3 if mode == "fmd" else 0) and out.mode == mode
    assert (out.model, out.version, out.request_id) == (authorized.name, 1, "r")
    assert out.robustness == ("full" if mode == "fmd" else "none")


def fake_core(authorized: ClassifierInfo) -> tuple[Protection, FakeKernels]:
    fake = FakeKernels(authorized.num_classes)
    core = Protection(
        ProtectionSettings(),
        lambda: fake,
        authorized,
        lambda: fake,
        {},
        ProtectionMetrics(CollectorRegistry()),
        inline,
    )
    return core, fake


@pytest.mark.parametrize("robustness", ["none", "jpeg", "full"])
def test_the_core_asks_fmd_for_the_robustness_and_echoes_it(
    authorized: ClassifierInfo, robustness: str
) -> None:
    core, fake = fake_core(authorized)
    photo = encode_image(SynthFaces(n=1, seed=3, resolution=32).pixels(0))
    params = Params(iterations=3, robustness=robustness)
    out = asyncio.run(core.protect(ProtectJob(photo, mode="fmd", params=params)))
    assert [p.robustness for p in fake.asked] == [robustness] and out.robustness == robustness


def test_the_core_refuses_an_unknown_robustness(authorized: ClassifierInfo) -> None:
    core, fake = fake_core(authorized)
    photo = encode_image(SynthFaces(n=1, seed=3, resolution=32).pixels(0))
    job = ProtectJob(photo, params=Params(robustness="webp"))
    with pytest.raises(InvalidArgument) as exc:
        asyncio.run(core.protect(job))
    assert exc.value.details == {"field": "params.robustness"} and not fake.asked


def test_the_local_backend_runs_the_robustness_it_is_given(authorized: ClassifierInfo) -> None:
    """The in-process kernels (committed weights, no surrogates): the same request with
    ``none`` and with ``jpeg`` gives different protections, each within the bound."""
    from services.inference.local import LocalBackend

    x = images(authorized.resolution, n=1)

    async def both() -> list[ProtectOutput]:
        local = LocalBackend(InferenceSettings(models=PROTECTION_MODELS, surrogates=[]))
        try:
            return [
                await local.protect(x, None, ProtectParams(iterations=3, robustness=r))
                for r in ("none", "jpeg")
            ]
        finally:
            await local.close()

    none, jpeg = (np.asarray(o.protected) for o in asyncio.run(both()))
    assert not np.array_equal(none, jpeg)
    assert max(np.abs(none - x).max(), np.abs(jpeg - x).max()) <= 2 * 16 / 255 + 1e-5


def face(resolution: int = 32) -> bytes:
    return encode_image(SynthFaces(n=1, seed=3, resolution=resolution).pixels(0))


@pytest.mark.parametrize(
    "robustness,checks",
    [
        ("none", ["as returned"]),
        ("jpeg", ["as returned", "jpeg q70", "jpeg q95"]),
        ("full", ["as returned", "jpeg q70", "jpeg q95", "resize 0.5x", "shift 2px"]),
    ],
)
def test_the_answer_says_what_was_covered_and_the_margin_it_measured(
    authorized: ClassifierInfo, robustness: str, checks: list[str]
) -> None:
    """Each check's margin is the authorized model's on that transformation of the returned
    bytes, recomputed here from the fake's logits; the answer's margin is the smallest."""
    from services.protection import transforms
    from services.protection.core import to_model

    core, fake = fake_core(authorized)
    params = Params(iterations=3, robustness=robustness)
    out = asyncio.run(core.protect(ProtectJob(face(48), mode="fmd", params=params)))
    assert out.format == "PNG" and out.optimised_for == transforms.OPTIMISED_FOR[robustness]
    assert [c.transform for c in out.checks] == checks
    returned = decode_image(out.image).pixels
    res = authorized.resolution
    variants = [returned] + [transforms.operation(n, res)(returned) for n in checks[1:]]
    logits, _ = asyncio.run(fake.classify(np.stack([to_model(v, res) for v in variants])))
    y = out.authorized_label
    expected = logits[:, y] - np.delete(logits, y, axis=1).max(axis=1)
    assert [c.margin for c in out.checks] == pytest.approx(expected.tolist(), rel=1e-5)
    assert [c.prediction for c in out.checks] == logits.argmax(1).tolist()
    assert out.margin == min(c.margin for c in out.checks)
    assert out.authorized_prediction_after == out.checks[0].prediction


def test_a_jpeg_answer_is_a_jpeg_at_the_quality_asked(authorized: ClassifierInfo) -> None:
    core, _ = fake_core(authorized)
    photo = face(48)
    job = ProtectJob(photo, params=Params(iterations=3), encoding="jpeg", jpeg_quality=85)
    out = asyncio.run(core.protect(job))
    decoded = decode_image(out.image)
    assert out.format == "JPEG" and decoded.format == "JPEG"
    assert out.robustness == "full" and out.checks[0].transform == "as returned"
    original = decode_image(photo).pixels.astype(int)
    assert out.linf == pytest.approx(np.abs(decoded.pixels.astype(int) - original).max() / 255)
    default = asyncio.run(core.protect(ProtectJob(photo, params=Params(iterations=3))))
    assert default.format == "PNG" and decode_image(default.image).format == "PNG"
    assert default.linf <= Params().epsilon + 1e-9


@pytest.mark.parametrize(
    "job,field",
    [
        ({"encoding": "jpeg", "params": Params(robustness="none")}, "output_encoding"),
        ({"encoding": "jpeg", "jpeg_quality": 60}, "jpeg_quality"),
        ({"encoding": "jpeg", "jpeg_quality": 96}, "jpeg_quality"),
        ({"encoding": "png", "jpeg_quality": 80}, "jpeg_quality"),
        ({"jpeg_quality": 80}, "jpeg_quality"),
        ({"encoding": "webp"}, "output_encoding"),
        ({"encoding": "jpeg", "mode": "fast"}, "output_encoding"),
    ],
)
def test_an_output_the_protection_does_not_cover_is_refused_before_any_work(
    authorized: ClassifierInfo, job: dict, field: str
) -> None:
    core, fake = fake_core(authorized)  # its fast mode: a generator trained for "none"
    with pytest.raises(InvalidArgument) as exc:
        asyncio.run(core.protect(ProtectJob(face(), **job)))
    assert exc.value.details == {"field": field} and not fake.asked


def test_the_fast_mode_says_what_its_generator_was_trained_for(
    authorized: ClassifierInfo,
) -> None:
    core, _ = fake_core(authorized)
    core.fast_robustness = "jpeg"
    job = ProtectJob(face(), mode="fast", encoding="jpeg", jpeg_quality=90)
    out = asyncio.run(core.protect(job))
    assert out.robustness == "jpeg" and out.format == "JPEG"
    assert [c.transform for c in out.checks] == ["as returned", "jpeg q70", "jpeg q95"]
