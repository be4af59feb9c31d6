"""Fixtures for tests of the tritonserver lifecycle: a module-scoped server on free ports
over a tiny repository (``add_sub`` and ``venv_check``); helpers in ``tests/support/triton.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")

from services.triton.server import TritonServer
from tests.support.triton import (
    VENV_CHECK_CONFIG,
    VENV_CHECK_MODEL,
    add_sub_repository,
    free_port_settings,
    processes_mentioning,
    write_model,
)


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``add_sub`` and ``venv_check`` (imports torch and ``services`` inside the stub)."""
    root = add_sub_repository(tmp_path_factory.mktemp("models"))
    write_model(root, "venv_check", VENV_CHECK_CONFIG, VENV_CHECK_MODEL)
    return root


@pytest.fixture(scope="module")
def triton(model_repository: Path) -> Iterator[TritonServer]:
    """One real tritonserver on free loopback ports for the whole module."""
    server = TritonServer(free_port_settings(model_repository))
    with server:
        yield server
    assert processes_mentioning(str(model_repository)) == []
