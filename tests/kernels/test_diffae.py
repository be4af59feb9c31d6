"""Diffusion autoencoder: shapes, deterministic decoding, inversion, typed input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.errors import InvalidArgument
from services.kernels.checks import KernelInputError
from services.kernels.diffae import DiffAE, DiffAEConfig
from services.kernels.metrics import psnr, ssim

TINY = DiffAEConfig(
    resolution=16,
    z_dim=8,
    encoder_channels=(8, 16),
    unet_channels=(8, 16),
    norm_groups=4,
    train_timesteps=100,
)


@pytest.fixture(scope="module")
def model() -> DiffAE:
    torch.manual_seed(0)
    return DiffAE(TINY).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_encode_and_decode_shapes(model: DiffAE, images: torch.Tensor) -> None:
    z = model.encode(images)
    assert z.shape == (3, 8)
    out = model.decode(z, torch.randn(3, 3, 16, 16), steps=3)
    assert out.shape == (3, 3, 16, 16)
    assert float(out.abs().max()) <= 1.0


def test_decode_is_a_pure_function_of_z_noise_and_steps(
    model: DiffAE, images: torch.Tensor
) -> None:
    z = model.encode(images)
    x_t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(123)
    first = model.decode(z, x_t, steps=4)
    torch.manual_seed(456)  # the global RNG must not matter
    assert torch.equal(model.decode(z, x_t, steps=4), first)
    other = model.decode(z, torch.randn(3, 3, 16, 16), steps=4)
    assert not torch.allclose(other, first)
    assert not torch.allclose(model.decode(z, x_t, steps=2), first)


def test_stochastic_encode_inverts_to_noise_of_the_right_shape(
    model: DiffAE, images: torch.Tensor
) -> None:
    z = model.encode(images)
    x_t = model.stochastic_encode(images, z, steps=4)
    assert x_t.shape == images.shape and bool(torch.isfinite(x_t).all())
    assert model.reconstruct(images, steps=4).shape == images.shape


def test_loss_is_reproducible_with_a_generator(model: DiffAE, images: torch.Tensor) -> None:
    a = model.loss(images, torch.Generator().manual_seed(5))
    b = model.loss(images, torch.Generator().manual_seed(5))
    assert a.ndim == 0 and torch.equal(a, b)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (np.zeros((16, 16, 3), dtype=np.uint8), "ndarray"),
        (torch.zeros(16, 16, 3, dtype=torch.uint8), "uint8"),
        (torch.zeros(1, 16, 16, 3), "(1, 16, 16, 3)"),
        (torch.zeros(1, 3, 32, 32), "(B, 3, 16, 16)"),
        (torch.full((1, 3, 16, 16), 255.0), "values in [255, 255]"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
    ],
)
def test_bad_images_are_refused_naming_the_expected_form(
    model: DiffAE, bad: object, needle: str
) -> None:
    with pytest.raises(KernelInputError) as info:
        model.encode(bad)  # type: ignore[arg-type]
    assert "float tensor (B, 3, 16, 16) in [-1, 1]" in info.value.message
    assert needle in info.value.message
    assert isinstance(info.value, InvalidArgument)


def test_bad_codes_noise_and_steps_are_refused(model: DiffAE) -> None:
    noise = torch.randn(2, 3, 16, 16)
    with pytest.raises(KernelInputError, match=r"\(B, 8\)"):
        model.decode(torch.zeros(2, 9), noise, steps=2)
    with pytest.raises(KernelInputError, match=r"\(2, 3, 16, 16\)"):
        model.decode(torch.zeros(2, 8), torch.randn(3, 3, 16, 16), steps=2)
    with pytest.raises(KernelInputError, match="steps"):
        model.decode(torch.zeros(2, 8), noise, steps=0)


def test_config_round_trips_and_refuses_bad_resolution() -> None:
    assert DiffAEConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(KernelInputError, match="divisible"):
        DiffAEConfig(resolution=18, unet_channels=(8, 16, 16), norm_groups=4)


def test_psnr_and_ssim_rank_a_noisier_copy_lower(images: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(3)
    slight = (images + 0.05 * torch.randn(images.shape, generator=gen)).clamp(-1, 1)
    heavy = (images + 0.5 * torch.randn(images.shape, generator=gen)).clamp(-1, 1)
    assert torch.allclose(ssim(images, images), torch.ones(3))
    assert bool((ssim(images, slight) > ssim(images, heavy)).all())
    assert bool((psnr(images, slight) > psnr(images, heavy)).all())


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_both_parameterisations_agree_on_noise_and_image(prediction: str) -> None:
    torch.manual_seed(0)
    net = DiffAE(DiffAEConfig(**{**TINY.to_dict(), "prediction_type": prediction})).eval()
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([5, 90])
    z = torch.randn(2, 8)
    with torch.no_grad():
        raw, eps = net.predict(x_t, t, z), net.eps(x_t, t, z)
    alpha = net.train_scheduler().alphas_cumprod[t].view(-1, 1, 1, 1)
    if prediction == "epsilon":
        assert torch.equal(eps, raw)
    else:  # x₀ read from ε (DDPM) equals x₀ read from v (Salimans & Ho)
        from_eps = (x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        from_v = alpha.sqrt() * x_t - (1 - alpha).sqrt() * raw
        assert torch.allclose(from_eps, from_v, atol=1e-4)


def test_v_loss_targets_the_velocity() -> None:
    torch.manual_seed(0)
    net = DiffAE(TINY)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    scheduler = net.train_scheduler()
    gen = torch.Generator().manual_seed(4)
    t = torch.randint(0, TINY.train_timesteps, (2,), generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        want = torch.nn.functional.mse_loss(
            net.predict(scheduler.add_noise(x, noise, t), t, net.encoder(x)),
            scheduler.get_velocity(x, noise, t),
        )
        got = net.loss(x, torch.Generator().manual_seed(4))
    assert torch.allclose(got, want)


def test_unknown_parameterisation_is_refused() -> None:
    with pytest.raises(KernelInputError, match="prediction_type"):
        DiffAEConfig(prediction_type="sample")


def test_attribute_head_adds_its_logistic_loss() -> None:
    config = DiffAEConfig(**{**TINY.to_dict(), "attributes": ("a", "b"), "attribute_weight": 0.5})
    torch.manual_seed(0)
    net = DiffAE(config)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]])
    with torch.no_grad():
        total = net.loss(x, torch.Generator().manual_seed(5), labels)
        net.attribute_head = None  # the same draws without the head
        plain = net.loss(x, torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    head = DiffAE(config).attribute_head
    assert head is not None
    with torch.no_grad():
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            head(net.encoder(x)), labels.float()
        )
    assert float(total) == pytest.approx(float(plain) + 0.5 * float(bce), rel=1e-5)
    with pytest.raises(KernelInputError, match="attributes"):
        DiffAE(config).loss(x, torch.Generator().manual_seed(5))
    with pytest.raises(KernelInputError, match=r"expected \(4, 2\)"):
        DiffAE(config).loss(x, None, labels[:, :1])
    with pytest.raises(KernelInputError, match="needs the attributes"):
        DiffAEConfig(attribute_weight=0.1)


def test_task_head_adds_its_cross_entropy() -> None:
    config = DiffAEConfig(**{**TINY.to_dict(), "task_classes": 3, "task_weight": 0.3})
    torch.manual_seed(0)
    net = DiffAE(config)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    tasks = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        total = net.loss(x, torch.Generator().manual_seed(5), tasks=tasks)
        assert net.task_head is not None
        ce = torch.nn.functional.cross_entropy(net.task_head(net.encoder(x)), tasks)
        net.task_head = None  # the same draws without the head
        plain = net.loss(x, torch.Generator().manual_seed(5))
    assert float(total) == pytest.approx(float(plain) + 0.3 * float(ce), rel=1e-5)
    with pytest.raises(KernelInputError, match="task labels"):
        DiffAE(config).loss(x, torch.Generator().manual_seed(5))
    with pytest.raises(KernelInputError, match=r"expected \(4,\)"):
        DiffAE(config).loss(x, None, tasks=tasks[:2])


def test_task_config_is_checked_and_old_configs_load_without_a_task_head() -> None:
    with pytest.raises(KernelInputError, match="needs task_classes"):
        DiffAEConfig(task_weight=0.1)
    with pytest.raises(KernelInputError, match="task_classes"):
        DiffAEConfig(task_classes=1)
    old = {k: v for k, v in TINY.to_dict().items() if not k.startswith("task_")}
    config = DiffAEConfig.from_dict(old)
    assert config.task_classes == 0 and DiffAE(config).task_head is None
    names = set(DiffAE(DiffAEConfig(**{**TINY.to_dict(), "task_classes": 3})).state_dict())
    assert names - set(DiffAE(config).state_dict()) == {"task_head.weight", "task_head.bias"}
