"""Every ``triton_models/*/config.pbtxt`` parses and says what ``services.inference.backend``
sends: names, dtypes, dims, batch limits; python backend, instance groups, dynamic batching."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.serving.contract import CLASSIFIER, MODELS, PROTECT, TensorSpec
from services.triton.settings import REPO_ROOT

REPOSITORY = REPO_ROOT / "triton_models"


def load(name: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(
        (REPOSITORY / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )


def as_specs(tensors) -> list[TensorSpec]:
    kinds = model_config_pb2.DataType
    return [
        TensorSpec(
            t.name,
            kinds.Name(t.data_type).removeprefix("TYPE_"),
            tuple(t.dims),
            optional=t.optional if hasattr(t, "optional") else False,  # outputs have none
        )
        for t in tensors
    ]


def test_the_repository_holds_exactly_the_contracted_models() -> None:
    on_disk = {p.parent.name for p in REPOSITORY.glob("*/config.pbtxt")}
    assert on_disk == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_matches_the_contract(name: str) -> None:
    config, spec = load(name), MODELS[name]
    assert config.name == name
    assert config.backend == "python"
    assert config.max_batch_size == spec.max_batch_size
    assert as_specs(config.input) == list(spec.inputs)
    assert as_specs(config.output) == list(spec.outputs)
    assert config.HasField("dynamic_batching")
    assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 100_000
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert all(g.count >= 1 for g in config.instance_group)
    # The tenants' versions of the classifier (and FMD against each) all stay loaded.
    kept = "all" if name in (CLASSIFIER, PROTECT) else "latest"
    assert config.version_policy.HasField(kept)
    assert (REPOSITORY / name / "1" / "model.py").is_file()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weights_come_from_the_store(name: str) -> None:
    parameters = load(name).parameters
    assert "store" in parameters and parameters["store"].string_value == ""
    assert parameters["model_name"].string_value in ("diffae", "task-resnet", "protector")


def test_only_the_time_budget_and_robustness_are_optional() -> None:
    """Clients of this package always send them; an older client that does not still gets
    an answer (no limit, robustness ``none``: what it got before they existed)."""
    optional = [(n, t.name) for n, m in MODELS.items() for t in m.inputs if t.optional]
    assert optional == [(PROTECT, "TIME_BUDGET_S"), (PROTECT, "ROBUSTNESS")]
    assert [t.name for t in load(PROTECT).input if t.optional] == ["TIME_BUDGET_S", "ROBUSTNESS"]


def test_every_tenants_version_stays_loaded() -> None:
    """One tenant's publish must not unload another's version (per-tenant registry)."""
    assert load(CLASSIFIER).version_policy.HasField("all")
    assert load(PROTECT).version_policy.HasField("all")


def test_model_files_follow_add_sub() -> None:
    shared = Path(__file__).resolve().parents[2] / "services" / "serving" / "triton_model.py"
    text = shared.read_text()
    for part in ("class TritonPythonModel", "def initialize", "def execute", "def finalize"):
        assert part in text, f"{shared}: {part}"
    assert "TritonError" in text
    models = sorted(REPOSITORY.glob("*/1/model.py"))
    assert len(models) == len(MODELS)
    shims = set()
    for model in models:
        source = model.read_text()
        assert 'IMPLEMENTATION = "services.serving.triton_model"' in source, model
        assert "from services" not in source, f"{model}: imports Veil before its package_root"
        shims.add(source[source.index("\nimport importlib") :])
    assert len(shims) == 1, "the model files differ in more than their docstrings"
