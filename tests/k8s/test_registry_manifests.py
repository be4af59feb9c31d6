"""The protection service and the sanitizer reach the model registry (``veil.v1.ModelRegistry``
on the unlearning server) the way the sanitizer reaches the accountant: the URL names the
unlearning Service's gRPC port, the token comes from a Secret, the unlearning server's
tokens hold it as a delegate with the scope ``ResolveModel`` needs (and nothing more), and
both network policies let the call through. Every Secret a Deployment reads is generated
locally and documented for the gpu overlay."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from services._proto.veil.v1 import registry_pb2
from services.cli.registry import SERVICES
from services.cli.up import REGISTRY_CLIENTS
from services.runtime.auth import Principal
from services.runtime.server import ServiceApp
from services.runtime.settings import TokenGrant
from tests.k8s.test_manifests import (
    K8S,
    OVERLAYS,
    Obj,
    admits,
    config_env,
    egress_to,
    mounted_tokens,
    of_kind,
    one,
    pod_labels,
    policy_of,
    render,
    secret_value,
    service_address,
    service_of,
    the_container,
)

REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistry"]
TENANT_METHODS = ("ListModels", "GetModel", "SetAlias")
"""The registry RPCs a tenant calls (its own token's scopes)."""
CLIENTS = [(overlay, client) for overlay in OVERLAYS for client in REGISTRY_CLIENTS]
CLIENT_IDS = [f"{overlay}-overlay-{client}" for overlay, client in CLIENTS]


def scope(method: str) -> str:
    """The scope the unlearning server asks for ``method`` (it sets no method_scopes)."""
    assert method in REGISTRY.methods_by_name, method
    app = SimpleNamespace(method_scopes={})
    derived = ServiceApp.scope_of(app, f"/{REGISTRY.full_name}/{method}")
    assert derived is not None
    return derived


def allows(grant: TokenGrant, wanted: str) -> bool:
    principal = Principal(grant.tenant, frozenset(grant.scopes), grant.subject, grant.delegate)
    return principal.allows(wanted)


@pytest.mark.parametrize(("overlay", "client"), CLIENTS, ids=CLIENT_IDS)
def test_registry_url_names_the_unlearning_service(overlay: str, client: str) -> None:
    objs = render(overlay)
    container = the_container(one(objs, "Deployment", f"veil-{client}"))
    env = config_env(objs, container)
    prefix = f"VEIL_{client.upper()}_REGISTRY"
    service, port = service_address(objs, env[f"{prefix}_URL"])
    assert service is service_of(objs, one(objs, "Deployment", "veil-unlearning"))
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert port == grpc["port"] == SERVICES["unlearning"].port
    (token,) = [e for e in container["env"] if e["name"] == f"{prefix}_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "token"
    assert re.fullmatch(rf"veil-{client}-registry-token(-[a-z0-9]+)?", ref["name"]), ref


@pytest.mark.parametrize(("overlay", "client"), CLIENTS, ids=CLIENT_IDS)
def test_unlearning_and_client_policies_let_the_client_resolve(overlay: str, client: str) -> None:
    objs = render(overlay)
    caller = one(objs, "Deployment", f"veil-{client}")
    unlearning = one(objs, "Deployment", "veil-unlearning")
    assert admits(policy_of(objs, unlearning), pod_labels(caller), "grpc")
    assert admits(policy_of(objs, unlearning), {"veil.dev/client": "true"}, "grpc")
    assert egress_to(policy_of(objs, caller), pod_labels(unlearning), SERVICES["unlearning"].port)


def test_local_unlearning_knows_each_clients_delegate_token() -> None:
    objs = render("local")
    grants = mounted_tokens(objs, one(objs, "Deployment", "veil-unlearning"))
    delegates = set()
    for client in REGISTRY_CLIENTS:
        container = the_container(one(objs, "Deployment", f"veil-{client}"))
        token = secret_value(objs, container, f"VEIL_{client.upper()}_REGISTRY_TOKEN")
        grant = grants[token]
        assert grant.delegate, f"{client}: ResolveModel answers delegate tokens only"
        assert allows(grant, scope("ResolveModel")), client
        assert not any(allows(grant, scope(m)) for m in TENANT_METHODS), f"{client}: resolve only"
        delegates.add(token)
    assert len(delegates) == len(REGISTRY_CLIENTS), "one token per client"
    callers = [g for t, g in grants.items() if t not in delegates]
    assert callers and not any(g.delegate for g in callers), "callers never get delegate"
    for method in TENANT_METHODS:  # the local client may use the registry
        assert all(allows(g, scope(method)) for g in callers), method


def referenced_secrets(objs: list[Obj]) -> set[str]:
    """Names of the Secrets the Deployments read (env and volumes), as rendered."""
    names: set[str] = set()
    for deploy in of_kind(objs, "Deployment"):
        pod = deploy["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return names


def test_local_overlay_generates_every_secret_it_reads() -> None:
    objs = render("local")
    generated = {s["metadata"]["name"] for s in of_kind(objs, "Secret")}
    assert referenced_secrets(objs) <= generated, referenced_secrets(objs) - generated


def operator_secrets(objs: list[Obj]) -> set[str]:
    """Secrets the CloudNativePG operator creates for the Clusters rendered (``<name>-app``,
    the owner's credentials and connection details)."""
    return {f"{c['metadata']['name']}-app" for c in of_kind(objs, "Cluster")}


def cluster_secrets(objs: list[Obj]) -> set[str]:
    """Secrets the Clusters read (the backup object store's credentials)."""
    return {
        ref["name"]
        for c in of_kind(objs, "Cluster")
        for ref in c["spec"]["backup"]["barmanObjectStore"]["s3Credentials"].values()
    }


def test_every_secret_the_gpu_overlay_reads_is_documented() -> None:
    """Each Secret read is either created by you (a `kubectl create secret` line in
    k8s/README.md, named in the overlay's header) or by the operator from a Cluster of the
    overlay (named in both as well)."""
    readme = (K8S / "README.md").read_text()
    overlay = (K8S / "overlays" / "gpu" / "kustomization.yaml").read_text()
    objs = render("gpu")
    secrets = referenced_secrets(objs)
    assert {f"veil-{client}-registry-token" for client in REGISTRY_CLIENTS} <= secrets
    generated = operator_secrets(objs)
    assert generated and generated <= secrets, "the services read CNPG's Secret"
    for name in sorted((secrets - generated) | cluster_secrets(objs)):
        assert f"create secret generic {name} " in readme, f"k8s/README.md: {name}"
    for name in sorted(secrets | cluster_secrets(objs)):
        assert re.search(rf"\b{re.escape(name)}\b", readme), f"k8s/README.md: {name}"
        assert re.search(rf"\b{re.escape(name)}\b", overlay), f"gpu kustomization: {name}"
