"""Probes: accuracy on planted directions, orthonormal U, idempotent P, positive bounds."""

from __future__ import annotations

import pytest
import torch

from services.common.errors import FailedPrecondition
from services.kernels.probes import (
    ProbeSet,
    fit_probes,
    orthonormalize,
    projection,
    require_readable,
    unreadable,
)


def planted(n: int = 600, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes where attribute 0 and 1 are linear in z, attribute 2 is noise, 3 is levelled."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=gen)
    a0 = (z[:, 0] + 0.5 * z[:, 1] > 0).long()
    a1 = (z[:, 1] - z[:, 2] > 0.2).long()
    a2 = torch.randint(0, 2, (n,), generator=gen)
    a3 = (z[:, 3] * 1.2 + 2).round().clamp(0, 4).long()
    return z, torch.stack([a0, a1, a2, a3], 1)


@pytest.fixture(scope="module")
def probes() -> ProbeSet:
    z, labels = planted()
    return fit_probes(z, labels, ("a0", "a1", "noise", "level"))


def test_planted_attributes_are_readable_and_noise_is_not(probes: ProbeSet) -> None:
    assert probes.heldout_accuracy["a0"] > 0.95
    assert probes.heldout_accuracy["a1"] > 0.95
    assert probes.heldout_accuracy["level"] > 0.8
    assert set(unreadable(probes, 0.8)) == {"noise"}
    with pytest.raises(FailedPrecondition, match="noise"):
        require_readable(probes, 0.8)


def test_directions_are_orthonormal_in_order_and_p_is_a_projection(probes: ProbeSet) -> None:
    u = probes.directions
    assert u.shape == (12, 4)
    assert torch.allclose(u.T @ u, torch.eye(4), atol=1e-5)
    first = probes.weights[0] / probes.weights[0].norm()
    assert torch.allclose(u[:, 0], first, atol=1e-5)  # the first direction is probe 1's own
    assert all(float(u[:, a] @ probes.weights[a]) > 0 for a in range(4))
    p = probes.projection
    assert torch.allclose(p @ p, p, atol=1e-5) and torch.allclose(p, p.T)


def test_clip_bounds_are_positive_quantiles(probes: ProbeSet) -> None:
    z, _ = planted()
    assert bool((probes.clip_bounds > 0).all())
    coords = (z[:480] @ probes.directions).abs()
    inside = (coords <= probes.clip_bounds).float().mean(0)
    assert bool((inside >= 0.97).all()) and bool((inside <= 0.99).all())


def test_dependent_probe_is_refused() -> None:
    w = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    with pytest.raises(FailedPrecondition, match="span"):
        orthonormalize(w, ("a", "b"))
    u = orthonormalize(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(projection(u) @ projection(u), projection(u), atol=1e-6)


def test_tensors_round_trip(probes: ProbeSet) -> None:
    again = ProbeSet.from_tensors(probes.names, probes.tensors())
    z, _ = planted()
    assert torch.equal(again.predict(z), probes.predict(z))
