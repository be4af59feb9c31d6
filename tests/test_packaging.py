"""The wheel holds what an installed Veil needs: the Triton model repository, the contracts,
the default weights; installed outside the checkout, `veil triton`'s repository renders and
the demo's imports work without the optional ``data`` extra."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, a directory it is installed into with ``pip --target``)."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source")  # pip builds in tree: keep the checkout clean
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("services", "triton_models", "proto"):
        shutil.copytree(ROOT / name, source / name, ignore=junk)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, str(source), "-w", str(out)], check=True, cwd=out, timeout=600)
    wheel = next(out.glob("veil-*.whl"))
    site = tmp_path_factory.mktemp("site")
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    subprocess.run([*install, str(wheel)], check=True, cwd=out, timeout=600)
    return wheel, site


def run_outside(site: Path, code: str, cwd: Path) -> str:
    """Run ``code`` with the installed copy first on the path, from a directory that is not
    the checkout; returns stdout."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("VEIL_MODEL_STORE", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_wheel_holds_models_contracts_and_weights(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("veil_encoder", "veil_decoder", "veil_classifier", "veil_protect"):
        assert f"triton_models/{model}/config.pbtxt" in names
        assert f"triton_models/{model}/1/model.py" in names
    for contract in ("accountant", "common", "diagnostics", "sanitizer", "protection"):
        assert f"proto/veil/v1/{contract}.proto" in names
    assert "services/kernels/weights/diffae/weights.safetensors" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_triton_repository_renders(installed: tuple[Path, Path], tmp_path: Path) -> None:
    _, site = installed
    code = f"""
import services
from services.triton.settings import TritonSettings
from services.triton.repository import main
repo = TritonSettings().model_repository
assert services.__file__.startswith({str(site)!r}), services.__file__
assert repo == __import__("pathlib").Path({str(site)!r}) / "triton_models", repo
assert main([str(repo), {str(tmp_path / "gpu")!r}, "--kind", "gpu"]) in (0, None)
print("rendered")
"""
    assert "rendered" in run_outside(site, code, tmp_path)
    config = (tmp_path / "gpu" / "veil_encoder" / "config.pbtxt").read_text()
    assert "KIND_GPU" in config


def test_installed_demo_imports_without_the_data_extra(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, site = installed
    code = f"""
import sys
sys.modules["skimage"] = None  # as if the optional `data` extra were not installed
import services
from services.cli.demo import demo_image
from services.common.imaging import decode_image
assert services.__file__.startswith({str(site)!r}), services.__file__
image = decode_image(demo_image())
print(image.width, image.height)
"""
    assert run_outside(site, code, tmp_path).split() == ["256", "256"]
