"""The unlearning service's manifests: one SQLite replica locally; on the GPU overlay the job
database on PostgreSQL, and the model store and repository shared with Triton at paths that
line up (the service writes ``veil_classifier/<N>/`` where Triton reads its repository);
its alert rules name metrics the code defines."""

from __future__ import annotations

import re
from pathlib import Path

from services.cli.registry import SERVICES
from tests.k8s.test_manifests import (
    K8S,
    alert_case,
    config_env,
    egress_to,
    of_kind,
    one,
    pod_labels,
    policy_of,
    render,
    run_rule_tests,
    secret_value,
    the_container,
)

ROOT = Path(__file__).resolve().parents[2]


def test_local_unlearning_is_one_sqlite_replica_on_emptydirs() -> None:
    objs = render("local")
    deploy = one(objs, "Deployment", "veil-unlearning")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    container = the_container(deploy)
    url = secret_value(objs, container, "VEIL_UNLEARNING_DATABASE_URL")
    assert url.startswith("sqlite:////")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[str(Path(url.removeprefix("sqlite:///")).parent)]]
    env = config_env(objs, container)
    assert env["VEIL_INFERENCE_BACKEND"] == "local"
    store = env["VEIL_UNLEARNING_STORE"]
    assert env["VEIL_INFERENCE_STORE"] == store
    assert "emptyDir" in volumes[mounts[str(Path(store).parent)]]
    assert "persistentVolumeClaim" not in volumes[mounts[str(Path(store).parent)]]
    (seed,) = deploy["spec"]["template"]["spec"]["initContainers"]
    assert store in seed["command"][-1]


def test_gpu_unlearning_shares_the_models_volume_with_triton() -> None:
    objs = render("gpu")
    deploy = one(objs, "Deployment", "veil-unlearning")
    assert "replicas" not in deploy["spec"]
    one(objs, "HorizontalPodAutoscaler", "veil-unlearning")
    container = the_container(deploy)
    (db,) = [e for e in container["env"] if e["name"] == "VEIL_UNLEARNING_DATABASE_URL"]
    assert db["value"].startswith("postgresql+psycopg://"), "built from CNPG's Secret"
    env = config_env(objs, container)
    assert env["VEIL_INFERENCE_BACKEND"] == "triton"
    assert env["VEIL_INFERENCE_TRITON_URL"] == "triton:8001"
    models = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["models"]
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert env["VEIL_UNLEARNING_MODEL_REPOSITORY"] == f"{models}/repository"
    assert env["VEIL_UNLEARNING_STORE"] == f"{models}/store"

    triton = one(objs, "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "triton")
    tenv = {e["name"]: e.get("value") for e in server["env"]}
    assert tenv["VEIL_TRITON_MODEL_CONTROL_MODE"] == "explicit"
    mounts = [m for m in server["volumeMounts"] if m["name"] == "models"]
    by_sub = {m.get("subPath"): m["mountPath"] for m in mounts}
    assert by_sub["repository"] == tenv["VEIL_TRITON_MODEL_REPOSITORY"]
    assert by_sub["store"] == tenv["VEIL_MODEL_STORE"]
    triton_volumes = {v["name"]: v for v in pod["volumes"]}
    assert triton_volumes["models"]["persistentVolumeClaim"]["claimName"] == claim
    assert egress_to(policy_of(objs, deploy), pod_labels(triton), 8001)


def test_unlearning_ports_match_the_registry() -> None:
    for overlay in ("local", "gpu"):
        service = one(render(overlay), "Service", "veil-unlearning")
        ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
        entry = SERVICES["unlearning"]
        assert ports == {"grpc": entry.port, "metrics": entry.metrics_port}


def test_unlearning_alerts_use_metrics_the_code_defines() -> None:
    rules = (K8S / "base" / "monitoring" / "prometheusrule.yaml").read_text()
    used = set(re.findall(r"veil_unlearning_[a-z_]+", rules))
    assert used, "the unlearning alerts are in the rules"
    code = (ROOT / "services" / "unlearning" / "metrics.py").read_text()
    defined = set(re.findall(r'"(veil_unlearning_[a-z_]+)"', code))
    assert used <= defined, used - defined
    monitors = {m["metadata"]["name"] for m in of_kind(render("gpu"), "ServiceMonitor")}
    assert "veil-unlearning" in monitors


def test_unlearning_alerts_fire(tmp_path: Path) -> None:
    """``promtool test rules`` on made-up series: most jobs failing and a stuck queue fire
    the unlearning alerts; a healthy queue (jobs succeeding, one running) fires none."""
    pod = 'namespace="veil", job="veil-unlearning", pod="veil-unlearning-0"'
    sick = [
        {"series": f'veil_unlearning_jobs_finished_total{{{pod}, state="failed"}}',
         "values": "0+1x90"},
        {"series": f'veil_unlearning_jobs_finished_total{{{pod}, state="succeeded"}}',
         "values": "0+0x90"},
        {"series": f'veil_unlearning_jobs{{{pod}, state="queued"}}', "values": "3x90"},
        {"series": f'veil_unlearning_jobs{{{pod}, state="running"}}', "values": "0x90"},
    ]  # fmt: skip
    healthy = [
        {"series": f'veil_unlearning_jobs_finished_total{{{pod}, state="failed"}}',
         "values": "0+0x90"},
        {"series": f'veil_unlearning_jobs_finished_total{{{pod}, state="succeeded"}}',
         "values": "0+1x90"},
        {"series": f'veil_unlearning_jobs{{{pod}, state="queued"}}', "values": "3x90"},
        {"series": f'veil_unlearning_jobs{{{pod}, state="running"}}', "values": "1x90"},
    ]  # fmt: skip
    alerts = {
        "VeilUnlearningJobsFailing": {"severity": "warning", "namespace": "veil"},
        "VeilUnlearningQueueStuck": {"severity": "warning", "namespace": "veil"},
    }
    run_rule_tests(
        tmp_path,
        [
            alert_case(series, "80m", {a: [labels] if fire else [] for a, labels in alerts.items()})
            for series, fire in ((sick, True), (healthy, False))
        ],
    )
