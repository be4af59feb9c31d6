"""NetworkPolicy semantics for the manifest tests: whether a connection from one pod (or
address) to another on a port is allowed by both ends, the way Kubernetes decides it.

A pod that no policy selects for a direction is open in that direction; once selected, only
what a rule of one of those policies allows gets through (policies add up). A peer with a
``podSelector`` alone means pods of the policy's own namespace; a ``namespaceSelector`` is
matched against the namespace's ``kubernetes.io/metadata.name`` label; an ``ipBlock`` against
an address outside the cluster. A rule without ``ports`` allows every port, one without
``to``/``from`` every peer. Named ports are the destination's container ports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

NAMESPACE_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod (namespace, labels, named container ports) or, with
    ``namespace`` None, an address outside the cluster."""

    namespace: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    ip: str | None = None


def address(ip: str) -> Peer:
    return Peer(namespace=None, ip=ip)


def matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (``matchLabels`` and ``matchExpressions``); ``{}`` selects all."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: Obj, other: Peer, namespace: str) -> bool:
    if "ipBlock" in peer:
        if other.ip is None:
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        inside = ip in ipaddress.ip_network(block["cidr"])
        return inside and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = matches(peer["namespaceSelector"], {NAMESPACE_LABEL: other.namespace})
    else:
        in_namespace = other.namespace == namespace
    return in_namespace and matches(peer.get("podSelector", {}), other.labels)


def _port_matches(
    ports: list[Obj] | None, port: int, protocol: str, named: Mapping[str, int]
) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        value = p.get("port")
        if value is None:
            return True
        number = named.get(value) if isinstance(value, str) else int(value)
        if number is not None and number <= port <= int(p.get("endPort", number)):
            return True
    return False


def policy_types(policy: Obj) -> list[str]:
    spec = policy["spec"]
    return list(spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])])


def selecting(policies: list[Obj], pod: Peer, direction: str, namespace: str) -> list[Obj]:
    """The policies of ``namespace`` that select ``pod`` for ``direction``."""
    if pod.namespace != namespace:
        return []
    return [
        p
        for p in policies
        if matches(p["spec"]["podSelector"], pod.labels) and direction in policy_types(p)
    ]


def allowed(
    policies: list[Obj],
    namespace: str,
    src: Peer,
    dst: Peer,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether ``src`` may open a connection to ``dst`` on ``port``, given the ``policies``
    of ``namespace`` (the only namespace with policies here: every other one is open)."""
    egress = selecting(policies, src, "Egress", namespace)
    if egress and not any(
        _port_matches(rule.get("ports"), port, protocol, dst.ports)
        and ("to" not in rule or any(_peer_matches(p, dst, namespace) for p in rule["to"]))
        for policy in egress
        for rule in policy["spec"].get("egress") or []
    ):
        return False
    ingress = selecting(policies, dst, "Ingress", namespace)
    return not ingress or any(
        _port_matches(rule.get("ports"), port, protocol, dst.ports)
        and ("from" not in rule or any(_peer_matches(p, src, namespace) for p in rule["from"]))
        for policy in ingress
        for rule in policy["spec"].get("ingress") or []
    )


def allows_port(rule: Obj, port: int, protocol: str = "TCP") -> bool:
    """Whether an egress or ingress rule covers ``port`` (numbers only; no ports = all)."""
    return _port_matches(rule.get("ports"), port, protocol, {})
