"""Unlearning kernels: one contract for every method, the feature method's erasure, the
reference cache, cancellation and the wall-clock cap, typed errors.

A tiny pose model (16×16, width 8) is trained on faces whose pose goes with ``old`` and
``male``; the revision redraws both attributes (the ideal revision). Sizes are tiny, so
the assertions are about direction and mechanism, not the bench's figures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from services.common.errors import InvalidArgument, NotFound
from services.kernels import unlearning
from services.kernels.classifiers import Classifier, ClassifierConfig, build_classifier
from services.kernels.models import load_classifier
from services.kernels.store import ModelStore
from services.kernels.unlearning import (
    METHODS,
    Budget,
    Cancelled,
    Revision,
    Views,
    ideal_revision,
    method_options,
    open_views,
    unlearn,
)
from services.kernels.unlearning.core import Control
from services.kernels.unlearning.evaluate import auc, figures
from services.kernels.unlearning.methods import retrain
from services.kernels.unlearning.options import parse_options

BASE = "synthfaces://?n=600&seed=3&correlate=male:0.95,old:0.95"
TEST = "synthfaces://?n=500&seed=9"
ATTRS = ["male", "old"]
RES, WIDTH = 16, 8
QUICK = {"lr": "0.003", "ema_decay": "0.99"}


@pytest.fixture(scope="module")
def views() -> Views:
    torch.set_num_threads(1)
    revision = ideal_revision(BASE, ATTRS)
    return open_views(BASE, revision, RES, test_uri=TEST, holdout=0.2, cache_dir=None)


@pytest.fixture(scope="module")
def base(views: Views) -> Classifier:
    """A pose model trained on the correlated originals (retrain's loop on them)."""
    on_originals = dataclasses.replace(views, revised=views.original)
    fresh = build_classifier(ClassifierConfig(num_classes=3, resolution=RES, width=WIDTH))
    values = parse_options("retrain", QUICK)
    model, _ = retrain(fresh, on_originals, ATTRS, values, 200, Control(Budget()))
    return model


def _leak(fig, name: str) -> tuple[float, float]:
    row = next(x for x in fig.leakage if x.attribute == name)
    return row.probe_accuracy, row.chance_accuracy


def test_views_split_like_veil_train_and_name_the_forgotten(views: Views) -> None:
    assert len(views.original) == 480 and len(views.heldout_original) == 120
    assert len(views.revised) == 480  # held-out ids are dropped from the revised set
    assert views.revised_ids == views.original_ids
    assert len(views.forgotten) == 480
    assert torch.equal(views.revised.tasks, views.original.tasks)


def test_unknown_ids_are_not_found_naming_a_few() -> None:
    revision = Revision(BASE, removed_ids=("synth-3-000001", "nobody-1", "nobody-2"))
    with pytest.raises(NotFound) as err:
        open_views(BASE, revision, RES, test_uri=TEST, cache_dir=None)
    assert "nobody-1" in err.value.message and "2 removed ids" in err.value.message


def test_removed_samples_leave_the_revised_set() -> None:
    gone = ("synth-3-000001", "synth-3-000002")
    seen: list[tuple[str, float]] = []
    views = open_views(
        BASE, Revision(BASE, removed_ids=gone), RES, test_uri=TEST, cache_dir=None,
        progress=lambda phase, fraction: seen.append((phase, fraction)),
    )  # fmt: skip
    assert seen[0] == ("loading", 0.0) and seen[-1] == ("loading", 1.0)
    assert not set(gone) & set(views.revised_ids)
    assert len(views.forgotten) == 2 and len(views.revised) == len(views.original) - 2


def test_unknown_attribute_method_and_option_name_the_known_ones(views, base) -> None:
    with pytest.raises(InvalidArgument) as err:
        unlearn("feature", base, views, ["beard"], {}, Budget(steps=1))
    assert "smiling" in err.value.message and "beard" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        unlearn("magic", base, views, ATTRS, {}, Budget(steps=1))
    assert "feature" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        unlearn("feature", base, views, ATTRS, {"lrr": "1"}, Budget(steps=1))
    assert "fit_samples" in err.value.message
    with pytest.raises(InvalidArgument):
        unlearn("feature", base, views, ATTRS, {"steps": "many"}, Budget(steps=1))
    assert set(method_options("scrub")) >= {"seed", "alpha", "gamma", "max_fraction"}


def test_feature_erases_the_leak_and_keeps_the_task(views, base, tmp_path: Path) -> None:
    before = figures(base, views, ATTRS, 0.0)
    old, chance = _leak(before, "old")
    assert old > chance + 0.15  # the base model carries the attribute
    outcome = unlearn("feature", base, views, ATTRS, {}, Budget(steps=100))
    after_old, _ = _leak(outcome.figures, "old")
    after_male, male_chance = _leak(outcome.figures, "male")
    assert after_old < chance + 0.06 and after_male < male_chance + 0.08
    assert outcome.figures.task_accuracy > before.task_accuracy - 0.05
    assert outcome.details["steps"] == 100 and outcome.reference is None
    assert float(outcome.details["clipped_fraction"]) < 0.01
    # the same class and parameter names: the store writes and loads it like any classifier
    ModelStore(tmp_path).save(
        "unlearned", "classifier", outcome.model.state_dict(), outcome.model.config.to_dict()
    )
    loaded = load_classifier("unlearned", ModelStore(tmp_path))
    images = views.test.batch(torch.arange(8))
    with torch.no_grad():
        assert torch.allclose(loaded(images), outcome.model.eval()(images), atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reports_every_figure_and_is_deterministic(views, base, method) -> None:
    options = QUICK if method == "retrain" else {}
    phases: list[str] = []
    first = unlearn(
        method, base, views, ATTRS, options, Budget(steps=6), lambda p, f: phases.append(p)
    )
    again = unlearn(method, base, views, ATTRS, options, Budget(steps=6))
    fig = first.figures
    assert 0.0 <= fig.task_accuracy <= 1.0 and 0.0 <= fig.revised_task_accuracy <= 1.0
    assert [x.attribute for x in fig.leakage] == ATTRS
    assert 0.0 <= fig.membership_inference_auc <= 1.0 and fig.wall_seconds > 0
    assert first.method == method and first.details["stopped_early"] == "false"
    assert "evaluating" in phases and ({"training", "repairing"} & set(phases))
    state, other = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(state[k], other[k]) for k in state)
    assert fig == dataclasses.replace(again.figures, wall_seconds=fig.wall_seconds)
    if method != "retrain":  # the base is unchanged
        assert not torch.equal(base.head.weight, first.model.head.weight)


def test_retrain_reference_is_cached_per_revision(views, base, tmp_path, monkeypatch) -> None:
    budget = Budget(steps=8)
    first = unlearn("retrain", base, views, ATTRS, QUICK, budget, reference_cache=tmp_path)
    assert first.details["cache"] == "miss" and first.reference == first.figures

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the reference is cached")

    monkeypatch.setitem(unlearning._RUN, "retrain", no_training)
    hit = unlearn("retrain", base, views, ATTRS, QUICK, budget, reference_cache=tmp_path)
    assert hit.details["cache"] == "hit" and hit.figures == first.figures
    state, cached = first.model.state_dict(), hit.model.state_dict()
    assert all(torch.equal(state[k], cached[k]) for k in state)
    job = unlearn(
        "feature", base, views, ATTRS, {}, Budget(steps=5), reference_cache=tmp_path,
        reference_options=QUICK, reference_budget=budget,
    )  # fmt: skip
    assert job.reference == first.figures and job.details["reference_cache"] == "hit"
    with pytest.raises(AssertionError, match="retrained"):  # another seed is another key
        unlearn(
            "retrain", base, views, ATTRS, {**QUICK, "seed": "1"}, budget, reference_cache=tmp_path
        )


def test_cancel_stops_and_max_seconds_stops_early(views, base) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        unlearn("finetune", base, views, ATTRS, {}, Budget(steps=1000), should_stop=stop)
    assert len(calls) == 4
    capped = unlearn("scrub", base, views, ATTRS, {}, Budget(steps=100_000, max_seconds=0.5))
    assert capped.details["stopped_early"] == "true"
    assert 0 < int(capped.details["steps"]) < 100_000


def test_auc_by_ranks() -> None:
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])) == 0.5
    assert auc(torch.tensor([2.0]), torch.tensor([2.0])) == 0.5
