"""Every series the alerts and the dashboard read exists before the first RPC.

A counter that appears only with its first event leaves ``rate()`` and the ratios of the
rules blind (no series, no alert) until then. Each service's app is built and taken by a
:class:`VeilServer` (never started: no port, no database, no model), its registry scraped,
and every metric the PrometheusRule expressions and the dashboard's queries name that
belongs to the service must be in the scrape, with every label value those expressions
select by equality (``reason="accountant_unavailable"``, ``kind="commit"``…). Triton's own
metrics (``nv_*``) are Triton's to export and are left out.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.cli.registry import SERVICES
from services.runtime.server import ServiceApp, VeilServer

ROOT = Path(__file__).resolve().parents[1]
RULES = [
    ROOT / "k8s" / "base" / "monitoring" / "prometheusrule.yaml",
    ROOT / "k8s" / "overlays" / "gpu" / "triton" / "prometheusrule.yaml",
]
DASHBOARD = ROOT / "k8s" / "base" / "monitoring" / "veil-overview.json"
SHARED = ("grpc_server_", "veil_build_info")
"""Metrics every server exports (services/runtime/metrics.py)."""
ADDED_BY_PROMETHEUS = {"namespace", "job", "pod", "service", "instance", "container", "endpoint"}
"""Target labels the scrape adds: never in a service's own exposition."""
NOT_AT_START = {
    "veil_accountant_dataset_epsilon_spent": "a figure per dataset, not a count: a 0 before "
    "the first spend would claim that nothing was spent",
}
"""Families that rightly have no sample before their first event, and why."""


def expressions() -> list[str]:
    """The PromQL of every rule and every dashboard query (and template variable)."""
    exprs = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["spec"]["groups"]:
            exprs += [rule["expr"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    # Recording rules' names (level:metric:operation) are not metrics of a service.
    return [re.sub(r"\b\w+:[\w:]+", "", e) for e in exprs]


def selectors() -> Iterator[tuple[str, dict[str, str]]]:
    """``(metric, {label: value})`` for each use of a Veil or gRPC metric, with the labels
    it matches by equality (not target labels, not dashboard variables)."""
    pattern = re.compile(r"\b((?:veil|grpc_server)_[a-z0-9_]+)(\{[^}]*\})?")
    for expr in expressions():
        for name, matchers in pattern.findall(expr):
            labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))
            yield (
                name,
                {k: v for k, v in labels.items() if k not in ADDED_BY_PROMETHEUS and "$" not in v},
            )


def owner(name: str) -> str | None:
    """The service whose metric ``name`` is, or None when every server exports it."""
    if name.startswith(SHARED):
        return None
    service = next((s for s in SERVICES if name.startswith(f"veil_{s}_")), None)
    assert service is not None, f"{name}: neither a shared metric nor a service's"
    return service


def build(service: str, tmp: Path) -> ServiceApp:
    """``service``'s app as ``veil serve`` builds it, on throwaway SQLite files, taken by a
    server that is never started."""
    module: Any = importlib.import_module(f"services.{service}.app")
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "tokens": {}}
    extra: dict[str, dict[str, Any]] = {
        "accountant": {"database_url": f"sqlite:///{tmp / 'ledger.sqlite'}"},
        "sanitizer": {
            "database_url": f"sqlite:///{tmp / 'sessions.sqlite'}",
            "accountant_url": "127.0.0.1:1",
        },
        "protection": {},
        "unlearning": {
            "database_url": f"sqlite:///{tmp / 'jobs.sqlite'}",
            "work_dir": tmp / "work",
        },
    }
    app: ServiceApp = module.build_app(module.Settings(**values, **extra[service]))
    VeilServer(app)
    return app


def scrape(app: ServiceApp) -> list[tuple[str, dict[str, str]]]:
    text = generate_latest(app.registry).decode()
    return [
        (sample.name, sample.labels)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def test_the_expressions_name_every_service_and_the_shared_metrics() -> None:
    """The parsing below finds what it is meant to (else the test would pass on nothing)."""
    names = {name for name, _ in selectors()}
    assert {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket"} <= names
    assert {owner(n) for n in names} >= {None, *SERVICES}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_series_the_rules_and_dashboard_read_exists_at_start(
    service: str, tmp_path: Path
) -> None:
    samples = scrape(build(service, tmp_path))
    names = {name for name, _ in samples}
    missing = []
    for name, labels in selectors():
        if owner(name) not in (None, service) or name in NOT_AT_START:
            continue
        if name not in names:
            missing.append(name)
        elif not any(n == name and labels.items() <= s.items() for n, s in samples):
            missing.append(f"{name}{labels}")
    assert not missing, f"not exported before the first RPC: {sorted(set(missing))}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_method_has_its_rpc_series_at_start(service: str, tmp_path: Path) -> None:
    """go-grpc-prometheus's InitializeMetrics: for each method the server serves, started,
    the latency histogram and handled with every status code, all at 0."""
    app = build(service, tmp_path)
    samples = scrape(app)
    for mount in app.mounts:
        started = {
            s["grpc_method"]
            for n, s in samples
            if n == "grpc_server_started_total" and s["grpc_service"] == mount.full_name
        }
        assert started, f"{mount.full_name}: no method initialised"
        for method in started:
            key = {"grpc_service": mount.full_name, "grpc_method": method}
            codes = {
                s["grpc_code"]
                for n, s in samples
                if n == "grpc_server_handled_total" and key.items() <= s.items()
            }
            assert {"OK", "INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED"} <= codes, method
            assert any(
                n == "grpc_server_handling_seconds_count" and key.items() <= s.items()
                for n, s in samples
            ), method
    assert all(v == 0 for n, v in _values(app, "grpc_server_handled_total"))


def _values(app: ServiceApp, name: str) -> list[tuple[str, float]]:
    text = generate_latest(app.registry).decode()
    return [
        (s.name, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def test_streams_are_labelled_as_streams(tmp_path: Path) -> None:
    """The latency alerts count ``grpc_type="unary"`` only: a stream's series must say it is
    one before any call, as its calls will."""
    samples = scrape(build("unlearning", tmp_path))
    types = {
        s["grpc_method"]: s["grpc_type"] for n, s in samples if n == "grpc_server_started_total"
    }
    assert types["WatchJob"] == "server_stream" and types["SubmitJob"] == "unary"


def _literals(package: str, pattern: str) -> set[str]:
    """Every string ``pattern``'s groups capture in ``services/<package>/*.py``."""
    found: set[str] = set()
    for path in (ROOT / "services" / package).glob("*.py"):
        for match in re.finditer(pattern, path.read_text()):
            found.update(g for g in match.groups() if g)
    return found


def test_initialised_label_values_are_the_ones_the_code_records() -> None:
    """The label values put at 0 are exactly those the code counts with: one recorded but
    not listed would appear only with its first event, one listed but never recorded is a
    series that never moves."""
    from services.accountant import metrics as accountant
    from services.sanitizer import metrics as sanitizer

    assert _literals("accountant", r'\.refused\("(\w+)"\)') == set(accountant.REFUSAL_REASONS)
    assert _literals("accountant", r'\.record\([^)]*"(\w+)"\)') == set(accountant.SPEND_KINDS)
    stages = _literals("sanitizer", r'self\._charge\(\s*"(\w+)"')
    assert stages == set(sanitizer.CHARGE_STAGES)
    reasons = _literals("sanitizer", r'metrics\.refused\("(\w+)"\)')
    assert reasons | {f"accountant_{s}" for s in stages} == set(sanitizer.REFUSAL_REASONS)
    kinds = _literals("sanitizer", r'_finish\([^()]*"(\w+)"\)|\bkind = "(\w+)"')
    assert kinds == set(sanitizer.RELEASE_KINDS)
