"""Alerts and dashboards of the rendered gpu overlay: every alert has a runbook that exists,
latency alerts count unary RPCs only, gauges that every replica reports alike are never
summed, Triton's rules render with Triton only, the dashboard has its unlearning and Triton
rows, and ``promtool test rules`` shows the stream, reservation and Triton alerts firing on
made-up series and staying quiet on healthy ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.k8s.test_manifests import (
    Obj,
    alert_case,
    is_crd,
    one,
    prometheus_rules,
    render,
    run_rule_tests,
)

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
SAME_ON_EVERY_REPLICA = (
    "veil_unlearning_jobs",
    "veil_accountant_reservations_outstanding",
    "veil_accountant_dataset_epsilon_spent",
)
"""Gauges a replica reports for the whole store (or its own view of one figure): summed over
replicas they count it once per replica, so every query takes their ``max``."""


def alerts() -> list[Obj]:
    return [
        rule
        for pr in prometheus_rules()
        for group in pr["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def dashboard_exprs() -> list[str]:
    cm = one(render("gpu"), "ConfigMap", "veil-grafana-dashboard")
    return [
        t["expr"]
        for text in cm["data"].values()
        for p in json.loads(text)["panels"]
        for t in p.get("targets", [])
    ]


def test_every_alert_has_a_runbook_that_exists() -> None:
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        page = f"docs/runbooks/{kebab(rule['alert'])}.md"
        assert url.endswith(page), (rule["alert"], url)
        text = (ROOT / page).read_text()
        assert text.startswith(f"# {rule['alert']}\n"), page
        for section in ("**Means.**", "**Confirm.**", "**Act.**", "**Fixed when**"):
            assert section in text, (page, section)
    pages = {p.name for p in RUNBOOKS.glob("*.md")} - {"README.md"}
    assert pages == {f"{kebab(n)}.md" for n in names}, "one page per alert, none left over"
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"| {n} |" in index for n in names), "the index lists every alert"


def test_latency_alerts_count_unary_rpcs_only() -> None:
    """A stream lasts as long as its caller keeps it (WatchJob: a whole job)."""
    latency = [a for a in alerts() if "grpc_server_handling_seconds" in a["expr"]]
    assert latency
    for rule in latency:
        for selector in re.findall(r"grpc_server_handling_seconds_bucket\{([^}]*)\}", rule["expr"]):
            assert 'grpc_type="unary"' in selector, rule["alert"]
    streams = [a for a in alerts() if 'grpc_type!="unary"' in a["expr"]]
    assert [a["alert"] for a in streams] == ["VeilGrpcStreamErrorsHigh"]


def test_gauges_every_replica_reports_alike_are_never_summed() -> None:
    exprs = [
        r["expr"] for pr in prometheus_rules() for g in pr["spec"]["groups"] for r in g["rules"]
    ]
    exprs += dashboard_exprs()
    uses = 0
    for expr in exprs:
        for name in SAME_ON_EVERY_REPLICA:
            for found in re.finditer(rf"(\w+)\s*(?:by\s*\([^)]*\)\s*)?\(\s*{name}\b", expr):
                uses += 1
                assert found.group(1) == "max", f"{name} aggregated with {found.group(1)}: {expr}"
            bare = re.findall(rf"(?<![(\w]){name}\{{", expr.replace(" ", ""))
            assert not bare, f"{name} used without an aggregation: {expr}"
    assert uses >= len(SAME_ON_EVERY_REPLICA)


def test_triton_rules_render_with_triton_only() -> None:
    gpu = render("gpu")
    rule = one(gpu, "PrometheusRule", "triton")
    monitor = one(gpu, "ServiceMonitor", "triton")
    service = one(gpu, "Service", "triton")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    # The operator names a ServiceMonitor's job after the Service (no jobLabel set).
    assert "jobLabel" not in monitor["spec"]
    assert set(re.findall(r'job="([^"]+)"', exprs)) == {service["metadata"]["name"]}
    assert {"nv_inference_queue_duration_us", "nv_inference_request_success"} <= set(
        re.findall(r"\bnv_\w+", exprs)
    )
    assert not [o for o in render("local") if is_crd(o) or o["metadata"]["name"] == "triton"]
    veil = one(gpu, "PrometheusRule", "veil")
    assert "nv_" not in json.dumps(veil["spec"]), "Triton's rules live with Triton"


def test_dashboard_has_unlearning_and_triton_rows() -> None:
    cm = one(render("gpu"), "ConfigMap", "veil-grafana-dashboard")
    (text,) = cm["data"].values()
    panels = json.loads(text)["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert any("Unlearning" in r for r in rows) and any("Triton" in r for r in rows)
    exprs = " ".join(dashboard_exprs())
    for name in (
        "veil_unlearning_jobs{",
        "veil_unlearning_jobs_finished_total",
        "veil_unlearning_job_duration_seconds_bucket",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_request_success",
        "nv_gpu_utilization",
    ):
        assert name in exprs, name
    assert 'state="failed"' in exprs
    # No two panels overlap on Grafana's 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert g["x"] + g["w"] <= 24 and not mine & cells, p["title"]
        cells |= mine
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


def _rpc(job: str, service: str, method: str, grpc_type: str, code: str) -> str:
    return (
        f'grpc_server_handled_total{{namespace="veil", job="{job}", pod="{job}-0", '
        f'grpc_type="{grpc_type}", grpc_service="veil.v1.{service}", grpc_method="{method}", '
        f'grpc_code="{code}"}}'
    )


def _histogram(labels: str, upper: dict[str, int]) -> list[Obj]:
    return [
        {
            "series": f'grpc_server_handling_seconds_bucket{{{labels}, le="{le}"}}',
            "values": f"0+{n}x60",
        }
        for le, n in upper.items()
    ]


def test_stream_and_reservation_alerts_fire(tmp_path: Path) -> None:
    """WatchJob streams that fail fire VeilGrpcStreamErrorsHigh, and hour-long WatchJob
    streams do not fire VeilGrpcLatencyP99High (a slow unary RPC still does); most
    reservations lapsing fires VeilAccountantReservationsExpiring. A healthy set (streams
    ending OK or by their watchers' deadlines, reservations committed) fires none."""

    def pod(job: str) -> str:
        return f'namespace="veil", job="{job}", pod="{job}-0"'

    watch = f'{pod("veil-unlearning")}, grpc_service="veil.v1.Unlearning"'
    submit = f'{pod("veil-sanitizer")}, grpc_service="veil.v1.Sanitizer"'
    acc = pod("veil-accountant")

    def watches(code: str) -> str:
        return _rpc("veil-unlearning", "Unlearning", "WatchJob", "server_stream", code)

    long_streams = _histogram(
        f'{watch}, grpc_type="server_stream", grpc_method="WatchJob"',
        {"10": 0, "60": 0, "+Inf": 10},
    )
    sick = [
        {"series": watches("UNAVAILABLE"), "values": "0+1x60"},
        {"series": watches("OK"), "values": "0+1x60"},
        *long_streams,
        *_histogram(f'{submit}, grpc_type="unary", grpc_method="Sanitize"',
                    {"5": 0, "10": 60, "+Inf": 60}),
        {"series": f'veil_accountant_reservations_expired_total{{{acc}}}', "values": "0+1x60"},
        {"series": f'veil_accountant_spends_total{{{acc}, kind="commit"}}', "values": "0+1x60"},
    ]  # fmt: skip
    healthy = [
        {"series": watches(code), "values": "0+1x60"}
        for code in ("OK", "DEADLINE_EXCEEDED", "CANCELLED")
    ] + [
        *long_streams,
        {"series": f'veil_accountant_reservations_expired_total{{{acc}}}', "values": "0x60"},
        {"series": f'veil_accountant_spends_total{{{acc}, kind="commit"}}', "values": "0+60x60"},
    ]  # fmt: skip
    fired = {
        "VeilGrpcStreamErrorsHigh": [
            {
                "severity": "warning",
                "namespace": "veil",
                "job": "veil-unlearning",
                "grpc_service": "veil.v1.Unlearning",
                "grpc_method": "WatchJob",
            }
        ],
        "VeilGrpcLatencyP99High": [
            {"severity": "warning", "namespace": "veil", "job": "veil-sanitizer"}
        ],
        "VeilAccountantReservationsExpiring": [{"severity": "warning", "namespace": "veil"}],
    }
    run_rule_tests(
        tmp_path,
        [
            alert_case(sick, "55m", fired),
            alert_case(healthy, "55m", {a: [] for a in fired}),
        ],
    )


def test_triton_alerts_fire(tmp_path: Path) -> None:
    """Both replicas unscraped fire VeilTritonDown and VeilTritonReplicaDown for each; no
    Triton target at all fires VeilTritonDown; a model whose requests wait 800 ms fires
    VeilTritonQueueTimeHigh for that model only. Healthy replicas fire none."""
    pod = 'namespace="veil", job="triton", pod="triton-{}"'
    model = 'namespace="veil", job="triton", pod="triton-a", version="1", model="{}"'
    # per minute: 60 requests, each waiting 800 ms (encoder) or 20 ms (decoder)
    queue = [
        {"series": f"nv_inference_request_success{{{model.format(m)}}}", "values": "0+60x40"}
        for m in ("veil_encoder", "veil_decoder")
    ] + [
        {"series": f"nv_inference_queue_duration_us{{{model.format('veil_encoder')}}}",
         "values": "0+48000000x40"},
        {"series": f"nv_inference_queue_duration_us{{{model.format('veil_decoder')}}}",
         "values": "0+1200000x40"},
    ]  # fmt: skip
    down = [{"series": f"up{{{pod.format(p)}}}", "values": "0x40"} for p in "ab"]
    up = [{"series": f"up{{{pod.format(p)}}}", "values": "1x40"} for p in "ab"]
    warning, critical = {"severity": "warning"}, {"severity": "critical"}
    replica = [
        {**warning, "namespace": "veil", "job": "triton", "pod": f"triton-{p}"} for p in "ab"
    ]

    def case(series: list[Obj], expected: dict[str, list[Obj]]) -> Obj:
        return alert_case(series, "30m", expected)

    run_rule_tests(
        tmp_path,
        [
            case(
                down + queue,
                {
                    "VeilTritonDown": [{**critical, "namespace": "veil"}],
                    "VeilTritonReplicaDown": replica,
                    "VeilTritonQueueTimeHigh": [
                        {**warning, "namespace": "veil", "model": "veil_encoder"}
                    ],
                },
            ),
            case(queue[:2], {"VeilTritonDown": [{**critical, "job": "triton"}]}),
            case(
                up + queue[:2],
                {"VeilTritonDown": [], "VeilTritonReplicaDown": [], "VeilTritonQueueTimeHigh": []},
            ),
        ],
        name="triton",
    )
