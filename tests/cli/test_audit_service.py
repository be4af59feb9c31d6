"""``veil audit --service`` as CI runs it: the real sanitizer passes every check over gRPC,
each canary (a sanitizer broken on purpose, built by the audit itself) is flagged by its
check, and servers that the audit did not start are audited on a dataset of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc
from services.cli.audit_service import Finding, ServicePlan, ServiceReport, render
from services.runtime.client import wait_until_ready
from services.runtime.settings import TokenGrant
from tests.support.server import ServerThread, bearer

CHECKS = [
    "seeded candidates",
    "retries charge once",
    "receipts match the ledger",
    "fresh noise",
    "batch charges before work",
]
TENANT, OTHER, NO_BUDGET, DELEGATE = "audit-acme", "audit-globex", "audit-initech", "audit-svc"
TOKENS = {
    TENANT: TokenGrant(tenant="acme", scopes=["*"]),
    OTHER: TokenGrant(tenant="globex", scopes=["*"]),
    NO_BUDGET: TokenGrant(tenant="initech", scopes=["*"]),
    DELEGATE: TokenGrant(tenant="veil", scopes=["accountant:*"], delegate=True),
}


def veil_audit(*args: str) -> tuple[int, Any, str]:
    """(exit code, the JSON report or None, stderr) of ``veil audit --service --quick
    --json …``."""
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "audit", "--service", "--quick", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.stdout) if out.stdout.strip() else None
    return out.returncode, report, out.stderr


def verdicts(report: Any) -> dict[str, str]:
    return {c["check"]: c["verdict"] for c in report["checks"]}


def passed(report: Any) -> None:
    """Every check passed, with the facts the detail states."""
    assert [c["check"] for c in report["checks"]] == CHECKS
    flagged = [(c["check"], c["detail"]) for c in report["checks"] if c["flagged"]]
    assert not flagged and set(verdicts(report).values()) == {"pass"}, flagged
    assert not report["flagged"]
    detail = {c["check"]: c["detail"] for c in report["checks"]}
    assert "2/2 candidate releases FAILED_PRECONDITION" in detail["seeded candidates"]
    assert "concurrent: 4/4 answers, 1 event (1 keyed)" in detail["retries charge once"]
    assert "2 released, 2 RESOURCE_EXHAUSTED" in detail["batch charges before work"]


@pytest.mark.slow
def test_the_real_service_passes_on_its_own_servers() -> None:
    code, report, err = veil_audit()
    assert report is not None, err
    passed(report)
    assert code == 0, err
    assert report["mode"] == "service" and report["plan"]["canary"] is None
    assert report["plan"]["steps"] == 2 and report["plan"]["threads"] == 4
    assert "own accountant and sanitizer" in report["where"]
    assert "2 images generated" in report["checks"][-1]["detail"]
    assert "token" not in report["plan"] and "accountant_token" not in report["plan"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "canary,check,says",
    [
        ("seeded_release", "seeded candidates", "reproducible from the caller's seed"),
        ("double_charge", "retries charge once", "ledger events for one key"),
    ],
)
def test_every_canary_is_flagged_by_its_check(canary: str, check: str, says: str) -> None:
    code, report, err = veil_audit("--canary", canary)
    assert code == 1, err
    assert report["flagged"] and report["plan"]["canary"] == canary
    (row,) = [c for c in report["checks"] if c["check"] == check]
    assert row["verdict"] == "FLAGGED" and row["flagged"], row
    assert says in row["detail"], row


# -- servers the audit did not start --------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An accountant (tenant acme with a budget of its own, one real dataset) and a
    sanitizer charging it: (sanitizer, accountant) targets."""
    from services.accountant.app import Settings as AccountantSettings
    from services.accountant.app import build_app as accountant_app
    from services.sanitizer.app import Settings, build_app

    tmp = tmp_path_factory.mktemp("audit-service")
    common: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": None}
    accountant = ServerThread(
        accountant_app(
            AccountantSettings(
                **common, tokens=TOKENS, database_url=f"sqlite:///{tmp / 'ledger.sqlite'}"
            )
        )
    )
    settings = Settings(
        **common,
        tokens=TOKENS,
        database_url=f"sqlite:///{tmp / 'sanitizer.sqlite'}",
        accountant_url=accountant.target,
        accountant_token=DELEGATE,
        default_ddim_steps=2,
    )
    sanitizer = ServerThread(build_app(settings))
    try:
        with grpc.insecure_channel(accountant.target) as channel:
            stub = accountant_pb2_grpc.AccountantStub(channel)
            for tenant, token in (("acme", TENANT), ("globex", OTHER)):
                scope = apb.BudgetScope(tenant_id=tenant)
                budget = apb.Budget(scope=scope, epsilon=500.0, delta=1e-6)
                stub.PutBudget(apb.PutBudgetRequest(budget=budget), metadata=bearer(token))
        wait_until_ready(sanitizer.target, timeout=120)
        yield sanitizer.target, accountant.target
    finally:
        sanitizer.stop(grace=1.0)
        accountant.stop(grace=1.0)


def against(servers: tuple[str, str], token: str, accountant_token: str) -> tuple[int, Any, str]:
    sanitizer, accountant = servers
    return veil_audit(
        "--target", sanitizer, "--token", token,
        "--accountant", accountant, "--accountant-token", accountant_token,
    )  # fmt: skip


def tenant_budget(accountant: str) -> apb.BudgetStatus:
    with grpc.insecure_channel(accountant) as channel:
        stub = accountant_pb2_grpc.AccountantStub(channel)
        scope = apb.BudgetScope(tenant_id="acme")
        status: apb.BudgetStatus = stub.GetBudget(
            apb.GetBudgetRequest(scope=scope), metadata=bearer(TENANT)
        )
        return status


@pytest.mark.slow
def test_external_servers_pass_on_a_dataset_of_the_audits_own(servers: tuple[str, str]) -> None:
    code, report, err = against(servers, TENANT, TENANT)
    assert report is not None, err
    passed(report)
    assert code == 0, err
    assert f"sanitizer {servers[0]}, accountant {servers[1]}" in report["where"]
    assert "tenant 'acme'" in report["where"] and "δ 1e-06" in report["where"]
    status = tenant_budget(servers[1])
    assert status.epsilon_limit == 500.0 and status.delta == 1e-6  # read, never changed
    with grpc.insecure_channel(servers[1]) as channel:
        stub = accountant_pb2_grpc.AccountantStub(channel)
        budgets = stub.ListBudgets(apb.ListBudgetsRequest(), metadata=bearer(TENANT)).budgets
    datasets = {b.scope.dataset_id for b in budgets} - {""}
    assert datasets and all(d.startswith("veil-audit-") for d in datasets)


@pytest.mark.slow
def test_external_set_up_failures_exit_2(servers: tuple[str, str]) -> None:
    code, report, err = against(servers, TENANT, OTHER)
    assert code == 2 and report is None
    assert "tenant 'acme'" in err and "'globex'" in err
    code, report, err = against(servers, NO_BUDGET, NO_BUDGET)
    assert code == 2 and report is None and "'initech' has no budget" in err


def test_bad_options_exit_2_before_anything_starts() -> None:
    cases = [
        (["--target", "127.0.0.1:1"], "needs --token"),
        (["--canary", "halved_noise"], "canary must be one of"),
        (["--token", "t"], "need --target"),
    ]
    for args, says in cases:
        code, report, err = veil_audit(*args)
        assert code == 2 and report is None and says in err, (args, err)
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "audit", "--canary", "double_charge"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "need --service" in out.stderr


def test_the_table_says_which_check_is_flagged(tmp_path: Path) -> None:
    findings = [
        Finding("seeded candidates", False, "2/2 candidate releases FAILED_PRECONDITION", 0.5),
        Finding("retries charge once", True, "concurrent: 4 ledger events for one key", 1.5),
    ]
    report = ServiceReport(ServicePlan(token="secret", store=tmp_path), findings, "here", 2.0)
    lines = render(report).splitlines()
    assert report.flagged and lines[-1].startswith("FLAGGED")
    assert any(" pass " in line and line.endswith("FAILED_PRECONDITION") for line in lines)
    assert any(" FLAGGED " in line and line.endswith("for one key") for line in lines)
    data = json.loads(json.dumps(report.to_json()))
    assert [c["verdict"] for c in data["checks"]] == ["pass", "FLAGGED"]
    assert (
        data["flagged"] and "token" not in data["plan"] and data["plan"]["store"] == str(tmp_path)
    )
