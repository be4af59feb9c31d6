"""Autoscaling of the gpu overlay: every HPA scales on a metric besides CPU, and the
prometheus-adapter configuration shipped in k8s/overlays/gpu/adapter/ serves each such metric
from series the code (or Triton) exports, computing what the HPA expects (``promtool test
rules`` on the adapter's queries). Triton is highly available, and the unlearning service
loads each version it publishes on every replica (the headless Service)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.runtime.metrics import RpcMetrics
from services.unlearning.metrics import UnlearningMetrics
from tests.k8s.test_manifests import (
    ADAPTER,
    Obj,
    _tool,
    config_env,
    of_kind,
    one,
    pod_labels,
    promtool_test,
    render,
    selects,
    the_container,
)

CPU_AND_MEMORY = {"cpu", "memory"}
KIND_RESOURCE = {"Pods": "pod", "Object": None}
"""The adapter resource each HPA metric type is looked up on (Object: the described kind)."""


def adapter_config() -> Obj:
    """The rules prometheus-adapter reads: key config.yaml of the shipped ConfigMap."""
    (cm,) = of_kind(render(ADAPTER), "ConfigMap")
    config: Obj = yaml.safe_load(cm["data"]["config.yaml"])
    return config


def series_name(rule: Obj) -> str:
    """The metric a rule's ``seriesQuery`` selects (written ``name{...}`` here)."""
    found = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{.*\}", rule["seriesQuery"].strip())
    assert found, f"seriesQuery should name its series: {rule['seriesQuery']}"
    return found.group(1)


def go_expand(template: str, match: re.Match[str]) -> str:
    """Go's ``Regexp.Expand`` (what the adapter applies to ``name.as``): ``$1``, ``${1}``,
    ``$name``, ``${name}``; ``$name`` takes the longest run of word characters, and a group
    that does not exist expands to nothing."""

    def group(found: re.Match[str]) -> str:
        name = found.group(1) or found.group(2)
        if name.isdigit():
            index = int(name)
            return (match.group(index) or "") if index <= (match.re.groups) else ""
        return (match.groupdict().get(name) or "") if name in match.re.groupindex else ""

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", group, template).replace("$$", "$")


def served_name(rule: Obj) -> str:
    """The metric name the adapter serves for a rule: ``name.matches`` applied to the
    series name, expanded with ``name.as`` (default: the only group, else the whole name)."""
    series = series_name(rule)
    pattern = re.compile(rule.get("name", {}).get("matches") or "^(.*)$")
    match = pattern.search(series)
    assert match, f"{pattern.pattern} does not match {series}"
    template = rule.get("name", {}).get("as") or ("$1" if pattern.groups == 1 else "$0")
    assert pattern.groups <= 1 or rule["name"].get("as"), "several groups need an `as`"
    return go_expand(template.replace("$0", "${0}"), match)


def rule_resources(rule: Obj) -> set[str]:
    return {o["resource"] for o in rule["resources"]["overrides"].values()}


def custom_metrics(hpa: Obj) -> list[Obj]:
    return [m for m in hpa["spec"]["metrics"] if m["type"] != "Resource"]


def test_every_hpa_scales_on_a_metric_the_adapter_serves() -> None:
    rules = adapter_config()["rules"]
    served = {served_name(r): r for r in rules}
    hpas = of_kind(render("gpu"), "HorizontalPodAutoscaler")
    assert {h["metadata"]["name"] for h in hpas} >= {
        "veil-accountant", "veil-sanitizer", "veil-protection", "veil-unlearning", "triton",
    }  # fmt: skip
    for hpa in hpas:
        name = hpa["metadata"]["name"]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0, name
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Resource":
                assert metric["resource"]["name"] in CPU_AND_MEMORY
        custom = custom_metrics(hpa)
        assert custom, f"{name}: CPU alone"
        for metric in custom:
            spec = metric[metric["type"].lower()]
            metric_name = spec["metric"]["name"]
            assert metric_name in served, f"{name}: no adapter rule serves {metric_name}"
            resource = KIND_RESOURCE[metric["type"]] or spec["describedObject"]["kind"].lower()
            assert resource in rule_resources(served[metric_name]), (name, metric_name)
            assert "namespace" in rule_resources(served[metric_name])
            assert spec["target"]["type"] == "AverageValue", name


def test_adapter_rules_are_well_formed() -> None:
    config = adapter_config()
    assert set(config) == {"rules"}, "custom metrics only (CPU comes from metrics-server)"
    for rule in config["rules"]:
        query = rule["metricsQuery"]
        assert "<<.LabelMatchers>>" in query and "<<.GroupBy>>" in query, query
        served_name(rule)


def test_the_series_the_rules_read_are_exported() -> None:
    """grpc_server_in_flight: one Gauge per server, no labels of its own (so one series per
    pod once Prometheus adds namespace and pod); veil_unlearning_jobs: by state, with the
    states the backlog rule adds up. Triton's nv_inference_* are Triton's own."""
    registry = CollectorRegistry()
    RpcMetrics(registry, "accountant", "0")
    UnlearningMetrics(registry)
    samples = {(s.name, tuple(sorted(s.labels))) for m in registry.collect() for s in m.samples}
    assert ("grpc_server_in_flight", ()) in samples
    assert ("veil_unlearning_jobs", ("state",)) in samples
    states = {
        s.labels["state"]
        for m in registry.collect()
        for s in m.samples
        if s.name == "veil_unlearning_jobs"
    }
    rules = {series_name(r): r for r in adapter_config()["rules"]}
    assert {"grpc_server_in_flight", "veil_unlearning_jobs"} <= set(rules)
    found = re.search(r'state=~"([^"]+)"', rules["veil_unlearning_jobs"]["metricsQuery"])
    assert found, "the backlog rule selects states"
    wanted = set(found.group(1).split("|"))
    assert wanted == {"queued", "running"} and wanted <= states


def instantiate(rule: Obj, matchers: str, group_by: str) -> str:
    """A rule's metricsQuery as the adapter sends it for ``matchers`` and ``group_by``."""
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series_name(rule))
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def test_adapter_queries_compute_what_the_hpas_expect(tmp_path: Path) -> None:
    """Each query, filled in the way the adapter fills it, evaluated by promtool on made-up
    series: RPCs in flight averaged per pod; Triton's queue time per request (1000 us for a
    pod that queues each request 1 ms, 0 for an idle pod, not NaN); the unlearning backlog
    (queued + running, once however many replicas report it)."""
    promtool = _tool("promtool")
    rules = {series_name(r): r for r in adapter_config()["rules"]}
    veil = 'namespace="veil"'
    pods = f'{veil},pod=~"p-a|p-b"'
    triton = 'model="veil_encoder",version="1"'
    series = [
        {"series": f'grpc_server_in_flight{{{veil},pod="p-a"}}', "values": "3x10"},
        {"series": f'grpc_server_in_flight{{{veil},pod="p-b"}}', "values": "1x10"},
        {"series": f'nv_inference_queue_duration_us{{{veil},pod="p-a",{triton}}}',
         "values": "0+60000x10"},
        {"series": f'nv_inference_request_success{{{veil},pod="p-a",{triton}}}',
         "values": "0+60x10"},
        {"series": f'nv_inference_queue_duration_us{{{veil},pod="p-b",{triton}}}',
         "values": "0x10"},
        {"series": f'nv_inference_request_success{{{veil},pod="p-b",{triton}}}',
         "values": "0x10"},
    ]  # fmt: skip
    for pod in ("p-a", "p-b"):
        for state, n in (("queued", 3), ("running", 1), ("succeeded", 9)):
            labels = f'{veil},service="veil-unlearning",pod="{pod}",state="{state}"'
            series.append({"series": f"veil_unlearning_jobs{{{labels}}}", "values": f"{n}x10"})
    recorded = {
        "in_flight": instantiate(rules["grpc_server_in_flight"], pods, "pod"),
        "queue": instantiate(rules["nv_inference_queue_duration_us"], pods, "pod"),
        "backlog": instantiate(
            rules["veil_unlearning_jobs"], f'{veil},service="veil-unlearning"', "service"
        ),
    }
    group = {"name": "adapter", "rules": [{"record": k, "expr": v} for k, v in recorded.items()]}
    expected = {
        "in_flight": [({"pod": "p-a"}, 3), ({"pod": "p-b"}, 1)],
        "queue": [({"pod": "p-a"}, 1000), ({"pod": "p-b"}, 0)],
        "backlog": [({"service": "veil-unlearning"}, 4)],
    }
    test = {
        "interval": "1m",
        "input_series": series,
        "promql_expr_test": [
            {
                "expr": name,
                "eval_time": "8m",
                "exp_samples": [{"labels": f"{name}{_labels(lb)}", "value": v} for lb, v in rows],
            }
            for name, rows in expected.items()
        ],
    }
    promtool_test(tmp_path, promtool, {"groups": [group]}, [test])


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


# -- per service ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["accountant", "sanitizer", "protection"])
def test_rpc_services_scale_on_cpu_and_rpcs_in_flight(service: str) -> None:
    hpa = one(render("gpu"), "HorizontalPodAutoscaler", f"veil-{service}")
    kinds = {
        (m["type"], m[m["type"].lower()].get("name") or m["pods"]["metric"]["name"])
        for m in hpa["spec"]["metrics"]
    }
    assert kinds == {("Resource", "cpu"), ("Pods", "grpc_server_in_flight")}
    (pods,) = custom_metrics(hpa)
    assert float(pods["pods"]["target"]["averageValue"]) >= 1


def test_unlearning_scales_on_its_backlog_one_job_per_replica() -> None:
    objs = render("gpu")
    hpa = one(objs, "HorizontalPodAutoscaler", "veil-unlearning")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Object"
    described = metric["object"]["describedObject"]
    service = one(objs, "Service", described["name"])
    deploy = one(objs, "Deployment", "veil-unlearning")
    assert described["kind"] == "Service"
    assert selects(service["spec"]["selector"], pod_labels(deploy)), "the pods it scales"
    jobs = config_env(objs, the_container(deploy))["VEIL_UNLEARNING_MAX_RUNNING_JOBS"]
    assert float(metric["object"]["target"]["averageValue"]) == float(jobs)
    assert hpa["spec"]["minReplicas"] >= 2, "the model registry is served by the same pods"
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600, "a scale-down may stop a running job"


# -- Triton -----------------------------------------------------------------------------------


def test_triton_is_highly_available() -> None:
    objs = render("gpu")
    triton = one(objs, "Deployment", "triton")
    assert "replicas" not in triton["spec"], "the HPA owns the replica count"
    hpa = one(objs, "HorizontalPodAutoscaler", "triton")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "triton"}  # fmt: skip
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = custom_metrics(hpa)
    assert metric["pods"]["metric"]["name"] == "triton_queue_us_per_request"
    rolling = triton["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxUnavailable"], rolling["maxSurge"]) == (0, 1), "never below the count"
    budgets = [
        b
        for b in of_kind(objs, "PodDisruptionBudget")
        if selects(b["spec"]["selector"]["matchLabels"], pod_labels(triton))
    ]
    assert len(budgets) == 1
    budget = budgets[0]["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 1
    spread = triton["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}


def test_unlearning_loads_each_version_on_every_triton_replica() -> None:
    """The unlearning service's loads go to the headless Service (one address per ready
    Triton pod: ``VEIL_INFERENCE_TRITON_LOAD_URL``), not through the Service to one replica;
    its network policy lets it reach every Triton pod on the gRPC port."""
    objs = render("gpu")
    headless = one(objs, "Service", "triton-headless")
    service = one(objs, "Service", "triton")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == service["spec"]["selector"]
    assert [p["port"] for p in headless["spec"]["ports"]] == [8001]
    unlearning = the_container(one(objs, "Deployment", "veil-unlearning"))
    assert config_env(objs, unlearning)["VEIL_INFERENCE_TRITON_LOAD_URL"] == (
        "triton-headless:8001"
    )
    pod = one(objs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert all(c["name"] != "model-sync" for c in pod.get("initContainers", []))
