"""The GPU overlay's training run (``k8s/overlays/gpu/training``): it renders, every object
validates strictly against the Kubernetes schema, and what torchrun is told lines up with
the Job, the headless Service, the volumes and the network: the ranks find each other, rank 0
writes where Triton and the unlearning service read, and registers in their registry."""

from __future__ import annotations

import pytest

from tests.k8s.netpol import Peer, allowed
from tests.k8s.test_manifests import K8S_VERSION, Obj, of_kind, one, render

OVERLAY = "gpu/training"
NAMESPACE = "veil"
PORT = 29400


@pytest.fixture(scope="module")
def objs() -> list[Obj]:
    return render(OVERLAY)


def job(objs: list[Obj]) -> Obj:
    return one(objs, "Job", "veil-train")


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a dict (the torchrun ones and the train ones)."""
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_every_object_validates_strictly(objs: list[Obj]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert {o["kind"] for o in objs} == {
        "Job", "Service", "ServiceAccount", "PersistentVolumeClaim", "NetworkPolicy",
    }  # fmt: skip
    for obj in objs:
        assert obj["metadata"]["namespace"] == NAMESPACE
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_an_indexed_job_whose_pods_rendezvous_through_the_headless_service(
    objs: list[Obj],
) -> None:
    spec = job(objs)["spec"]
    pod = spec["template"]["spec"]
    args = pod["containers"][0]["args"]
    torchrun = flags(args[: args.index("-m")])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(torchrun["nnodes"])
    assert pod["restartPolicy"] == "Never" and spec["backoffLimitPerIndex"] >= 1
    service = one(objs, "Service", pod["subdomain"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    # Pod 0 of an Indexed Job is <job>-0, resolvable as <job>-0.<subdomain>.
    assert torchrun["rdzv-endpoint"] == f"veil-train-0.{pod['subdomain']}:{PORT}"
    assert torchrun["rdzv-backend"] == "c10d" and int(torchrun["max-restarts"]) >= 1
    ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
    assert ports["rendezvous"] == PORT == service["spec"]["ports"][0]["port"]
    assert args[args.index("-m") + 1 : args.index("-m") + 4] == [
        "veil.services.cli",
        "train",
        "diffae",
    ]


def test_one_gpu_per_rank_and_a_locked_down_container(objs: list[Obj]) -> None:
    pod = job(objs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    torchrun = flags(container["args"][: container["args"].index("-m")])
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == int(torchrun["nproc-per-node"]) >= 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_it_reads_the_dataset_and_writes_the_store_the_services_read(objs: list[Obj]) -> None:
    pod = job(objs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    train = flags(container["args"][container["args"].index("-m") :])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["datasets"]["claimName"] == "veil-datasets" and mounts["datasets"]["readOnly"]
    assert train["data"].split("://", 1)[1].startswith(mounts["datasets"]["mountPath"])
    assert claims["models"]["claimName"] == "veil-models"  # the gpu overlay's shared volume
    # The store the unlearning service and Triton read (k8s/base/unlearning/config.env).
    assert train["out"] == "/var/lib/veil/models/store"
    assert train["checkpoint-dir"].startswith(mounts["models"]["mountPath"])
    dataset_claim = one(objs, "PersistentVolumeClaim", "veil-datasets")
    assert set(dataset_claim["spec"]["accessModes"]) & {"ReadOnlyMany", "ReadWriteMany"}
    env = {e["name"]: e for e in container["env"]}
    assert env["VEIL_UNLEARNING_DATABASE_URL"]["value"].startswith("postgresql+psycopg://")
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "veil-db-app"


def test_the_network_lets_the_ranks_and_the_registry_through_and_nothing_else(
    objs: list[Obj],
) -> None:
    policies = [*of_kind(objs, "NetworkPolicy"), one(render("gpu"), "NetworkPolicy", "veil-db")]
    labels = job(objs)["spec"]["template"]["metadata"]["labels"]
    rank = Peer(NAMESPACE, labels, {"rendezvous": PORT})
    database = Peer(NAMESPACE, {"cnpg.io/cluster": "veil-db"})
    accountant = Peer(NAMESPACE, {"app.kubernetes.io/name": "veil-accountant"})
    assert allowed(policies, NAMESPACE, rank, rank, PORT)
    assert allowed(policies, NAMESPACE, rank, rank, 43017)  # NCCL's own ports
    assert allowed(policies, NAMESPACE, rank, database, 5432)
    assert not allowed(policies, NAMESPACE, rank, accountant, 50052)
    assert not allowed(policies, NAMESPACE, accountant, rank, PORT)
