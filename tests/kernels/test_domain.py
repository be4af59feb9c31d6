"""The in-domain score (``services.kernels.domain``): the Mahalanobis distance it computes,
the threshold at the held-out quantile, the AUC, and the checks on what it is given."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.kernels.domain import DomainModel, DomainScore, auc, fit_domain, gaussian


def correlated(n: int, seed: int, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mix + 3.0


def test_the_score_is_the_mahalanobis_distance_of_the_fitted_gaussian() -> None:
    train = correlated(4000, 0)
    mean, whitening = gaussian(train)
    cov = np.cov(train, rowvar=False)
    cov += 1e-3 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    rows = correlated(5, 1)
    expected = np.sqrt(np.einsum("bi,ij,bj->b", rows - mean, np.linalg.inv(cov), rows - mean))
    model = DomainModel(mean, whitening, threshold=1.0)
    assert np.allclose(model.scores(rows), expected, rtol=1e-9)
    assert np.allclose(mean, train.mean(axis=0))


def test_the_threshold_refuses_the_quantile_it_was_set_at_on_fresh_rows() -> None:
    model = fit_domain(correlated(4000, 0), correlated(2000, 1), quantile=0.99)
    refused = np.mean(model.scores(correlated(20000, 2)) > model.threshold)
    assert 0.005 < refused < 0.02
    shifted = correlated(200, 3) + 4.0  # a different distribution: every row refused
    assert all(not s.in_domain for s in model.judge(shifted))
    assert auc(model.scores(correlated(500, 4)), model.scores(shifted)) == 1.0


def test_the_fit_is_deterministic_and_round_trips_through_its_arrays() -> None:
    a = fit_domain(correlated(1000, 0), correlated(200, 1))
    b = fit_domain(correlated(1000, 0), correlated(200, 1))
    assert a.threshold == b.threshold and np.array_equal(a.whitening, b.whitening)
    again = DomainModel.from_arrays(a.arrays(), {"threshold": a.threshold})
    rows = correlated(10, 5)
    assert np.array_equal(again.scores(rows), a.scores(rows))


def test_auc_counts_ties_as_one_half() -> None:
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5


def test_a_score_is_in_the_domain_up_to_its_threshold() -> None:
    assert DomainScore(2.0, 2.0).in_domain and not DomainScore(2.0001, 2.0).in_domain


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian(np.zeros((3, 6))),  # fewer rows than dimensions
        lambda: fit_domain(correlated(100, 0), correlated(10, 1), quantile=1.0),
        lambda: fit_domain(correlated(100, 0), correlated(10, 1)).scores(np.zeros((2, 5))),
        lambda: DomainModel.from_arrays(
            {"mean": np.zeros(3), "whitening": np.eye(4)}, {"threshold": 1.0}
        ),
        lambda: auc(np.array([]), np.array([1.0])),
    ],
)
def test_wrong_shapes_and_settings_are_invalid(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument):
        call()
