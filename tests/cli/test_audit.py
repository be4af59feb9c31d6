"""``veil audit`` as CI runs it: the real mechanism passes, every canary is flagged.

``--quick`` sizes (services.cli.audit.QUICK) are those at which ``python -m bench.audit``
measured every canary flagged with margin: the smallest bound of two runs of 3 at ε = 1 was
1.49 (halved noise), 2.37 (skipped clip), 4.91 (fixed seed) and 2.10 (x_T reused); the tests
ask for > 1.3. The real mechanism's covered bounds at these sizes stay below the claim (the
white-box one near 0.65–0.75, the black-box ones at 0).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from services.cli.audit import Measured, Plan, Report, Row, render
from services.kernels.audit import Bound


def veil_audit(*args: str) -> tuple[int, Any, str]:
    """(exit code, the JSON report or None, stderr) of ``veil audit --quick --json …``."""
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "audit", "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.stdout) if out.stdout.strip() else None
    return out.returncode, report, out.stderr


def bounds(report: Any) -> dict[str, float]:
    (row,) = report["rows"]
    return {t["test"]: t["epsilon_lower_bound"] for t in row["tests"]}


@pytest.mark.slow
def test_the_real_mechanism_passes_a_quick_audit() -> None:
    code, report, err = veil_audit()
    assert code == 0, err
    (row,) = report["rows"]
    assert row["claim"] == 1.0 and not row["flagged"] and not report["flagged"]
    tests = {t["test"]: t for t in row["tests"]}
    assert list(tests) == [
        "white-box batched", "white-box per release", "black-box keep", "black-box erase",
        "real faces keep", "real faces erase",
    ]  # fmt: skip
    for t in tests.values():
        assert t["confidence"] == 0.95 and t["seconds"] > 0
        assert t["covered"] == (not t["test"].startswith("real"))
        if t["covered"]:
            assert t["epsilon_lower_bound"] <= 1.0, t
    assert tests["white-box batched"]["epsilon_lower_bound"] > 0.4  # it does see the noise
    assert tests["white-box batched"]["samples"] == 1_000_000
    assert tests["black-box keep"]["samples"] == 128
    assert tests["black-box keep"]["ceiling"] == pytest.approx(2.102, abs=1e-3)
    assert report["plan"]["steps"] == 2 and report["plan"]["canary"] is None


@pytest.mark.slow
def test_reusing_the_inverted_x_t_is_flagged_by_the_black_box_test() -> None:
    code, report, err = veil_audit(
        "--canary", "reused_xt", "--no-real-faces", "--samples", "0", "--per-release-samples", "0"
    )
    assert code == 1, err
    assert report["flagged"] and report["plan"]["canary"] == "reused_xt"
    found = bounds(report)
    assert set(found) == {"black-box keep", "black-box erase"}
    assert min(found.values()) > 1.3, found


@pytest.mark.slow
@pytest.mark.parametrize(
    "canary,test",
    [
        ("halved_noise", "white-box batched"),
        ("skipped_clip", "white-box batched"),
        ("fixed_seed", "white-box per release"),
    ],
)
def test_every_white_box_canary_is_flagged(canary: str, test: str) -> None:
    code, report, err = veil_audit("--canary", canary, "--blackbox-samples", "0")
    assert code == 1, err
    assert bounds(report)[test] > 1.3, report


def test_bad_options_exit_2_with_a_message_before_any_release() -> None:
    code, _, err = veil_audit("--weight", "male")
    assert code == 2 and "expected attr=weight" in err
    code, _, err = veil_audit("--canary", "nonsense")
    assert code == 2 and "invalid choice" in err
    code, report, err = veil_audit("--weight", "nobody=2")
    assert code == 2 and report is None
    assert "veil audit: unknown attribute(s) 'nobody'" in err


def test_the_table_says_which_bound_is_above_its_claim() -> None:
    def bound(eps: float) -> Bound:
        return Bound(eps, 0.95, 100, 0.1, 0.2, 0.0, eps)

    rows = [
        Row(1.0, [Measured("white-box batched", True, bound(0.8), 1000, 1.0),
                  Measured("real faces keep", False, bound(1.7), 128, 2.0, 2.1)]),
        Row(2.0, [Measured("white-box batched", True, bound(2.5), 1000, 1.0)]),
    ]  # fmt: skip
    report = Report(Plan(epsilons=(1.0, 2.0)), rows, "face 0", 4.0)
    text = render(report)
    assert report.flagged and not rows[0].flagged and rows[1].flagged
    lines = text.splitlines()
    assert any("0.800" in line and line.endswith("ok") for line in lines)
    assert any("1.700" in line and line.endswith("not covered by the proof") for line in lines)
    assert any("2.500" in line and line.endswith("ABOVE CLAIM") for line in lines)
    assert lines[-1].startswith("FLAGGED")
    assert json.loads(json.dumps(report.to_json()))["rows"][1]["flagged"] is True
