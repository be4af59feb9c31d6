"""Model store: round trip, versions, sha256 refusal before deserialising, list/verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from services.common.errors import InvalidArgument, NotFound
from services.kernels.classifiers import ClassifierConfig, build_classifier
from services.kernels.models import load_classifier
from services.kernels.store import MANIFEST, WEIGHTS, ModelIntegrityError, ModelStore


def test_round_trip_writes_a_manifest_and_bumps_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    first = store.save("m1", "probes", tensors, {"attributes": ["a"]}, command="veil x", seed=3)
    manifest, loaded = store.load("m1")
    assert torch.equal(loaded["w"], tensors["w"])
    assert manifest == first and manifest.version == 1 and manifest.seed == 3
    on_disk = json.loads((tmp_path / "m1" / MANIFEST).read_text())
    assert {"name", "kind", "version", "config", "command", "seed", "data", "metrics"} <= set(
        on_disk
    )
    assert {"sha256", "created_at", "torch"} <= set(on_disk)
    assert store.save("m1", "probes", tensors, {}).version == 2
    assert [m.name for m in store.list()] == ["m1"]
    assert store.verify() == {"m1": "ok"}


def test_tampered_weights_are_refused_by_hash(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save("m", "probes", {"w": torch.ones(4)}, {})
    path = tmp_path / "m" / WEIGHTS
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match="do not match") as info:
        store.load("m")
    assert info.value.details["expected_sha256"] != info.value.details["actual_sha256"]
    assert store.verify("m") == {"m": "sha256 mismatch"}
    path.unlink()
    with pytest.raises(ModelIntegrityError, match="no weights"):
        store.load("m")


def test_missing_bad_names_and_wrong_kind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(NotFound):
        store.load("absent")
    with pytest.raises(InvalidArgument):
        store.path("../escape")
    store.save("p", "probes", {"w": torch.ones(1)}, {})
    with pytest.raises(InvalidArgument, match="not a classifier"):
        store.load("p", kind="classifier")


def test_classifier_loads_back_identical(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    config = ClassifierConfig(arch="vgg", resolution=16, width=8)
    model = build_classifier(config).eval()
    store.save("clf", "classifier", model.state_dict(), config.to_dict())
    again = load_classifier("clf", store)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(again(x), model(x))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    model = build_classifier(ClassifierConfig(resolution=16, width=8))
    store.save("clf", "classifier", model.state_dict(), ClassifierConfig(width=16).to_dict())
    with pytest.raises(ModelIntegrityError, match="do not fit its config"):
        load_classifier("clf", store)
