"""Rendering ``triton_models/`` variants: the GPU one differs from the committed CPU one in
the instance groups only; parameters and batching are rewritten exactly where asked, and
a config without what the rendering rewrites is an error, never a silent copy; a rendered
model runs the package that rendered it, whatever its stub's interpreter has installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.serving.contract import CLASSIFIER, DECODER, MODELS
from services.triton.repository import RenderError, main, render, render_config
from services.triton.server import TritonServer, server_environment
from services.triton.settings import IMPORT_ROOT, REPO_ROOT
from tests.support.triton import free_port_settings, tiny_store

SOURCE = REPO_ROOT / "triton_models"
KINDS = model_config_pb2.ModelInstanceGroup


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_gpu_variant_changes_only_the_instance_groups(tmp_path: Path) -> None:
    target = render(SOURCE, tmp_path / "gpu", kind="gpu")
    assert {p.parent.name for p in target.glob("*/config.pbtxt")} == set(MODELS)
    for name in MODELS:
        original, gpu = parse(SOURCE / name / "config.pbtxt"), parse(target / name / "config.pbtxt")
        assert [(g.kind, g.count) for g in gpu.instance_group] == [(KINDS.KIND_GPU, 1)]
        del original.instance_group[:]
        del gpu.instance_group[:]
        assert original.parameters["package_root"].string_value == ""
        assert gpu.parameters["package_root"].string_value == str(IMPORT_ROOT)
        original.parameters["package_root"].string_value = str(IMPORT_ROOT)
        assert gpu == original, name
        model_py = (target / name / "1" / "model.py").read_text()
        assert model_py == (SOURCE / name / "1" / "model.py").read_text()


def test_parameters_batching_and_subset(tmp_path: Path) -> None:
    target = render(
        SOURCE,
        tmp_path / "out",
        count=2,
        parameters={"store": "/opt/store", "threads": "3"},
        queue_delay_us=500,
        models=[CLASSIFIER],
    )
    assert [p.name for p in target.iterdir() if p.is_dir()] == [CLASSIFIER]
    config = parse(target / CLASSIFIER / "config.pbtxt")
    assert [(g.kind, g.count) for g in config.instance_group] == [(KINDS.KIND_CPU, 2)]
    assert config.parameters["store"].string_value == "/opt/store"
    assert config.parameters["threads"].string_value == "3"
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    unbatched = render(SOURCE, tmp_path / "plain", batching=False, models=[DECODER])
    assert not parse(unbatched / DECODER / "config.pbtxt").HasField("dynamic_batching")


def test_what_cannot_be_rendered_is_refused(tmp_path: Path) -> None:
    config = (SOURCE / CLASSIFIER / "config.pbtxt").read_text()
    with pytest.raises(RenderError, match="parameter 'nope'"):
        render_config(config, Path("x"), parameters={"nope": "1"})
    with pytest.raises(RenderError, match="instance_group"):
        render_config(config.replace("instance_group", "# no group"), Path("x"), kind="gpu")
    with pytest.raises(RenderError, match="no model"):
        render(SOURCE, tmp_path / "a", models=["veil_missing"])
    render(SOURCE, tmp_path / "b", models=[CLASSIFIER])
    with pytest.raises(FileExistsError):
        render(SOURCE, tmp_path / "b")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(SOURCE), str(tmp_path / "gpu"), "--kind", "gpu", "--store", "/opt/veil/store"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "gpu")
    config = parse(tmp_path / "gpu" / DECODER / "config.pbtxt")
    assert config.instance_group[0].kind == KINDS.KIND_GPU
    assert config.parameters["store"].string_value == "/opt/veil/store"
    assert main(args) == 2  # the target exists: refused, nothing overwritten


@pytest.mark.triton
@pytest.mark.slow
def test_a_rendered_model_runs_the_package_it_names(tmp_path: Path) -> None:
    """The python backend's stub does not read the server's ``PYTHONPATH``: without
    ``package_root`` a model imported whatever ``services`` the venv had installed. Here the
    server's ``PYTHONPATH`` and this venv name the checkout; the repository names a copy of
    the package, and the copy is what the model runs."""
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")
    other = tmp_path / "other"
    shutil.copytree(
        REPO_ROOT / "services", other / "services", ignore=shutil.ignore_patterns("__pycache__")
    )
    store = tiny_store(tmp_path / "store")
    parameters = {"store": str(store), "package_root": str(other)}
    repository = render(SOURCE, tmp_path / "repo", parameters=parameters, models=[CLASSIFIER])
    assert server_environment()["PYTHONPATH"].split(":")[0] == str(IMPORT_ROOT)
    with TritonServer(free_port_settings(repository, startup_timeout_s=60.0)) as server:
        log = server.log_tail(400)
    module = other / "services" / "serving" / "triton_model.py"
    assert f"{CLASSIFIER} v1: services.serving.triton_model from {module}" in log, log
