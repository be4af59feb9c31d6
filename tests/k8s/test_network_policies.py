"""The NetworkPolicies of each overlay, read as Kubernetes reads them (tests/k8s/netpol.py):
a default-deny for the namespace, then exactly the connections the pods need, DNS to
kube-dns only, PostgreSQL only from the services that keep state and only to the database
pods, and no egress to any address."""

from __future__ import annotations

import ipaddress

import pytest

from services.cli.registry import SERVICES
from tests.k8s.netpol import Peer, address, allowed, allows_port
from tests.k8s.test_manifests import IDS, OVERLAYS, Obj, container_ports, of_kind, one, render

STATEFUL = ("accountant", "sanitizer", "unlearning")
"""The services with a database (VEIL_<SERVICE>_DATABASE_URL); protection is stateless."""
NAMESPACE = {"gpu": "veil", "local": "veil-dev"}
"""The local overlay has no namespace (kubectl's current one): any name stands for it."""
DNS = Peer("kube-system", {"k8s-app": "kube-dns"})
PROMETHEUS = Peer("monitoring", {"app.kubernetes.io/name": "prometheus"})
CNPG_OPERATOR = Peer("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"})
OUTSIDE = address("203.0.113.7")
"""An address outside the cluster (a documentation address)."""


class Cluster:
    """One overlay's pods and policies, and the connections they allow."""

    def __init__(self, overlay: str) -> None:
        self.overlay = overlay
        self.objs = render(overlay)
        self.namespace = NAMESPACE[overlay]
        self.policies = of_kind(self.objs, "NetworkPolicy")

    def pod(self, name: str) -> Peer:
        deploy = one(self.objs, "Deployment", name)
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        return Peer(self.namespace, labels, container_ports(deploy))

    def peer(self, labels: dict[str, str]) -> Peer:
        return Peer(self.namespace, labels)

    def database(self) -> Peer:
        (cluster,) = of_kind(self.objs, "Cluster")
        return Peer(self.namespace, {"cnpg.io/cluster": cluster["metadata"]["name"]})

    def can(self, src: Peer, dst: Peer, port: int, protocol: str = "TCP") -> bool:
        return allowed(self.policies, self.namespace, src, dst, port, protocol)

    def services(self) -> list[str]:
        return [
            d["metadata"]["name"]
            for d in of_kind(self.objs, "Deployment")
            if d["metadata"]["name"].startswith("veil-")
        ]


@pytest.fixture(params=OVERLAYS, ids=IDS)
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return Cluster(request.param)


def test_the_namespace_denies_by_default(cluster: Cluster) -> None:
    defaults = [p for p in cluster.policies if p["spec"]["podSelector"] == {}]
    assert len(defaults) == 1, "one namespace-wide policy"
    (policy,) = defaults
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not policy["spec"].get("ingress") and not policy["spec"].get("egress")
    stranger = cluster.peer({"app": "something-else"})
    assert not cluster.can(stranger, OUTSIDE, 443) and not cluster.can(stranger, DNS, 53, "UDP")
    assert not cluster.can(PROMETHEUS, stranger, 8080)


def test_no_policy_allows_egress_to_any_address(cluster: Cluster) -> None:
    """Every egress rule names its destinations and its ports: no rule without ``to`` or
    ``ports``, no empty peer, no ipBlock of everything, no peer that is every pod of every
    namespace. And no pod reaches an address outside the cluster on a common port."""
    for policy in cluster.policies:
        name = policy["metadata"]["name"]
        for rule in policy["spec"].get("egress") or []:
            assert rule.get("to") and rule.get("ports"), f"{name}: {rule}"
            for peer in rule["to"]:
                assert peer and peer != {"namespaceSelector": {}}, f"{name}: {peer}"
                if "ipBlock" in peer:
                    network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                    assert network.prefixlen >= 16, f"{name}: {network} is too wide"
                    assert set(peer) == {"ipBlock"}
                elif "namespaceSelector" in peer:
                    assert peer["namespaceSelector"] and peer.get("podSelector"), f"{name}: {peer}"
    pods = [cluster.pod(n) for n in cluster.services()]
    for pod in pods:
        for port in (53, 80, 443, 5432, 8001):
            assert not cluster.can(pod, OUTSIDE, port), (pod.labels, port)


def test_postgres_only_from_the_stateful_services_to_the_database_pods(cluster: Cluster) -> None:
    """5432 appears only in egress rules of the stateful services (and of the database pods,
    for replication), and always towards the database pods by their CNPG label."""
    clusters = of_kind(cluster.objs, "Cluster")
    database = [{"cnpg.io/cluster": c["metadata"]["name"]} for c in clusters]
    stateful = [{"app.kubernetes.io/name": f"veil-{s}"} for s in STATEFUL]
    for policy in cluster.policies:
        selector = policy["spec"]["podSelector"]
        for rule in policy["spec"].get("egress") or []:
            if not allows_port(rule, 5432):
                continue
            assert selector.get("matchLabels") in [*stateful, *database], policy["metadata"]
            assert rule["to"] in [[{"podSelector": {"matchLabels": d}}] for d in database], rule
    if cluster.overlay == "local":
        assert not clusters, "SQLite in the local overlay: no database pods"
        return
    db = cluster.database()
    for name in cluster.services():
        keeps_state = name.removeprefix("veil-") in STATEFUL
        assert cluster.can(cluster.pod(name), db, 5432) == keeps_state, name
    assert not cluster.can(cluster.pod("triton"), db, 5432)
    assert not cluster.can(cluster.peer({"veil.dev/client": "true"}), db, 5432)
    assert not cluster.can(Peer("other", {"app.kubernetes.io/name": "veil-accountant"}), db, 5432)


def test_every_pod_resolves_names_through_kube_dns_only(cluster: Cluster) -> None:
    for name in cluster.services():
        pod = cluster.pod(name)
        assert cluster.can(pod, DNS, 53, "UDP") and cluster.can(pod, DNS, 53, "TCP"), name
        assert not cluster.can(pod, Peer("kube-system", {"k8s-app": "other"}), 53, "UDP"), name
        assert not cluster.can(pod, address("169.254.20.10"), 53, "UDP"), name
    clients = cluster.peer({"veil.dev/client": "true"})
    assert cluster.can(clients, DNS, 53, "UDP")
    if cluster.overlay == "gpu":
        assert cluster.can(cluster.database(), DNS, 53, "UDP")
        assert not cluster.can(cluster.pod("triton"), DNS, 53, "UDP"), "Triton calls nothing"


def test_the_calls_between_services_get_through(cluster: Cluster) -> None:
    """Both ends allow each arrow the services make, in both overlays."""
    pod = cluster.pod
    arrows = [
        ("veil-sanitizer", "veil-accountant", "accountant"),
        ("veil-sanitizer", "veil-unlearning", "unlearning"),
        ("veil-protection", "veil-unlearning", "unlearning"),
    ]
    for src, dst, service in arrows:
        assert cluster.can(pod(src), pod(dst), SERVICES[service].port), (src, dst)
    clients = cluster.peer({"veil.dev/client": "true"})
    for name in cluster.services():
        entry = SERVICES[name.removeprefix("veil-")]
        assert cluster.can(clients, pod(name), entry.port), f"client -> {name}"
        assert cluster.can(PROMETHEUS, pod(name), entry.metrics_port), f"Prometheus -> {name}"
    if cluster.overlay == "gpu":
        triton = pod("triton")
        for src in ("veil-sanitizer", "veil-protection", "veil-unlearning"):
            assert cluster.can(pod(src), triton, 8001), f"{src} -> Triton"
        assert cluster.can(PROMETHEUS, triton, 8002)


def test_nothing_else_gets_through(cluster: Cluster) -> None:
    pod = cluster.pod
    accountant, unlearning = SERVICES["accountant"].port, SERVICES["unlearning"].port
    assert not cluster.can(pod("veil-protection"), pod("veil-accountant"), accountant)
    assert not cluster.can(pod("veil-accountant"), pod("veil-unlearning"), unlearning)
    assert not cluster.can(pod("veil-unlearning"), pod("veil-accountant"), accountant)
    stranger = cluster.peer({"app": "something-else"})
    elsewhere = Peer("other", {"veil.dev/client": "true"})
    for name in cluster.services():
        entry = SERVICES[name.removeprefix("veil-")]
        assert not cluster.can(stranger, pod(name), entry.port), name
        assert not cluster.can(elsewhere, pod(name), entry.port), name
        assert not cluster.can(stranger, pod(name), entry.metrics_port), name
    if cluster.overlay == "gpu":
        triton = pod("triton")
        assert not cluster.can(pod("veil-accountant"), triton, 8001)
        assert not cluster.can(pod("veil-sanitizer"), triton, 8000), "gRPC only, not HTTP"
        for name in cluster.services():
            assert not cluster.can(triton, pod(name), SERVICES[name.removeprefix("veil-")].port)


def test_the_database_pods_reach_what_cnpg_needs() -> None:
    """The operator reaches the instances (status 8000, PostgreSQL 5432), the instances reach
    each other, and the API server and the object store have addresses (placeholders) of
    their own: narrow blocks, never any address."""
    cluster = Cluster("gpu")
    db = cluster.database()
    for port in (8000, 5432):
        assert cluster.can(CNPG_OPERATOR, db, port)
        assert cluster.can(db, db, port)
    assert not cluster.can(Peer("cnpg-system", {"app": "other"}), db, 5432)
    policy: Obj = one(cluster.objs, "NetworkPolicy", "veil-db")
    blocks = [
        peer["ipBlock"]["cidr"]
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    ]
    assert blocks, "the API server (and the object store) by address"
    api = ipaddress.ip_address(blocks[0].split("/")[0])
    assert cluster.can(db, address(str(api)), 6443)
    assert not cluster.can(db, address(str(api)), 5432)
