"""The unlearning variants of synthfaces: ``correlate`` ties attributes to the pose,
``resample`` (the ideal revision) unties them and keeps everything else of each sample."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.kernels.data import open_dataset
from services.kernels.data.revision import CORRELATED_POSE, parse_strengths

BASE = "synthfaces://?n=3000&seed=2&correlate=male:0.9,old:0.9"


def _rate(dataset, name: str, pose_on: int) -> tuple[float, float]:
    """P(attribute | the pose it is tied to), P(attribute | the other poses)."""
    column = dataset.attributes[:, dataset.attribute_names.index(name)]
    tied = dataset.tasks == pose_on
    return float(column[tied].mean()), float(column[~tied].mean())


def test_correlate_ties_each_attribute_to_its_pose() -> None:
    dataset = open_dataset(BASE, resolution=16)
    for j, name in enumerate(("male", "old")):
        on, off = _rate(dataset, name, CORRELATED_POSE[j])
        # strength 0.9: 0.9 + 0.1 * natural rate (0.5 male, 0.4 old) when tied
        assert on > 0.9 and off < 0.1, (name, on, off)
    natural = open_dataset("synthfaces://?n=3000&seed=2", resolution=16)
    assert np.array_equal(natural.tasks, dataset.tasks)  # the pose is never moved
    smiling = dataset.attribute_names.index("smiling")
    assert np.array_equal(natural.attributes[:, smiling], dataset.attributes[:, smiling])


def test_resample_keeps_ids_poses_and_others_and_unties_the_attributes() -> None:
    original = open_dataset(BASE, resolution=16)
    revised = open_dataset(BASE + "&resample=male,old&resample_seed=4", resolution=16)
    assert revised.sample_ids == original.sample_ids
    assert np.array_equal(revised.tasks, original.tasks)
    for j, name in enumerate(("male", "old")):
        on, off = _rate(revised, name, CORRELATED_POSE[j])
        assert abs(on - off) < 0.06, (name, on, off)
    for name in ("dark_skin", "smiling"):
        k = original.attribute_names.index(name)
        assert np.array_equal(original.attributes[:, k], revised.attributes[:, k])
    again = open_dataset(BASE + "&resample=male,old&resample_seed=4", resolution=16)
    assert np.array_equal(again.attributes, revised.attributes)  # deterministic
    other = open_dataset(BASE + "&resample=male,old&resample_seed=5", resolution=16)
    assert not np.array_equal(other.attributes, revised.attributes)


def test_resampled_faces_change_where_the_attribute_does_and_cache_apart(tmp_path) -> None:
    uri = "synthfaces://?n=40&seed=2"
    original = open_dataset(uri, resolution=16)
    revised = open_dataset(uri + "&resample=smiling&resample_seed=3", resolution=16)
    a, b = original.materialize(cache_dir=tmp_path), revised.materialize(cache_dir=tmp_path)
    k = original.attribute_names.index("smiling")
    same = original.attributes[:, k] == revised.attributes[:, k]
    assert same.any() and (~same).any()
    assert all(np.array_equal(a[i], b[i]) for i in np.flatnonzero(same))
    assert all(not np.array_equal(a[i], b[i]) for i in np.flatnonzero(~same))
    assert len(list(tmp_path.glob("*.npz"))) == 2  # variants never share a cache file
    again = open_dataset(uri + "&resample=smiling&resample_seed=3", resolution=16)
    assert np.array_equal(again.materialize(cache_dir=tmp_path), b)


@pytest.mark.parametrize(
    "query", ["correlate=beard:0.9", "correlate=male:1.5", "correlate=male:x", "resample=beard"]
)
def test_bad_variants_are_refused_naming_the_known_attributes(query: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        open_dataset(f"synthfaces://?n=10&{query}", resolution=16)
    assert "male" in err.value.message or "strength" in err.value.message


def test_parse_strengths_keeps_order() -> None:
    assert list(parse_strengths("old:0.5,male")) == ["old", "male"]
    assert parse_strengths("old:0.5,male") == {"old": 0.5, "male": 1.0}
