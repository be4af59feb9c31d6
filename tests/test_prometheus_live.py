"""Every series the alerts and the dashboard read is in a real Prometheus before any traffic.

``tests/test_metrics_at_start.py`` scrapes each service's registry in process. This test
proves the same end to end: the local stack is started exactly as ``veil up`` starts it
(tritonserver first, then the four services as child processes, on free ports), nothing is
sent to it but gRPC readiness checks, and a real ``prometheus`` (the Debian package that
``.ci/run`` installs) scrapes the four services' metrics ports and Triton's, one job per
target named as the k8s ServiceMonitors name them (``veil-<service>``, ``triton``). Then,
for every metric the PrometheusRules and the Grafana dashboard name — Veil's and gRPC's
(:func:`tests.test_metrics_at_start.selectors`, with its exemptions) and Triton's own
``nv_*`` — Prometheus's series API must find the exact series name (``_bucket``, ``_sum``,
``_count`` included) with every label value the expression selects by equality, in the job
of the service that owns the metric (in each service's job for the metrics every server
exports). Everything missing is reported at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from services.cli.registry import SERVICES
from services.runtime.client import wait_until_ready
from tests.test_metrics_at_start import (
    ADDED_BY_PROMETHEUS,
    NOT_AT_START,
    expressions,
    owner,
    selectors,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.triton]

TRITON_JOB = "triton"
"""Triton's job, as the GPU overlay's ServiceMonitor names it (the rules select on it)."""
GPU_ONLY = ("nv_gpu_", "nv_energy_")
"""Triton's GPU metrics (utilisation, memory, power, energy): exported only for a GPU it sees
and with ``--allow-gpu-metrics`` (``VEIL_TRITON_GPU_METRICS=true``, set below when a CUDA GPU
is present). On a machine without one they cannot exist, so they are exempt there only."""
HAS_GPU = torch.cuda.is_available()
READY_TIMEOUT_S = 240.0
"""tritonserver loads the four models (~40 s on two CPU cores) before any service starts."""
TARGETS_TIMEOUT_S = 60.0
SETTLE_S = 5.0
"""After every target is up, how long a missing series is looked for again (a few scrape
intervals: the first scrape's samples may land just after its target reports up)."""


def triton_selectors() -> Iterator[tuple[str, dict[str, str]]]:
    """``(metric, {label: value})`` for each use of a Triton metric (``nv_*``), with the
    labels it matches by equality: ``job`` kept (this test names Triton's job as the cluster
    does), the other target labels and dashboard variables left out."""
    pattern = re.compile(r"\b(nv_[a-z0-9_]+)(\{[^}]*\})?")
    for expr in expressions():
        for name, matchers in pattern.findall(expr):
            labels = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers))
            yield (
                name,
                {
                    k: v
                    for k, v in labels.items()
                    if (k == "job" or k not in ADDED_BY_PROMETHEUS) and "$" not in v
                },
            )


def wanted() -> dict[str, dict[str, str]]:
    """Each series to find, as a PromQL selector → its labels (job included): a service's
    metric in its own job, a metric every server exports in each service's job."""
    found: dict[str, dict[str, str]] = {}
    for name, labels in selectors():
        if name in NOT_AT_START:
            continue
        service = owner(name)
        for job in [f"veil-{service}"] if service else [f"veil-{s}" for s in SERVICES]:
            full = {**labels, "job": job}
            found[selector(name, full)] = {"__name__": name, **full}
    for name, labels in triton_selectors():
        if name.startswith(GPU_ONLY) and not HAS_GPU:
            continue
        full = {**labels, "job": TRITON_JOB}
        found[selector(name, full)] = {"__name__": name, **full}
    return found


def selector(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all bound at once, so none is handed out twice)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    """``args`` as a child process writing to ``log``; SIGTERM on exit, SIGKILL if it is
    still there after 30 s."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def stack_environment(tmp_path: Path) -> tuple[dict[str, str], dict[str, int], dict[str, int]]:
    """``veil up``'s environment as the installed demo test sets it, every port free and
    explicit (Triton's too, so its metrics port is known): (env, gRPC ports, metrics ports)."""
    ports = iter(free_ports(2 * len(SERVICES) + 3))
    grpc_ports = {s: next(ports) for s in SERVICES}
    metrics_ports = {s: next(ports) for s in SERVICES}
    metrics_ports[TRITON_JOB] = next(ports)
    env = dict(
        os.environ,
        VEIL_ACCOUNTANT_DATABASE_URL=f"sqlite:///{tmp_path}/ledger.sqlite",
        VEIL_SANITIZER_DATABASE_URL=f"sqlite:///{tmp_path}/sessions.sqlite",
        VEIL_UNLEARNING_DATABASE_URL=f"sqlite:///{tmp_path}/unlearning.sqlite",
        VEIL_DATA_DIR=str(tmp_path / "data"),
        VEIL_TRITON_GRPC_PORT=str(next(ports)),
        VEIL_TRITON_HTTP_PORT=str(next(ports)),
        VEIL_TRITON_METRICS_PORT=str(metrics_ports[TRITON_JOB]),
        VEIL_TRITON_GPU_METRICS=str(HAS_GPU).lower(),
    )
    for service in SERVICES:
        prefix = f"VEIL_{service.upper()}_"
        env[prefix + "PORT"] = str(grpc_ports[service])
        env[prefix + "METRICS_PORT"] = str(metrics_ports[service])
        env[prefix + "SHUTDOWN_GRACE_S"] = "2"
    return env, grpc_ports, metrics_ports


def prometheus_config(path: Path, metrics_ports: dict[str, int]) -> Path:
    jobs = [
        {
            "job_name": name if name == TRITON_JOB else f"veil-{name}",
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        }
        for name, port in metrics_ports.items()
    ]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": jobs,
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def wait_targets_up(api: str, jobs: set[str], alive: Any) -> None:
    deadline = time.monotonic() + TARGETS_TIMEOUT_S
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        assert alive(), "prometheus exited"
        try:
            targets = get(f"{api}/targets?state=active")["activeTargets"]
        except OSError:  # not listening yet
            targets = []
        if {t["labels"]["job"] for t in targets if t["health"] == "up"} >= jobs:
            return
        time.sleep(0.25)
    report = {
        t["labels"]["job"]: f"{t['health']} {t['scrapeUrl']}: {t['lastError']}" for t in targets
    }
    pytest.fail(f"not every target was up within {TARGETS_TIMEOUT_S:.0f} s: {report}")


def missing_series(api: str, want: dict[str, dict[str, str]]) -> list[str]:
    """The selectors of ``want`` whose series Prometheus does not have."""
    missing = []
    for query, labels in want.items():
        series = get(f"{api}/series?" + urllib.parse.urlencode({"match[]": query}))
        # The API matched the selector; check the match anyway (name and labels exactly).
        if not any(labels.items() <= s.items() for s in series):
            missing.append(query)
    return missing


def test_prometheus_scrapes_every_series_the_rules_and_dashboard_read_before_traffic(
    tmp_path: Path,
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("no prometheus binary (Debian's `prometheus` package; .ci/run installs it)")
    want = wanted()
    names = {labels["__name__"] for labels in want.values()}
    # The parsing finds what it is meant to (else the test would pass on nothing).
    assert {"grpc_server_handled_total", "nv_inference_request_success"} <= names
    env, grpc_ports, metrics_ports = stack_environment(tmp_path)
    stack_log, prometheus_log = tmp_path / "stack.log", tmp_path / "prometheus.log"
    up = [sys.executable, "-m", "services.cli", "up"]
    with running(up, stack_log, env) as stack:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for service, port in grpc_ports.items():
            try:
                wait_until_ready(
                    f"127.0.0.1:{port}",
                    timeout=max(1.0, deadline - time.monotonic()),
                    alive=lambda: stack.poll() is None,
                )
            except (TimeoutError, RuntimeError) as exc:
                pytest.fail(f"{service}: {exc}\n--- veil up ---\n{tail(stack_log)}")
        web = free_ports(1)[0]
        config = prometheus_config(tmp_path / "prometheus.yml", metrics_ports)
        args = [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--log.level=warn",
        ]
        with running(args, prometheus_log) as prom:
            api = f"http://127.0.0.1:{web}/api/v1"
            jobs = {f"veil-{s}" for s in SERVICES} | {TRITON_JOB}
            wait_targets_up(api, jobs, alive=lambda: prom.poll() is None)
            settle = time.monotonic() + SETTLE_S
            while (missing := missing_series(api, want)) and time.monotonic() < settle:
                time.sleep(0.5)
    assert not missing, (
        f"{len(missing)} of {len(want)} series the rules and the dashboard read are not in"
        " Prometheus before the first RPC:\n  " + "\n  ".join(sorted(missing))
    )
