"""The default weights committed under ``services/kernels/weights``: each verifies by
sha256, loads, and a classifier reproduces its recorded held-out accuracy on fresh data."""

from __future__ import annotations

import pytest

from services.kernels.models import load_classifier
from services.kernels.store import ModelStore
from services.kernels.training.classifier import accuracy, labels_for
from services.kernels.training.data import load_table

STORE = ModelStore()
MANIFESTS = STORE.list()
FRESH = "synthfaces://?n=600&seed=7"  # a seed no default model was trained on


def test_defaults_are_committed():
    assert {"task-resnet"} <= {m.name for m in MANIFESTS}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda m: m.name)
def test_each_default_verifies_and_records_how_it_was_made(manifest):
    assert STORE.verify(manifest.name) == {manifest.name: "ok"}
    assert manifest.command.startswith("veil train ") and "--seed" in manifest.command
    assert manifest.metrics, "a default model must record its metrics"


@pytest.mark.slow
@pytest.mark.parametrize(
    "manifest", [m for m in MANIFESTS if m.kind == "classifier"], ids=lambda m: m.name
)
def test_classifier_meets_its_recorded_accuracy(manifest):
    model = load_classifier(manifest.name).eval()
    table = load_table(FRESH, manifest.config["resolution"], cache_dir=None)
    from services.kernels.classifiers import ClassifierConfig

    labels = labels_for(table, ClassifierConfig(**manifest.config))
    recorded = manifest.metrics["held-out accuracy"]
    assert accuracy(model, table, labels) >= recorded - 0.03
