"""The kustomize overlays render, validate offline and keep the invariants a platform team
relies on: gRPC health probes, shutdown timings, resources and security context, port names
that line up across objects and with ``services.cli.registry``, and metric names that exist.

Rendering needs ``kubectl`` and the rule check ``promtool``; each is skipped when missing,
except under ``CI=true`` where a missing tool fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import TypeAdapter

from services.cli.registry import SERVICES
from services.runtime.auth import Principal
from services.runtime.server import ServiceApp
from services.runtime.settings import TokenGrant
from tests.k8s.netpol import matches

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("local", "gpu")
IDS = [f"{o}-overlay" for o in OVERLAYS]
"""Test ids: a bare "gpu" id would match conftest's CUDA skip (it checks keywords)."""
K8S_VERSION = "1.30"
"""Oldest Kubernetes we support; kubernetes-validate ships its schemas."""
CRDS = {
    "monitoring.coreos.com/v1": {"ServiceMonitor", "PrometheusRule"},
    "postgresql.cnpg.io/v1": {"Cluster", "ScheduledBackup"},
}
"""Operators' kinds the manifests use (kubernetes-validate has no schema for them)."""
ADAPTER = "gpu/adapter"
"""prometheus-adapter's rules: a kustomization of its own, applied to its namespace."""
CLIENT_ERROR_CODES = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
}
ACCOUNTANT_METRICS = {
    "veil_accountant_spends_total",
    "veil_accountant_refusals_total",
    "veil_accountant_reservations_outstanding",
    "veil_accountant_reservations_expired_total",
    "veil_accountant_dataset_epsilon_spent",
}
"""Names of services/accountant/metrics.py the rules and the dashboard use."""
SANITIZER_METRICS = {
    "veil_sanitizer_releases_total",
    "veil_sanitizer_refusals_total",
    "veil_sanitizer_previews_total",
    "veil_sanitizer_candidates_total",
    "veil_sanitizer_released_epsilon",
    "veil_sanitizer_stage_duration_seconds",
}
"""Names of services/sanitizer/metrics.py the rules and the dashboard use."""
PROTECTION_METRICS = {
    "veil_protection_protections_total",
    "veil_protection_early_stops_total",
    "veil_protection_protect_duration_seconds",
    "veil_protection_fmd_steps",
    "veil_protection_evaluations_total",
}
"""Names of services/protection/metrics.py the rules and the dashboard use."""
SANITIZER_ACCOUNTANT_METHODS = ("Check", "Reserve", "Commit", "Release")
"""The accountant RPCs services/sanitizer/ledger.py calls (its delegate token needs them)."""
STARTUP_BUDGET_S = 120
"""A service that imports torch and loads models gets at least this long to start."""
PROTECTION_GRACE_S = 60
"""In-flight protection RPCs get at least this long on SIGTERM: an FMD run may last until
just before its client's deadline, a minute or more on a CPU."""

Obj = dict[str, Any]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true but is not on PATH")
        pytest.skip(f"{name} is not installed (needed to check the k8s manifests)")
    return path


_rendered: dict[str, list[Obj]] = {}


def render(overlay: str) -> list[Obj]:
    """``kubectl kustomize k8s/overlays/<overlay>`` as a list of objects (cached)."""
    if overlay not in _rendered:
        kubectl = _tool("kubectl")
        out = subprocess.run(
            [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        _rendered[overlay] = [d for d in yaml.safe_load_all(out.stdout) if d]
    return _rendered[overlay]


def is_crd(obj: Obj) -> bool:
    """An object of an operator's API group (monitoring.coreos.com, postgresql.cnpg.io)."""
    group = obj["apiVersion"].split("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def config_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom) overlaid by literal ``env``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(one(objs, "ConfigMap", ref)["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def veil_deployments(objs: list[Obj]) -> list[tuple[str, Obj]]:
    """(service, Deployment) for each Veil service rendered (name ``veil-<service>``)."""
    return [
        (d["metadata"]["name"].removeprefix("veil-"), d)
        for d in of_kind(objs, "Deployment")
        if d["metadata"]["name"].startswith("veil-")
    ]


def container_ports(deploy: Obj) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"]
        for c in deploy["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(deploy: Obj) -> dict[str, str]:
    return deploy["spec"]["template"]["metadata"]["labels"]


def the_container(deploy: Obj) -> Obj:
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def secret_value(objs: list[Obj], container: Obj, name: str) -> str:
    """The decoded value of env ``name``, which the container reads from a rendered Secret."""
    (var,) = [e for e in container["env"] if e["name"] == name]
    ref = var["valueFrom"]["secretKeyRef"]
    return base64.b64decode(one(objs, "Secret", ref["name"])["data"][ref["key"]]).decode()


def traffic_services(objs: list[Obj]) -> list[Obj]:
    """The Services that carry traffic: not a headless one (``clusterIP: None``), which only
    names pods in DNS (Triton's, for the unlearning service's loads)."""
    return [s for s in of_kind(objs, "Service") if s["spec"].get("clusterIP") != "None"]


def service_of(objs: list[Obj], deploy: Obj) -> Obj:
    """The one Service that selects ``deploy``'s pods."""
    found = [
        s for s in traffic_services(objs) if selects(s["spec"]["selector"], pod_labels(deploy))
    ]
    assert len(found) == 1, deploy["metadata"]["name"]
    return found[0]


def policy_of(objs: list[Obj], deploy: Obj) -> Obj:
    """The one NetworkPolicy of ``deploy``'s own: it selects its pods by their labels (the
    namespace's default-deny, ``podSelector: {}``, selects every pod and is not counted)."""
    found = [
        n
        for n in of_kind(objs, "NetworkPolicy")
        if n["spec"]["podSelector"] and matches(n["spec"]["podSelector"], pod_labels(deploy))
    ]
    assert len(found) == 1, deploy["metadata"]["name"]
    return found[0]


def admits(policy: Obj, labels: dict[str, str], port: str | int) -> bool:
    """Whether an ingress rule of ``policy`` admits pods of its own namespace labelled
    ``labels`` on ``port``."""
    return any(
        port in [p["port"] for p in rule["ports"]]
        and any(
            "namespaceSelector" not in peer
            and "podSelector" in peer
            and matches(peer["podSelector"], labels)
            for peer in rule.get("from", [])
        )
        for rule in policy["spec"]["ingress"]
    )


def egress_to(policy: Obj, labels: dict[str, str], port: int) -> bool:
    """Whether an egress rule of ``policy`` lets its pods reach pods of its own namespace
    labelled ``labels`` on TCP ``port``."""
    return any(
        {"port": port, "protocol": "TCP"} in rule["ports"]
        and any(
            "namespaceSelector" not in peer
            and "podSelector" in peer
            and matches(peer["podSelector"], labels)
            for peer in rule["to"]
        )
        for rule in policy["spec"].get("egress") or []
        if "to" in rule
    )


KUBE_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}  # fmt: skip
"""The cluster's resolver, as every policy names it."""


def egress_to_dns(policy: Obj) -> bool:
    """Whether ``policy`` lets its pods reach kube-dns on 53, UDP and TCP."""
    return any(
        rule.get("to") == [KUBE_DNS]
        and {"port": 53, "protocol": "UDP"} in rule["ports"]
        and {"port": 53, "protocol": "TCP"} in rule["ports"]
        for rule in policy["spec"].get("egress") or []
    )


def egress_anywhere(policy: Obj, port: int, protocol: str = "TCP") -> bool:
    """Whether an egress rule without ``to`` (any destination) allows ``port``."""
    return any(
        "to" not in rule and {"port": port, "protocol": protocol} in rule["ports"]
        for rule in policy["spec"].get("egress", [])
    )


def service_address(objs: list[Obj], address: str) -> tuple[Obj, int]:
    """The Service a ``host:port`` address in this namespace names, and the port."""
    host, _, port = address.rpartition(":")
    assert host and "." not in host, f"{address}: expected <service>:<port> in this namespace"
    return one(objs, "Service", host), int(port)


_UNITS = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``) as a number."""
    text = str(value)
    for suffix, factor in _UNITS.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_overlay_renders(overlay: str) -> None:
    objs = render(overlay)
    assert of_kind(objs, "Deployment"), f"{overlay} renders no Deployment"


@pytest.mark.parametrize("overlay", [*OVERLAYS, ADAPTER], ids=[*IDS, "prometheus-adapter-rules"])
def test_builtin_objects_validate(overlay: str) -> None:
    for obj in render(overlay):
        if is_crd(obj):
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {err.path}")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_crds_are_well_formed(overlay: str) -> None:
    """No schema for the operators' kinds: the API version and kind are ones the manifests
    are written for, and the fields the operators need are there (the CNPG objects are
    checked further in test_storage.py)."""
    for obj in render(overlay):
        if not is_crd(obj):
            continue
        assert obj["kind"] in CRDS.get(obj["apiVersion"], set()), (obj["apiVersion"], obj["kind"])
        assert obj["metadata"]["name"]
        spec = obj["spec"]
        if obj["kind"] == "Cluster":
            assert spec["instances"] >= 1 and spec["storage"]["size"]
        elif obj["kind"] == "ScheduledBackup":
            assert spec["cluster"]["name"] and spec["schedule"]
        elif obj["kind"] == "ServiceMonitor":
            assert spec["selector"]["matchLabels"]
            assert spec["endpoints"] and all("port" in e for e in spec["endpoints"])
        else:
            assert spec["groups"]
            for group in spec["groups"]:
                assert group["name"] and group["rules"]
                for rule in group["rules"]:
                    assert ("alert" in rule) != ("record" in rule), rule
                    assert rule["expr"].strip()
                    if "alert" in rule:
                        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
                        assert rule["annotations"]["summary"]


def test_local_overlay_has_no_crds() -> None:
    assert not [o for o in render("local") if is_crd(o)]


def prometheus_rules() -> list[Obj]:
    rules = of_kind(render("gpu"), "PrometheusRule")
    assert rules, "the gpu overlay renders no PrometheusRule"
    return rules


def test_prometheus_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    for i, rule in enumerate(prometheus_rules()):
        path = tmp_path / f"rules-{i}.yaml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        out = subprocess.run(
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_error_ratio_alert_ignores_client_errors() -> None:
    exprs = [
        r["expr"]
        for pr in prometheus_rules()
        for g in pr["spec"]["groups"]
        for r in g["rules"]
        if re.search(r'grpc_code!~"', r["expr"])
    ]
    assert exprs, "no rule excludes client error codes"
    for expr in exprs:
        excluded = set(re.search(r'grpc_code!~"([^"]*)"', expr).group(1).split("|"))
        assert {"OK", *CLIENT_ERROR_CODES} <= excluded, expr


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_probes_use_grpc_health_services(overlay: str) -> None:
    objs = render(overlay)
    deployments = veil_deployments(objs)
    assert deployments
    for service, deploy in deployments:
        grpc_port = SERVICES[service].port
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        probes = {k: container[k]["grpc"] for k in ("livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"] == {"port": grpc_port, "service": "liveness"}
        assert probes["readinessProbe"] == {"port": grpc_port, "service": "readiness"}
        assert container["startupProbe"]["grpc"]["port"] == grpc_port
        assert container_ports(deploy)["grpc"] == grpc_port


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_termination_grace_exceeds_drain_plus_shutdown_grace(overlay: str) -> None:
    objs = render(overlay)
    for service, deploy in veil_deployments(objs):
        pod = deploy["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = config_env(objs, container)
        prefix = f"VEIL_{service.upper()}_"
        grace = float(env[prefix + "SHUTDOWN_GRACE_S"])
        drain = float(env[prefix + "DRAIN_DELAY_S"])
        assert drain > 0, "a drain delay lets endpoints drop the pod before RPCs are refused"
        assert pod["terminationGracePeriodSeconds"] > grace + drain


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_settings_match_registry(overlay: str) -> None:
    objs = render(overlay)
    for service, deploy in veil_deployments(objs):
        (container,) = deploy["spec"]["template"]["spec"]["containers"]
        env = config_env(objs, container)
        prefix = f"VEIL_{service.upper()}_"
        entry = SERVICES[service]
        assert container["command"] == ["veil", "serve", service]
        assert env[prefix + "HOST"] == "0.0.0.0"
        assert env[prefix + "METRICS_HOST"] == "0.0.0.0"
        assert int(env[prefix + "PORT"]) == entry.port
        assert int(env[prefix + "METRICS_PORT"]) == entry.metrics_port
        assert container_ports(deploy) == {"grpc": entry.port, "metrics": entry.metrics_port}
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(env[prefix + "TOKENS_FILE"]).parent) in mounts


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_every_container_has_resources_and_locked_down_security(overlay: str) -> None:
    for deploy in of_kind(render(overlay), "Deployment"):
        pod = deploy["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for c in pod.get("initContainers", []) + pod["containers"]:
            name = f"{deploy['metadata']['name']}/{c['name']}"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), name
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_service_accounts_mount_no_token(overlay: str) -> None:
    for sa in of_kind(render(overlay), "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_port_names_line_up(overlay: str) -> None:
    """Service, NetworkPolicy and ServiceMonitor name ports the Deployment has."""
    objs = render(overlay)
    for deploy in of_kind(objs, "Deployment"):
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        ports = container_ports(deploy)
        services = [s for s in traffic_services(objs) if selects(s["spec"]["selector"], labels)]
        assert len(services) == 1, deploy["metadata"]["name"]
        (svc,) = services
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] == p["name"] and p["name"] in ports
            assert p["port"] == ports[p["name"]]
        grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc["appProtocol"] == "kubernetes.io/h2c"
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}

        for rule in policy_of(objs, deploy)["spec"]["ingress"]:
            for p in rule["ports"]:
                assert p["port"] in ports

        svc_labels = svc["metadata"]["labels"]
        for monitor in of_kind(objs, "ServiceMonitor"):
            if selects(monitor["spec"]["selector"]["matchLabels"], svc_labels):
                assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_network_policy_admits_clients_sanitizer_and_monitoring() -> None:
    policy = one(render("gpu"), "NetworkPolicy", "veil-accountant")
    by_port = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    grpc_from = [f["podSelector"]["matchLabels"] for f in by_port["grpc"]]
    assert {"veil.dev/client": "true"} in grpc_from
    assert {"app.kubernetes.io/name": "veil-sanitizer"} in grpc_from
    assert by_port["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_gpu_overlay_monitors_every_service() -> None:
    objs = render("gpu")
    monitored = {m["metadata"]["name"] for m in of_kind(objs, "ServiceMonitor")}
    assert {d["metadata"]["name"] for d in of_kind(objs, "Deployment")} <= monitored


@pytest.mark.parametrize("service", ["accountant", "sanitizer"])
def test_local_overlay_is_one_sqlite_replica(service: str) -> None:
    objs = render("local")
    deploy = one(objs, "Deployment", f"veil-{service}")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    assert not of_kind(objs, "HorizontalPodAutoscaler"), "SQLite allows one replica only"
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    url = secret_value(objs, container, f"VEIL_{service.upper()}_DATABASE_URL")
    assert url.startswith("sqlite:////")
    ledger_dir = str(Path(url.removeprefix("sqlite:///")).parent)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[ledger_dir]]


def test_gpu_overlay_is_postgres_autoscaled_with_triton_on_a_gpu() -> None:
    objs = render("gpu")
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"veil"}
    assert not of_kind(objs, "Secret"), "production secrets are created out of band"
    hpa = one(objs, "HorizontalPodAutoscaler", "veil-accountant")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    accountant = one(objs, "Deployment", "veil-accountant")
    assert "replicas" not in accountant["spec"], "the HPA owns the replica count"
    (container,) = accountant["spec"]["template"]["spec"]["containers"]
    (db,) = [e for e in container["env"] if e["name"] == "VEIL_ACCOUNTANT_DATABASE_URL"]
    assert db["value"].startswith("postgresql+psycopg://"), "built from CNPG's Secret"

    triton = one(objs, "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["args"] == ["triton"]  # the Triton image's entrypoint (tests/k8s/test_images.py)
    (accountant_container,) = accountant["spec"]["template"]["spec"]["containers"]
    assert server["image"].rsplit(":", 1)[1] == accountant_container["image"].rsplit(":", 1)[1]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["VEIL_TRITON_MODEL_REPOSITORY"] == GPU_REPOSITORY
    assert env["VEIL_TRITON_HOST"] == "0.0.0.0" and env["VEIL_TRITON_GPU_METRICS"] == "true"
    grace = float(env["VEIL_TRITON_SHUTDOWN_GRACE_S"])
    assert grace < pod["terminationGracePeriodSeconds"]
    assert container_ports(triton) == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["nodeSelector"] and pod["tolerations"]
    one(objs, "ServiceMonitor", "triton")


def test_dashboard_is_a_labelled_configmap() -> None:
    cm = one(render("gpu"), "ConfigMap", "veil-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    for text in cm["data"].values():
        dashboard = json.loads(text)
        exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
        for name in ("grpc_server_handled_total", "grpc_server_handling_seconds_bucket"):
            assert name in exprs
        assert "grpc_server_in_flight" in exprs
        assert set(re.findall(r"veil_accountant_\w+", exprs)) >= ACCOUNTANT_METRICS
        used = {re.sub(r"_bucket$", "", n) for n in re.findall(r"veil_sanitizer_\w+", exprs)}
        assert used >= {
            "veil_sanitizer_releases_total",
            "veil_sanitizer_refusals_total",
            "veil_sanitizer_stage_duration_seconds",
        }
        used = {re.sub(r"_bucket$", "", n) for n in re.findall(r"veil_protection_\w+", exprs)}
        assert used >= {
            "veil_protection_protections_total",
            "veil_protection_early_stops_total",
            "veil_protection_protect_duration_seconds",
        }


def used_metric_names() -> set[str]:
    """``veil_*`` and ``grpc_server_*`` names in the rules and dashboards, histogram suffixes
    stripped (``_bucket``/``_sum``/``_count`` are series of one histogram)."""
    objs = render("gpu")
    texts = [
        r["expr"] for pr in prometheus_rules() for g in pr["spec"]["groups"] for r in g["rules"]
    ]
    texts += [
        v
        for cm in of_kind(objs, "ConfigMap")
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for v in cm["data"].values()
    ]
    text = re.sub(r"\b\w+:[\w:]+", "", "\n".join(texts))  # recording rules: level:metric:op
    names = set(re.findall(r"\b((?:veil|grpc_server)_[a-z0-9_]+)", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def _defined_in(paths: list[Path], name: str) -> bool:
    """prometheus_client adds ``_total`` to counters, so either spelling defines ``name``."""
    spellings = {f'"{name}"', f'"{name.removesuffix("_total")}"'}
    return any(s in p.read_text() for p in paths for s in spellings)


def test_rpc_metric_names_exist_in_code() -> None:
    metrics_py = [ROOT / "services" / "runtime" / "metrics.py"]
    own = tuple(f"veil_{service}_" for service in SERVICES)  # each service's own metrics
    names = {n for n in used_metric_names() if not n.startswith(own)}
    assert "grpc_server_handled_total" in names
    missing = [n for n in sorted(names) if not _defined_in(metrics_py, n)]
    assert not missing, f"not defined in services/runtime/metrics.py: {missing}"


def test_accountant_metric_names_exist_in_code() -> None:
    names = {n for n in used_metric_names() if n.startswith("veil_accountant_")}
    assert names <= ACCOUNTANT_METRICS, f"unexpected accountant metrics: {names}"
    sources = [p for p in (ROOT / "services").rglob("*.py") if "_proto" not in p.parts]
    missing = [n for n in sorted(names) if not _defined_in(sources, n)]
    if missing:
        pytest.xfail(f"{missing} not in services/ yet (services/accountant/metrics.py pending)")


def test_sanitizer_metric_names_exist_in_code() -> None:
    names = {n for n in used_metric_names() if n.startswith("veil_sanitizer_")}
    assert names, "no rule or dashboard panel uses the sanitizer's metrics"
    assert names <= SANITIZER_METRICS, f"unexpected sanitizer metrics: {names}"
    metrics_py = [ROOT / "services" / "sanitizer" / "metrics.py"]
    missing = [n for n in sorted(names) if not _defined_in(metrics_py, n)]
    assert not missing, f"not defined in services/sanitizer/metrics.py: {missing}"


def test_sanitizer_alert_reasons_exist_in_code() -> None:
    """Every ``reason="…"`` a rule or panel selects is one the sanitizer's core records."""
    texts = [
        r["expr"] for pr in prometheus_rules() for g in pr["spec"]["groups"] for r in g["rules"]
    ]
    reasons = set(
        re.findall(r'veil_sanitizer_refusals_total\{[^}]*reason!?="(\w+)"', "\n".join(texts))
    )
    assert "accountant_unavailable" in reasons
    core = (ROOT / "services" / "sanitizer" / "core.py").read_text()
    missing = [r for r in sorted(reasons) if f'refused("{r}")' not in core and f'"{r}"' not in core]
    assert not missing, f"refusal reasons not recorded by services/sanitizer/core.py: {missing}"


GPU_REPOSITORY = "/opt/veil/models-gpu"


# -- every service: the companions of its Deployment -------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_every_registered_service_is_deployed(overlay: str) -> None:
    """Each service ``veil serve`` knows has its Deployment, so the generic tests cover it."""
    assert {s for s, _ in veil_deployments(render(overlay))} == set(SERVICES)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_every_service_has_its_account_and_disruption_budget(overlay: str) -> None:
    objs = render(overlay)
    for _, deploy in veil_deployments(objs):
        name = deploy["metadata"]["name"]
        pod = deploy["spec"]["template"]["spec"]
        one(objs, "ServiceAccount", pod["serviceAccountName"])
        budgets = [
            b
            for b in of_kind(objs, "PodDisruptionBudget")
            if selects(b["spec"]["selector"]["matchLabels"], pod_labels(deploy))
        ]
        assert len(budgets) == 1, name
        assert budgets[0]["spec"]["maxUnavailable"] == 1, "minAvailable would block drains"
        hpas = [
            h
            for h in of_kind(objs, "HorizontalPodAutoscaler")
            if h["spec"]["scaleTargetRef"]["name"] == name
        ]
        if overlay == "gpu":
            assert len(hpas) == 1 and "replicas" not in deploy["spec"], name
        else:
            assert not hpas and deploy["spec"]["replicas"] == 1, name


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_inference_services_get_time_to_import_torch(overlay: str) -> None:
    services = [(s, d) for s, d in veil_deployments(render(overlay)) if SERVICES[s].inference]
    assert services, "no service that calls the kernels is rendered"
    for _, deploy in services:
        probe = the_container(deploy)["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= STARTUP_BUDGET_S


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_inference_services_size_torch_threads_to_their_cpu_limit(overlay: str) -> None:
    """torch imports in every service that calls the kernels and sizes its thread pool by the
    node's cores unless told otherwise."""
    objs = render(overlay)
    for service, deploy in veil_deployments(objs):
        if not SERVICES[service].inference:
            continue
        container = the_container(deploy)
        threads = int(config_env(objs, container)["OMP_NUM_THREADS"])
        assert 1 <= threads <= quantity(container["resources"]["limits"]["cpu"]), service


# -- the sanitizer --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_sanitizer_accountant_url_names_the_accountant_service(overlay: str) -> None:
    objs = render(overlay)
    sanitizer = one(objs, "Deployment", "veil-sanitizer")
    accountant = one(objs, "Deployment", "veil-accountant")
    container = the_container(sanitizer)
    env = config_env(objs, container)
    service, port = service_address(objs, env["VEIL_SANITIZER_ACCOUNTANT_URL"])
    assert service is service_of(objs, accountant)
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert port == grpc["port"] == SERVICES["accountant"].port
    (token,) = [e for e in container["env"] if e["name"] == "VEIL_SANITIZER_ACCOUNTANT_TOKEN"]
    assert set(token["valueFrom"]["secretKeyRef"]) == {"name", "key"}, "a token from a Secret"
    assert env["VEIL_SANITIZER_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_accountant_and_sanitizer_policies_let_the_sanitizer_charge(overlay: str) -> None:
    objs = render(overlay)
    sanitizer = one(objs, "Deployment", "veil-sanitizer")
    accountant = one(objs, "Deployment", "veil-accountant")
    assert admits(policy_of(objs, accountant), pod_labels(sanitizer), "grpc")
    assert egress_to(
        policy_of(objs, sanitizer), pod_labels(accountant), SERVICES["accountant"].port
    )


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_sanitizer_network_policy(overlay: str) -> None:
    objs = render(overlay)
    sanitizer = one(objs, "Deployment", "veil-sanitizer")
    policy = policy_of(objs, sanitizer)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert admits(policy, {"veil.dev/client": "true"}, "grpc")
    by_port = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert by_port["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert egress_to_dns(policy), "DNS"
    database = {"cnpg.io/cluster": "veil-db"}
    assert egress_to(policy, database, 5432) == (overlay == "gpu"), "PostgreSQL (gpu only)"
    assert not egress_anywhere(policy, 5432), "never 5432 to any address"
    triton = [d for d in of_kind(objs, "Deployment") if d["metadata"]["name"] == "triton"]
    for deploy in triton:  # the gpu overlay: both sides of sanitizer -> Triton gRPC
        grpc_port = container_ports(deploy)["grpc"]
        assert egress_to(policy, pod_labels(deploy), grpc_port)
        assert admits(policy_of(objs, deploy), pod_labels(sanitizer), "grpc")
    assert bool(triton) == (overlay == "gpu")


def test_local_sanitizer_runs_the_kernels_in_process() -> None:
    objs = render("local")
    container = the_container(one(objs, "Deployment", "veil-sanitizer"))
    assert config_env(objs, container)["VEIL_INFERENCE_BACKEND"] == "local"
    limits = container["resources"]["limits"]
    assert quantity(limits["cpu"]) >= 1 and quantity(limits["memory"]) >= 2 * 2**30, limits


def mounted_tokens(objs: list[Obj], deploy: Obj) -> dict[str, TokenGrant]:
    """The grants in the tokens file a service reads from its mounted Secret."""
    service = deploy["metadata"]["name"].removeprefix("veil-")
    env = config_env(objs, the_container(deploy))
    path = Path(env[f"VEIL_{service.upper()}_TOKENS_FILE"])
    (mount,) = [
        m for m in the_container(deploy)["volumeMounts"] if m["mountPath"] == str(path.parent)
    ]
    (volume,) = [
        v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == path.name]
    secret = one(objs, "Secret", volume["secret"]["secretName"])
    raw = base64.b64decode(secret["data"][item["key"]])
    return TypeAdapter(dict[str, TokenGrant]).validate_json(raw)


def test_local_accountant_knows_the_sanitizer_delegate_token() -> None:
    objs = render("local")
    sanitizer = one(objs, "Deployment", "veil-sanitizer")
    token = secret_value(objs, the_container(sanitizer), "VEIL_SANITIZER_ACCOUNTANT_TOKEN")
    grant = mounted_tokens(objs, one(objs, "Deployment", "veil-accountant"))[token]
    assert grant.delegate, "the sanitizer charges its callers' tenants: a delegate token"
    principal = Principal(grant.tenant, frozenset(grant.scopes), grant.subject, grant.delegate)
    accountant_app = SimpleNamespace(method_scopes={})  # the accountant sets no method_scopes
    for method in SANITIZER_ACCOUNTANT_METHODS:
        scope = ServiceApp.scope_of(accountant_app, f"/veil.v1.Accountant/{method}")
        assert principal.allows(scope), scope
    own = mounted_tokens(objs, sanitizer)
    assert own and not any(g.delegate for g in own.values()), "callers never get delegate"


def test_gpu_sanitizer_is_postgres_autoscaled_on_triton() -> None:
    objs = render("gpu")
    hpa = one(objs, "HorizontalPodAutoscaler", "veil-sanitizer")
    assert hpa["spec"]["minReplicas"] >= 2, "several replicas, on a shared database"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    sanitizer = one(objs, "Deployment", "veil-sanitizer")
    assert "replicas" not in sanitizer["spec"], "the HPA owns the replica count"
    container = the_container(sanitizer)
    (db,) = [e for e in container["env"] if e["name"] == "VEIL_SANITIZER_DATABASE_URL"]
    assert db["value"].startswith("postgresql+psycopg://"), "built from CNPG's Secret"
    env = config_env(objs, container)
    assert env["VEIL_INFERENCE_BACKEND"] == "triton"
    service, port = service_address(objs, env["VEIL_INFERENCE_TRITON_URL"])
    assert service is service_of(objs, one(objs, "Deployment", "triton"))
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert port == grpc["port"] == 8001
    triton = the_container(one(objs, "Deployment", "triton"))
    assert container["image"].rsplit(":", 1)[1] == triton["image"].rsplit(":", 1)[1]  # one release


def alert_case(series: list[Obj], at: str, expected: dict[str, list[Obj]]) -> Obj:
    """A promtool unit test: on ``series`` (one sample a minute), at ``at`` each alert of
    ``expected`` fires with exactly those label sets (an empty list: it does not fire)."""
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": at, "alertname": a, "exp_alerts": [{"exp_labels": x} for x in want]}
            for a, want in expected.items()
        ],
    }


def run_rule_tests(tmp_path: Path, tests: list[Obj], name: str = "veil") -> None:
    """``promtool test rules`` of ``tests`` against the rendered PrometheusRule ``name``.
    Annotations are stripped (they template ``$value``); the expressions and labels are what
    is tested."""
    promtool = _tool("promtool")
    (rule,) = [r for r in prometheus_rules() if r["metadata"]["name"] == name]
    spec = json.loads(json.dumps(rule["spec"]))
    for group in spec["groups"]:
        for r in group["rules"]:
            r.pop("annotations", None)
    promtool_test(tmp_path, promtool, spec, tests)


def promtool_test(tmp_path: Path, promtool: str, rules: Obj, tests: list[Obj]) -> None:
    """``promtool test rules``: the rule groups ``rules`` and the unit ``tests``, written
    under ``tmp_path``; fails with promtool's words."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    suite = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(suite))
    out = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_sanitizer_alerts_fire(tmp_path: Path) -> None:
    """``promtool test rules`` on made-up series: the accountant down from the start (no
    release series at all) and a slow decoder fire the sanitizer's alerts; a healthy
    sanitizer with budget refusals fires none. Annotations are stripped (they template
    ``$value``); the expressions and labels are what is tested."""
    pod = 'namespace="veil", job="veil-sanitizer", pod="veil-sanitizer-0"'
    bucket = f'veil_sanitizer_stage_duration_seconds_bucket{{{pod}, stage="decode"'
    down = [
        {"series": f'veil_sanitizer_refusals_total{{{pod}, reason="accountant_unavailable"}}',
         "values": "0+6x40"},
        {"series": f'{bucket}, le="5"}}', "values": "0+0x40"},
        {"series": f'{bucket}, le="10"}}', "values": "0+60x40"},
        {"series": f'{bucket}, le="+Inf"}}', "values": "0+60x40"},
        {"series": f'veil_sanitizer_stage_duration_seconds_count{{{pod}, stage="decode"}}',
         "values": "0+60x40"},
    ]  # fmt: skip
    healthy = [
        {"series": f'veil_sanitizer_releases_total{{{pod}, kind="fresh"}}', "values": "0+60x40"},
        {"series": f'veil_sanitizer_refusals_total{{{pod}, reason="budget"}}',
         "values": "0+30x40"},
        {"series": f'veil_sanitizer_refusals_total{{{pod}, reason="accountant_unavailable"}}',
         "values": "0+1x40"},
    ]  # fmt: skip
    alerts = {
        "VeilSanitizerAccountantUnavailable": {"severity": "critical", "namespace": "veil"},
        "VeilSanitizerRefusesEverything": {
            "severity": "warning",
            "namespace": "veil",
            "reason": "accountant_unavailable",
        },
        "VeilSanitizerStageLatencyP99High": {
            "severity": "warning",
            "namespace": "veil",
            "stage": "decode",
        },
    }
    run_rule_tests(
        tmp_path,
        [
            alert_case(down, "35m", {a: [labels] for a, labels in alerts.items()}),
            alert_case(healthy, "35m", {a: [] for a in alerts}),
        ],
    )


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_rendered_environment_is_what_the_services_read(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``VEIL_*`` variable a Deployment sets names a settings field (pydantic ignores
    unknown ones silently), and the lot parses into the service's settings."""
    from services.inference.backend import InferenceSettings

    objs = render(overlay)
    for service, deploy in veil_deployments(objs):
        container = the_container(deploy)
        env = config_env(objs, container)
        prefix = f"VEIL_{service.upper()}_"
        entry = SERVICES[service]
        cls = type(entry.settings())
        for name in [*env, *(e["name"] for e in container["env"])]:
            if name.startswith(prefix):
                assert name.removeprefix(prefix).lower() in cls.model_fields, name
            elif name.startswith("VEIL_INFERENCE_"):
                assert entry.inference, f"{service} does not call the kernels: {name}"
                field = name.removeprefix("VEIL_INFERENCE_").lower()
                assert field in InferenceSettings.model_fields, name
            else:
                assert not name.startswith("VEIL_"), name
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv(prefix + "DATABASE_URL", "sqlite:////var/lib/veil/test.sqlite")
        settings = entry.settings()
        assert (settings.port, settings.metrics_port) == (entry.port, entry.metrics_port)
        if entry.inference:
            expected = "triton" if overlay == "gpu" else "local"
            assert settings.inference.backend == expected  # type: ignore[attr-defined]


# -- the protection service -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_protection_is_stateless(overlay: str) -> None:
    """No database, no accountant: nothing from a Secret but its registry token, no volume
    but its callers' tokens and /tmp, and no way to (or from) the accountant."""
    objs = render(overlay)
    protection = one(objs, "Deployment", "veil-protection")
    container = the_container(protection)
    env = config_env(objs, container)
    assert not [k for k in env if "DATABASE" in k or "ACCOUNTANT" in k], env
    from_secrets = [e["name"] for e in container["env"] if "value" not in e]
    assert from_secrets == ["VEIL_PROTECTION_REGISTRY_TOKEN"], from_secrets
    volumes = {v["name"]: v for v in protection["spec"]["template"]["spec"]["volumes"]}
    assert set(volumes) == {"tokens", "tmp"}
    secret = volumes["tokens"]["secret"]["secretName"]  # with a hash suffix where generated
    assert re.fullmatch(r"veil-protection-tokens(-[a-z0-9]+)?", secret), secret
    assert "emptyDir" in volumes["tmp"]
    accountant = one(objs, "Deployment", "veil-accountant")
    assert not admits(policy_of(objs, accountant), pod_labels(protection), "grpc")
    policy = policy_of(objs, protection)
    assert not egress_to(policy, pod_labels(accountant), SERVICES["accountant"].port)
    assert not egress_anywhere(policy, 5432), "no database"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_protection_network_policy(overlay: str) -> None:
    objs = render(overlay)
    protection = one(objs, "Deployment", "veil-protection")
    policy = policy_of(objs, protection)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert admits(policy, {"veil.dev/client": "true"}, "grpc")
    by_port = {r["ports"][0]["port"]: r["from"] for r in policy["spec"]["ingress"]}
    assert set(by_port) == {"grpc", "metrics"}
    assert by_port["metrics"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert egress_to_dns(policy), "DNS"
    peers = [rule for rule in policy["spec"]["egress"] if rule.get("to") != [KUBE_DNS]]
    triton = [d for d in of_kind(objs, "Deployment") if d["metadata"]["name"] == "triton"]
    for deploy in triton:  # the gpu overlay: both sides of protection -> Triton gRPC
        grpc_port = container_ports(deploy)["grpc"]
        assert egress_to(policy, pod_labels(deploy), grpc_port)
        assert admits(policy_of(objs, deploy), pod_labels(protection), "grpc")
    assert bool(triton) == (overlay == "gpu")
    unlearning = one(objs, "Deployment", "veil-unlearning")
    assert egress_to(policy, pod_labels(unlearning), SERVICES["unlearning"].port), "registry"
    assert len(peers) == 1 + len(triton), "egress to DNS, the registry and Triton only"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=IDS)
def test_protection_waits_out_long_requests(overlay: str) -> None:
    """FMD may run until just before its client's deadline: in-flight RPCs get a long grace,
    still inside terminationGracePeriodSeconds (with the drain delay), and the logs are
    JSON lines."""
    objs = render(overlay)
    protection = one(objs, "Deployment", "veil-protection")
    pod = protection["spec"]["template"]["spec"]
    env = config_env(objs, the_container(protection))
    grace = float(env["VEIL_PROTECTION_SHUTDOWN_GRACE_S"])
    drain = float(env["VEIL_PROTECTION_DRAIN_DELAY_S"])
    assert grace >= PROTECTION_GRACE_S
    assert pod["terminationGracePeriodSeconds"] > grace + drain
    assert env["VEIL_PROTECTION_LOG_FORMAT"] == "json"
    assert env["VEIL_PROTECTION_TOKENS_FILE"] == "/etc/veil/tokens/tokens.json"
    probe = the_container(protection)["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= STARTUP_BUDGET_S


def test_local_protection_runs_the_kernels_in_process() -> None:
    objs = render("local")
    protection = one(objs, "Deployment", "veil-protection")
    container = the_container(protection)
    assert config_env(objs, container)["VEIL_INFERENCE_BACKEND"] == "local"
    limits = container["resources"]["limits"]
    assert quantity(limits["cpu"]) >= 1 and quantity(limits["memory"]) >= 2 * 2**30, limits
    assert protection["spec"]["replicas"] == 1
    assert protection["spec"]["strategy"]["type"] == "RollingUpdate", "stateless"


def test_local_protection_tokens_are_callers_only() -> None:
    objs = render("local")
    own = mounted_tokens(objs, one(objs, "Deployment", "veil-protection"))
    assert "local-dev-token-not-secret" in own
    assert not any(g.delegate for g in own.values()), "callers never get delegate"


def test_gpu_protection_is_autoscaled_on_triton() -> None:
    from services.inference.catalog import PROTECTION_MODELS

    objs = render("gpu")
    hpa = one(objs, "HorizontalPodAutoscaler", "veil-protection")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    protection = one(objs, "Deployment", "veil-protection")
    assert "replicas" not in protection["spec"], "the HPA owns the replica count"
    container = the_container(protection)
    env = config_env(objs, container)
    assert env["VEIL_INFERENCE_BACKEND"] == "triton"
    service, port = service_address(objs, env["VEIL_INFERENCE_TRITON_URL"])
    assert service is service_of(objs, one(objs, "Deployment", "triton"))
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert port == grpc["port"] == 8001
    triton = the_container(one(objs, "Deployment", "triton"))
    assert container["image"].rsplit(":", 1)[1] == triton["image"].rsplit(":", 1)[1]  # one release
    # Evaluate's unauthorized models still run in the pod: torch needs its memory.
    assert quantity(container["resources"]["limits"]["memory"]) >= 2**30
    served = {p.name for p in (ROOT / "triton_models").iterdir() if p.is_dir()}
    assert set(PROTECTION_MODELS) <= served, "Triton serves what the service calls"


def test_protection_metric_names_exist_in_code() -> None:
    names = {n for n in used_metric_names() if n.startswith("veil_protection_")}
    assert names, "no rule or dashboard panel uses the protection service's metrics"
    assert names <= PROTECTION_METRICS, f"unexpected protection metrics: {names}"
    metrics_py = [ROOT / "services" / "protection" / "metrics.py"]
    missing = [n for n in sorted(names) if not _defined_in(metrics_py, n)]
    assert not missing, f"not defined in services/protection/metrics.py: {missing}"


def test_protection_alert_modes_exist_in_code() -> None:
    """Every ``mode="…"`` a rule selects is a mode the protection core records."""
    from services.protection.core import MODES

    texts = [
        r["expr"] for pr in prometheus_rules() for g in pr["spec"]["groups"] for r in g["rules"]
    ]
    modes = set(re.findall(r'veil_protection_\w+\{[^}]*mode="(\w+)"', "\n".join(texts)))
    assert modes and modes <= set(MODES), modes


def test_protection_alerts_fire(tmp_path: Path) -> None:
    """``promtool test rules`` on made-up series: half the FMD runs stopping early and slow
    protection in both modes fire the protection alerts; a healthy service with a few early
    stops fires none. Slow Protect RPCs do not fire the generic gRPC latency alert (FMD runs
    as long as its deadline allows), while a slow sanitizer still does."""
    pod = 'namespace="veil", job="veil-protection", pod="veil-protection-0"'
    latency = "veil_protection_protect_duration_seconds"

    def histogram(name: str, labels: str, upper: dict[str, int]) -> list[Obj]:
        """Cumulative ``_bucket`` series (per minute increments by ``le``) and ``_count``."""
        series = [
            {"series": f'{name}_bucket{{{labels}, le="{le}"}}', "values": f"0+{n}x40"}
            for le, n in upper.items()
        ]
        total = upper["+Inf"]
        series.append({"series": f"{name}_count{{{labels}}}", "values": f"0+{total}x40"})
        return series

    def rpc(job: str, method: str) -> str:
        return (
            f'namespace="veil", job="{job}", pod="{job}-0", grpc_type="unary", '
            f'grpc_service="veil.v1.{method[0]}", grpc_method="{method[1]}"'
        )

    slow_rpc = {"10": 0, "30": 0, "60": 60, "+Inf": 60}
    down = [
        {"series": f'veil_protection_protections_total{{{pod}, mode="fmd"}}',
         "values": "0+60x40"},
        {"series": f"veil_protection_early_stops_total{{{pod}}}", "values": "0+30x40"},
        *histogram(latency, f'{pod}, mode="fmd"', {"30": 0, "60": 60, "+Inf": 60}),
        *histogram(latency, f'{pod}, mode="fast"', {"2.5": 0, "5": 60, "+Inf": 60}),
        *histogram("grpc_server_handling_seconds",
                   rpc("veil-protection", ("Protection", "Protect")), slow_rpc),
        *histogram("grpc_server_handling_seconds",
                   rpc("veil-sanitizer", ("Sanitizer", "Release")), slow_rpc),
    ]  # fmt: skip
    healthy = [
        {"series": f'veil_protection_protections_total{{{pod}, mode="fmd"}}',
         "values": "0+60x40"},
        {"series": f'veil_protection_protections_total{{{pod}, mode="fast"}}',
         "values": "0+60x40"},
        {"series": f"veil_protection_early_stops_total{{{pod}}}", "values": "0+1x40"},
        *histogram(latency, f'{pod}, mode="fmd"', {"2.5": 0, "5": 60, "+Inf": 60}),
        *histogram(latency, f'{pod}, mode="fast"', {"0.25": 60, "+Inf": 60}),
        *histogram("grpc_server_handling_seconds",
                   rpc("veil-protection", ("Protection", "Protect")), slow_rpc),
    ]  # fmt: skip
    warning = {"severity": "warning", "namespace": "veil"}
    alerts = {
        "VeilProtectionEarlyStopsHigh": [warning],
        "VeilProtectionLatencyP99High": [{**warning, "mode": m} for m in ("fmd", "fast")],
        "VeilGrpcLatencyP99High": [{**warning, "job": "veil-sanitizer"}],
    }
    run_rule_tests(
        tmp_path,
        [
            alert_case(down, "35m", alerts),
            alert_case(healthy, "35m", {a: [] for a in alerts}),
        ],
    )
