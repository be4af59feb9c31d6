"""The server process imports what it computes with, no more: dp_accounting's RDP without
its package ``__init__`` (the PLD modules, scipy.stats and scipy.signal stay out until a
tight figure needs them), and the whole package still there for anyone who asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_server_module_loads_no_pld_and_no_scipy_stats() -> None:
    out = _run(
        "import sys, services.accountant.app\n"
        "heavy = ('dp_accounting.pld', 'dp_accounting.mechanism_calibration', 'scipy.stats',"
        " 'scipy.signal', 'scipy.optimize')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from services.accountant.accounting import gaussian_rdp\n"
        "print(float(gaussian_rdp(1.0, 0.01)[10]) > 0)\n"  # subsampled RDP: no import needed
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert out.split("\n")[:3] == ["[]", "True", "[]"]


def test_tight_figures_and_the_whole_package_load_on_first_use() -> None:
    out = _run(
        "import sys\n"
        "from services.accountant import tight\n"
        "print(round(tight.pld_epsilon([(('laplace', 1.0), 3)], 1e-5), 2))\n"
        "print('dp_accounting.pld' in sys.modules)\n"
        "import dp_accounting\n"
        "print(dp_accounting.get_epsilon_gaussian(1.0, 1e-5) > 4)\n"  # the real __init__
        "print(dp_accounting.PoissonSampledDpEvent.__name__, dp_accounting.rdp.RdpAccountant)\n"
    )
    lines = out.split("\n")
    assert lines[0] == "3.0" and lines[1] == "True" and lines[2] == "True"
    assert lines[3].startswith("PoissonSampledDpEvent <class")
