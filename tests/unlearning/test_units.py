"""The service's small contracts with its neighbours: the version → store entry rule shared
with the serving side, the methods of the kernels, the proto's enum, the publisher's
atomic writes, the settings' environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services._proto.veil.v1 import unlearning_pb2 as pb
from services.common.errors import FailedPrecondition, NotFound
from services.kernels import unlearning as kernels
from services.serving.entries import version_entry as serving_entry
from services.unlearning import converters, training
from services.unlearning.publishing import Publisher, Weights, version_entry


@pytest.mark.parametrize("version", [0, 1, 2, 3, 17])
def test_version_entries_follow_the_serving_rule(version: int) -> None:
    assert version_entry("task-resnet", version) == serving_entry("task-resnet", version)


def test_the_methods_are_the_kernels_and_the_protos() -> None:
    assert training.METHODS == kernels.METHODS
    assert set(converters.METHOD_NAMES.values()) == set(kernels.METHODS)
    named = {v.name for v in pb.UnlearningMethod.DESCRIPTOR.values}
    assert "UNLEARNING_METHOD_SCRUB" in named and len(named) == len(kernels.METHODS) + 1


def test_publish_writes_whole_directories(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    (repository / "veil_classifier" / "1").mkdir(parents=True)
    (repository / "veil_classifier" / "1" / "model.py").write_text("# the model\n")
    publisher = Publisher(tmp_path / "store", "task-resnet", "veil_classifier", repository)
    with pytest.raises(NotFound):
        publisher.manifest(2)
    weights = Weights(b"blob", {"width": 8}, {"uri": "x"}, {"task_accuracy": 0.5}, {"p": 1})
    publisher.publish("job1", 2, weights)
    manifest = json.loads((tmp_path / "store" / "task-resnet-v2" / "manifest.json").read_text())
    assert manifest["unlearning"] == {"p": 1} and manifest["config"] == {"width": 8}
    assert publisher.blob(2) == b"blob"
    assert (repository / "veil_classifier" / "2" / "model.py").read_text() == "# the model\n"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["task-resnet-v2"]
    with pytest.raises(FailedPrecondition, match="exists already"):  # published once
        publisher.publish("job2", 2, weights)
    assert publisher.blob(2) == b"blob"  # and the refusal left version 2 alone
    publisher.remove(2)
    publisher.sweep("job2")
    assert list((tmp_path / "store").iterdir()) == []
    assert sorted(p.name for p in (repository / "veil_classifier").iterdir()) == ["1"]


def test_settings_read_their_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from services.cli.registry import SERVICES

    monkeypatch.setenv("VEIL_UNLEARNING_MAX_STEPS", "77")
    monkeypatch.setenv("VEIL_UNLEARNING_DATABASE_URL", f"sqlite:///{tmp_path}/u.sqlite")
    entry = SERVICES["unlearning"]
    settings = entry.settings()
    assert settings.max_steps == 77 and settings.port == 50055 and settings.metrics_port == 9465
    assert entry.inference
    monkeypatch.setenv("VEIL_UNLEARNING_DATABASE_URL", "sqlite:///relative.sqlite")
    with pytest.raises(ValueError, match="relative"):
        entry.settings()


def test_veil_up_gives_unlearning_a_store_and_repository_outside_the_tree(tmp_path: Path) -> None:
    from services.cli.up import unlearning_models

    store, repository = unlearning_models(tmp_path)
    assert (store / "task-resnet" / "manifest.json").is_file()
    config = (repository / "veil_classifier" / "config.pbtxt").read_text()
    assert f'string_value: "{store}"' in config
    (repository / "veil_classifier" / "2").mkdir()  # a published version survives a rerun
    assert unlearning_models(tmp_path) == (store, repository)
    assert (repository / "veil_classifier" / "2").is_dir()
