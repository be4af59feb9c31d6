"""The wheel holds what an installed Veil needs (the Triton model repository, the contracts,
the default weights) under one import name, ``veil``: installed in a clean venv and run
from outside the checkout, it imports as ``veil.services`` only (no top-level ``services``
or ``proto`` to collide with), ``veil triton``'s repository renders with its models naming
that install, the demo's imports work without the optional ``data`` extra, and
``veil demo --quick`` runs the whole journey. The mapping itself (``buildsys/veil_backend.py``)
is checked on sources here too."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from services.triton.server import free_port

ROOT = Path(__file__).resolve().parents[1]


def backend() -> ModuleType:
    path = ROOT / "buildsys" / "veil_backend.py"
    spec = importlib.util.spec_from_file_location("veil_backend", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mapping_prefixes_imports_and_module_strings() -> None:
    source = (
        "from services.cli.registry import SERVICES\n"
        "    from services import kernels\n"
        'run = [python, "-m", "services.cli", "up"]\n'
        'stub = f"services._proto.veil.v1.{name}"\n'
        "# services.cli and ``services.kernels`` in prose stay as they are\n"
        "from servicesx import y\n"
    )
    assert backend().map_source(source, "x.py") == (
        "from veil.services.cli.registry import SERVICES\n"
        "    from veil.services import kernels\n"
        'run = [python, "-m", "veil.services.cli", "up"]\n'
        'stub = f"veil.services._proto.veil.v1.{name}"\n'
        "# services.cli and ``services.kernels`` in prose stay as they are\n"
        "from servicesx import y\n"
    )
    mapping = backend()
    with pytest.raises(mapping.MappingError, match="cannot be mapped"):
        mapping.map_source("import services.cli\n", "x.py")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    """The clean venv's interpreter."""
    site: Path
    """Its site-packages, where the wheel went."""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, built from a copy of the sources, installed (``--no-deps``) in a venv made
    here. Its dependencies come from this venv's site-packages through a ``.pth`` line;
    this venv's editable Veil does not come along (its finder is activated by a ``.pth``
    file of this venv, which a path added by a ``.pth`` line never reads)."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # pip builds in tree: keep the checkout clean
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, source / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("services", "triton_models", "proto", "buildsys"):
        shutil.copytree(ROOT / name, source / name, ignore=junk)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, str(source), "-w", str(out)], check=True, cwd=out, timeout=600)
    wheel = next(out.glob("veil-*.whl"))
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "veil-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
    subprocess.run([*install, str(wheel)], check=True, cwd=out, timeout=600)
    return Installed(wheel, python, site)


def outside_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.pop("PYTHONPATH", None)
    return env


def run_outside(installed: Installed, code: str, cwd: Path) -> str:
    """Run ``code`` in the clean venv from a directory that is not the checkout; returns
    stdout."""
    out = subprocess.run(
        [str(installed.python), "-c", code],
        cwd=cwd,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_the_wheel_holds_models_contracts_and_weights_under_veil(installed: Installed) -> None:
    wheel = zipfile.ZipFile(installed.wheel)
    names = set(wheel.namelist())
    for model in ("veil_encoder", "veil_decoder", "veil_classifier", "veil_protect"):
        assert f"veil/triton_models/{model}/config.pbtxt" in names
        assert f"veil/triton_models/{model}/1/model.py" in names
    for contract in ("accountant", "common", "diagnostics", "sanitizer", "protection"):
        assert f"veil/proto/veil/v1/{contract}.proto" in names
    assert "veil/services/kernels/weights/diffae/weights.safetensors" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"veil", "veil-0.1.0.dist-info"}, tops
    info = "veil-0.1.0.dist-info"
    assert "veil = veil.services.cli.main:main" in wheel.read(f"{info}/entry_points.txt").decode()
    model = wheel.read("veil/triton_models/veil_classifier/1/model.py").decode()
    assert 'IMPLEMENTATION = "veil.services.serving.triton_model"' in model


@pytest.mark.slow
def test_installed_triton_repository_renders(installed: Installed, tmp_path: Path) -> None:
    site = installed.site
    code = f"""
import importlib.util
import veil.services
from veil.services.triton.settings import IMPORT_ROOT, TritonSettings
from veil.services.triton.repository import main
assert importlib.util.find_spec("services") is None, "a top-level `services` is installed"
assert importlib.util.find_spec("proto") is None, "a top-level `proto` is installed"
repo = TritonSettings().model_repository
assert veil.services.__file__.startswith({str(site)!r}), veil.services.__file__
assert repo == __import__("pathlib").Path({str(site)!r}) / "veil" / "triton_models", repo
assert str(IMPORT_ROOT) == {str(site)!r}, IMPORT_ROOT
assert main([str(repo), {str(tmp_path / "gpu")!r}, "--kind", "gpu"]) in (0, None)
print("rendered")
"""
    assert "rendered" in run_outside(installed, code, tmp_path)
    config = (tmp_path / "gpu" / "veil_encoder" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config
    assert f'key: "package_root" value: {{ string_value: "{site}" }}' in config


@pytest.mark.slow
def test_installed_demo_imports_without_the_data_extra(
    installed: Installed, tmp_path: Path
) -> None:
    code = f"""
import sys
sys.modules["skimage"] = None  # as if the optional `data` extra were not installed
import veil.services
from veil.services.cli.demo import demo_image
from veil.services.common.imaging import decode_image
assert veil.services.__file__.startswith({str(installed.site)!r}), veil.services.__file__
image = decode_image(demo_image())
print(image.width, image.height)
"""
    assert run_outside(installed, code, tmp_path).split() == ["256", "256"]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.triton
def test_installed_veil_demo_quick_runs_from_outside_the_checkout(
    installed: Installed, tmp_path: Path
) -> None:
    """The installed ``veil`` script, from an empty directory, with no ``VEIL_*`` setting
    but free ports, databases and a data directory: the stack (Triton included) starts, the
    whole journey of ``make demo`` runs (smaller steps), the stack stops. The README's demo
    command is this one with full sizes."""
    env = outside_env()
    for service in ("ACCOUNTANT", "SANITIZER", "PROTECTION", "UNLEARNING"):
        env[f"VEIL_{service}_PORT"] = str(free_port())
        env[f"VEIL_{service}_METRICS_PORT"] = str(free_port())
    for port in ("GRPC", "HTTP", "METRICS"):
        env[f"VEIL_TRITON_{port}_PORT"] = "0"
    env["VEIL_DATA_DIR"] = str(tmp_path / "data")
    env["VEIL_DEMO_OUT"] = str(tmp_path / "out")
    for name in ("ACCOUNTANT", "SANITIZER", "UNLEARNING"):
        env[f"VEIL_{name}_DATABASE_URL"] = f"sqlite:///{tmp_path}/{name.lower()}.sqlite"
    veil = installed.python.parent / "veil"
    out = subprocess.run(
        [str(veil), "demo", "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "veil.services." in out.stderr, "the installed package's loggers"
    assert "WhoAmI          tenant=demo service=accountant" in out.stdout
    assert "bad image       INVALID_ARGUMENT" in out.stdout
    assert "RESOURCE_EXHAUSTED: charge exceeds the subject budget" in out.stdout
    assert "CreatePreview   FAILED_PRECONDITION: the face lies outside" in out.stdout
    assert "CreatePreview   allow_out_of_domain: score " in out.stdout
    assert "CreatePreview   face at" in out.stdout
    assert "Release         ε=2.000" in out.stdout
    assert "Ledger          alice: 1 charge" in out.stdout
    assert "RESOURCE_EXHAUSTED: the accountant:" in out.stdout
    assert out.stdout.count("SanitizeBatch   lfw-") == 2
    assert out.stdout.count(": OUT_OF_DOMAIN (score ") == 2
    assert out.stdout.count("SanitizeBatch   synth-") == 2
    assert out.stdout.count("charged (") == 2
    assert (tmp_path / "out" / "released.png").is_file()
    for mode in ("FMD ", "FAST"):
        assert f"ProtectBatch    {mode} 6 faces" in out.stdout
        assert f"Evaluate        {mode} authorized 1.00 → " in out.stdout
    assert "20 steps" in out.stdout, "--quick: FMD at 20 steps"
    assert "unauth-mixer 1.00 → " in out.stdout
    assert "SubmitJob       " in out.stdout
    assert "WatchJob        SUCCEEDED" in out.stdout
    assert "GetModelVersion veil_classifier v2 READY (feature of v1)" in out.stdout
    assert "retraining cut to 5 steps" in out.stdout
    assert "stack stopped (exit 0)" in out.stdout
