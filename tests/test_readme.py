"""The README's promises, executed: its gRPC examples against real services (its demo command
runs installed, in a clean venv: tests/test_packaging.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from services.cli.registry import SERVICES
from tests.support.server import serve, test_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def ci_blocks(kind: str) -> list[str]:
    """Python blocks that the README marks with ``<!-- ci: run <kind>: ... -->``."""
    text = README.read_text()
    pattern = rf"<!-- ci: run {kind}:[^>]*-->\s*```python\n(.*?)```"
    return re.findall(pattern, text, flags=re.S)


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert "```bash\nmake demo\n```" in text
    assert "```bash\nmake test\n```" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert ci.rstrip().endswith("make test"), ".ci/run must end by running the README's command"


def test_readme_grpc_example_runs_against_a_real_accountant(tmp_path):
    blocks = ci_blocks("accountant")
    assert blocks, "the README lost its runnable example"
    entry = SERVICES["accountant"]
    settings = entry.settings(
        **test_settings(tokens={"readme-token": {"tenant": "acme"}}).model_dump(),
        database_url=f"sqlite:///{tmp_path}/ledger.sqlite",
    )
    with serve(entry.build(settings)) as running:
        env = dict(os.environ, VEIL_TARGET=running.target, VEIL_TOKEN="readme-token")
        for block in blocks:
            out = subprocess.run(
                [sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=60
            )
            assert out.returncode == 0, out.stderr
            assert "tenant=acme service=accountant" in out.stdout
            assert "alice has ε=" in out.stdout


def test_readme_sanitizer_example_runs_against_real_servers(tmp_path):
    blocks = ci_blocks("sanitizer")
    assert blocks, "the README lost its sanitizer example"
    grants = {
        "readme-token": {"tenant": "acme"},
        "readme-service": {"tenant": "veil", "scopes": ["accountant:*"], "delegate": True},
    }
    accountant = SERVICES["accountant"]
    sanitizer = SERVICES["sanitizer"]
    with serve(
        accountant.build(
            accountant.settings(
                **test_settings(tokens=grants).model_dump(),
                database_url=f"sqlite:///{tmp_path}/ledger.sqlite",
            )
        )
    ) as ledger:
        settings = sanitizer.settings(
            **test_settings(tokens={"readme-token": {"tenant": "acme"}}).model_dump(),
            database_url=f"sqlite:///{tmp_path}/sessions.sqlite",
            accountant_url=ledger.target,
            accountant_token="readme-service",
            default_ddim_steps=2,
        )
        with serve(sanitizer.build(settings)) as running:
            env = dict(
                os.environ,
                VEIL_ACCOUNTANT=ledger.target,
                VEIL_SANITIZER=running.target,
                VEIL_TOKEN="readme-token",
            )
            for block in blocks:
                out = subprocess.run(
                    [sys.executable, "-c", block],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert out.returncode == 0, out.stderr
                assert "charged ε=2.00" in out.stdout
                assert "  male: ε=" in out.stdout


def test_readme_unlearning_example_runs_against_a_real_service(tmp_path):
    from services.unlearning.app import build_app
    from tests.unlearning.conftest import settings, tiny_store

    blocks = ci_blocks("unlearning")
    assert blocks, "the README lost its unlearning example"
    store = tiny_store(tmp_path / "store")
    config = settings(tmp_path, store, tokens={"readme-token": {"tenant": "acme"}})
    with serve(build_app(config)) as running:
        env = dict(
            os.environ,
            VEIL_UNLEARNING=running.target,
            VEIL_TOKEN="readme-token",
        )
        for block in blocks:
            out = subprocess.run(
                [sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=120
            )
            assert out.returncode == 0, out.stderr
            assert "JOB_STATE_SUCCEEDED" in out.stdout
            assert "serving veil_classifier v2 (feature of v1)" in out.stdout
            assert "rolled back: v3 serves v1's weights" in out.stdout


def test_readme_protection_example_runs_against_a_real_service():
    """The protection example against a real server on the committed models (local
    backend): every face keeps its label, and the unauthorized models are reported."""
    blocks = ci_blocks("protection")
    assert blocks, "the README lost its protection example"
    protection = SERVICES["protection"]
    base = test_settings(tokens={"readme-token": {"tenant": "acme"}}).model_dump()
    base.pop("metrics_port")
    with serve(protection.build(protection.settings(**base, metrics_port=None))) as running:
        env = dict(os.environ, VEIL_PROTECTION=running.target, VEIL_TOKEN="readme-token")
        for block in blocks:
            out = subprocess.run(
                [sys.executable, "-c", block], env=env, capture_output=True, text=True, timeout=300
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.count("kept=True") == 4, out.stdout
            assert "authorized 1.00 -> 1.00" in out.stdout
            for name in ("unauth-vgg", "unauth-wide-resnet", "unauth-mixer"):
                assert f"{name} " in out.stdout
