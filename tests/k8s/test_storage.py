"""Storage shipped in the gpu overlay: PostgreSQL as a CloudNativePG Cluster (three
instances, backups, the database and its owner created at bootstrap), each stateful
service's SQLAlchemy URL built from the Secret the operator generates, and the model
repository on a ReadWriteMany claim that Triton and the unlearning service mount. The local
overlay keeps SQLite and emptyDirs, and needs no operator."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.engine import make_url

from services.cli.registry import SERVICES
from services.common.db import check_url
from tests.k8s.test_manifests import Obj, is_crd, of_kind, one, render, the_container
from tests.k8s.test_network_policies import STATEFUL

CNPG_APP_KEYS = {"username", "user", "password", "dbname", "host", "port", "pgpass", "uri",
                 "jdbc-uri"}  # fmt: skip
"""The keys of the ``<cluster>-app`` Secret CloudNativePG writes (pkg/specs/secrets.go)."""
SAMPLE = {"username": "veil", "password": "s3cr3tPassw0rd", "host": "veil-db-rw",
          "port": "5432", "dbname": "veil"}  # fmt: skip


def database_cluster() -> Obj:
    (cluster,) = of_kind(render("gpu"), "Cluster")
    return cluster


def test_gpu_overlay_ships_a_cnpg_cluster_with_backups() -> None:
    objs = render("gpu")
    cluster = database_cluster()
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    spec = cluster["spec"]
    assert spec["instances"] == 3, "a primary and two replicas"
    assert re.fullmatch(r"\d+(Gi|Ti)", spec["storage"]["size"])
    initdb = spec["bootstrap"]["initdb"]
    assert initdb["database"] and initdb["owner"]
    store = spec["backup"]["barmanObjectStore"]
    assert store["destinationPath"].startswith(("s3://", "gs://", "https://"))
    assert {ref["name"] for ref in store["s3Credentials"].values()} == {"veil-db-backup"}
    assert spec["backup"]["retentionPolicy"]
    (backup,) = of_kind(objs, "ScheduledBackup")
    assert backup["apiVersion"] == "postgresql.cnpg.io/v1"
    assert backup["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert backup["spec"]["method"] == "barmanObjectStore"
    assert len(backup["spec"]["schedule"].split()) == 6, "CNPG's cron has a seconds field"


@pytest.mark.parametrize("service", STATEFUL)
def test_the_database_url_is_built_from_the_cnpg_secret(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VEIL_<SERVICE>_DATABASE_URL is a postgresql+psycopg URL whose every $(VAR) is defined
    earlier in the container's env from the operator's ``<cluster>-app`` Secret (Kubernetes
    expands only those); filled in, it is the URL of the Cluster's database, which the
    service's settings accept."""
    objs = render("gpu")
    container = the_container(one(objs, "Deployment", f"veil-{service}"))
    names = [e["name"] for e in container["env"]]
    var = f"VEIL_{service.upper()}_DATABASE_URL"
    (entry,) = [e for e in container["env"] if e["name"] == var]
    assert "valueFrom" not in entry
    template = entry["value"]
    assert template.startswith("postgresql+psycopg://")
    secret = f"{database_cluster()['metadata']['name']}-app"
    keys = {}
    for ref in re.findall(r"\$\((\w+)\)", template):
        assert names.index(ref) < names.index(var), f"{ref} must come before {var}"
        (source,) = [e for e in container["env"] if e["name"] == ref]
        key_ref = source["valueFrom"]["secretKeyRef"]
        assert key_ref["name"] == secret and key_ref["key"] in CNPG_APP_KEYS, key_ref
        keys[ref] = key_ref["key"]
    assert set(keys.values()) >= {"username", "password", "host", "dbname"}
    url = re.sub(r"\$\((\w+)\)", lambda m: SAMPLE[keys[m.group(1)]], template)
    parsed = make_url(check_url(url))
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.username, parsed.password) == ("veil", SAMPLE["password"])
    assert (parsed.host, parsed.port) == ("veil-db-rw", 5432)
    initdb = database_cluster()["spec"]["bootstrap"]["initdb"]
    assert parsed.database == initdb["database"] == SAMPLE["dbname"]
    monkeypatch.setenv(var, url)
    assert SERVICES[service].settings().database_url == url  # type: ignore[attr-defined]


def test_protection_reads_no_database() -> None:
    container = the_container(one(render("gpu"), "Deployment", "veil-protection"))
    names = [e["name"] for e in container["env"]]
    assert not [n for n in names if "DATABASE" in n or n.startswith("DB_")], names


def test_the_model_repository_is_a_shared_rwx_claim() -> None:
    objs = render("gpu")
    claim = one(objs, "PersistentVolumeClaim", "veil-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "Triton and unlearning replicas"
    assert claim["spec"]["storageClassName"], "an RWX class (a placeholder to set)"
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounting = set()
    for deploy in of_kind(objs, "Deployment"):
        pod = deploy["spec"]["template"]["spec"]
        volumes = [
            v["name"]
            for v in pod.get("volumes", [])
            if v.get("persistentVolumeClaim", {}).get("claimName") == "veil-models"
        ]
        containers = pod.get("initContainers", []) + pod["containers"]
        if volumes and any(m["name"] in volumes for c in containers for m in c["volumeMounts"]):
            mounting.add(deploy["metadata"]["name"])
    assert mounting == {"triton", "veil-unlearning"}


def test_local_overlay_needs_no_operator_and_no_claim() -> None:
    objs = render("local")
    assert not [o for o in objs if is_crd(o)]
    assert not of_kind(objs, "PersistentVolumeClaim")
    for service in STATEFUL:
        container = the_container(one(objs, "Deployment", f"veil-{service}"))
        assert not [e for e in container["env"] if e["name"].startswith("DB_")], service
