"""``veil.v1.ModelRegistry`` over real gRPC on the unlearning server, two tenants, SQLite
and (marked ``postgres``) PostgreSQL: numbers per tenant, aliases, lineage, and a
resolution that only Veil's services may ask for."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import common_pb2, registry_pb2_grpc
from services._proto.veil.v1 import registry_pb2 as rpb
from services._proto.veil.v1 import unlearning_pb2 as pb
from services.kernels.manifests import StoreReader
from services.unlearning.trained import (
    ADOPTED,
    TRAINED_BY,
    TrainedStore,
    from_manifest,
    register_kept,
)
from tests.support.server import bearer
from tests.unlearning.conftest import (
    ENTRY,
    MODEL,
    TOKEN_A,
    TOKEN_B,
    TOKEN_OPERATOR,
    TOKEN_SERVICE,
    Client,
    submit_request,
)
from tests.unlearning.test_service import code_of, run_job


class Registry:
    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self.stub = registry_pb2_grpc.ModelRegistryStub(channel)
        self.metadata = bearer(token)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self.stub, name)
        return lambda request: method(request, metadata=self.metadata, timeout=30)


def ref(version: int = 0) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=MODEL, version=version)


def test_two_tenants_number_alias_and_resolve_their_own_versions(
    acme: Client, globex: Client, channel: grpc.Channel
) -> None:
    a, g, service = (Registry(channel, t) for t in (TOKEN_A, TOKEN_B, TOKEN_SERVICE))
    before = g.GetModel(rpb.GetModelRequest(name=MODEL))
    assert [v.ref.version for v in before.versions] == [1] and dict(before.aliases) == {}
    job_a, _ = run_job(acme)
    job_g, _ = run_job(globex)
    assert job_a.result_model.version == 2 and job_g.result_model.version == 2  # each its own

    model = a.GetModel(rpb.GetModelRequest(name=MODEL))
    assert [v.ref.version for v in model.versions] == [2, 1]
    assert dict(model.aliases) == {"production": 2, "previous": 1}
    assert list(model.versions[0].aliases) == ["production"]
    lineage = model.versions[0].lineage
    assert lineage["data"].startswith("synthfaces://") and job_a.status.job_id in lineage["command"]
    assert model.resolution > 0 and model.num_classes >= 2
    listed = a.ListModels(rpb.ListModelsRequest()).models
    assert [(m.name, m.shared) for m in listed] == [(MODEL, False), (ENTRY, True)]
    assert listed[0].current.ref.version == 2 and listed[0].kind == "classifier"

    # Only a delegate token resolves, and each tenant resolves to its own weights.
    code, _ = code_of(a.ResolveModel, rpb.ResolveModelRequest(tenant_id="acme", ref=ref()))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    mine = service.ResolveModel(rpb.ResolveModelRequest(tenant_id="acme", ref=ref()))
    theirs = service.ResolveModel(rpb.ResolveModelRequest(tenant_id="globex", ref=ref()))
    assert mine.version.ref.version == theirs.version.ref.version == 2
    assert mine.serving_version != theirs.serving_version
    assert {mine.serving_version, theirs.serving_version} == {2, 3}

    # globex cannot name acme's serial or alias a version it does not have; the answers
    # are those for a version nobody has.
    serial = max(mine.serving_version, theirs.serving_version)
    for call, other, unknown in (
        (
            service.ResolveModel,
            rpb.ResolveModelRequest(tenant_id="globex", ref=ref(serial)),
            rpb.ResolveModelRequest(tenant_id="globex", ref=ref(99)),
        ),
        (
            g.SetAlias,
            rpb.SetAliasRequest(ref=ref(serial), alias="canary"),
            rpb.SetAliasRequest(ref=ref(99), alias="canary"),
        ),
    ):
        code, said = code_of(call, other)
        assert code == grpc.StatusCode.NOT_FOUND
        assert said.replace(str(serial), "N") == code_of(call, unknown)[1].replace("99", "N")

    # An alias moves what version 0 means, for that tenant only.
    moved = a.SetAlias(rpb.SetAliasRequest(ref=ref(1), alias="production"))
    assert moved.ref.version == 1 and "production" in moved.aliases
    latest = acme.GetModelVersion(pb.GetModelVersionRequest(ref=ref()))
    assert latest.ref.version == 1
    assert globex.GetModelVersion(pb.GetModelVersionRequest(ref=ref())).ref.version == 2
    back = service.ResolveModel(
        rpb.ResolveModelRequest(tenant_id="acme", ref=ref(), alias="previous")
    )
    assert back.version.ref.version == 2
    code, _ = code_of(a.SetAlias, rpb.SetAliasRequest(ref=ref(2), alias="Bad Alias"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(
        service.ResolveModel,
        rpb.ResolveModelRequest(tenant_id="acme", ref=ref(), alias="nightly"),
    )
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("version", [-1])
def test_resolve_refuses_a_negative_version(channel: grpc.Channel, version: int) -> None:
    service = Registry(channel, TOKEN_SERVICE)
    code, _ = code_of(
        service.ResolveModel, rpb.ResolveModelRequest(tenant_id="acme", ref=ref(version))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_trained_models_are_shared_read_only_and_follow_the_store(
    acme: Client, channel: grpc.Channel, store: Path, database_url: str
) -> None:
    """The service adopts its store's entries at start (with their manifests' lineage);
    a new registration of an entry (``veil train``) is its new current version, the old
    one history that no longer resolves; a shared model takes no alias and no job."""
    a, g, service = (Registry(channel, t) for t in (TOKEN_A, TOKEN_B, TOKEN_SERVICE))
    manifest = StoreReader(store).manifest(ENTRY)
    seen = {m.name: m for m in a.ListModels(rpb.ListModelsRequest()).models}
    shared = seen[ENTRY]
    assert shared.shared and shared.kind == "classifier" and dict(shared.aliases) == {}
    assert shared == {m.name: m for m in g.ListModels(rpb.ListModelsRequest()).models}[ENTRY]
    first = shared.current
    assert first.ref.version == 1 and first.state == pb.MODEL_VERSION_STATE_READY
    assert first.lineage["sha256"] == manifest.sha256
    assert first.lineage["command"] == manifest.command
    assert first.lineage["seed"] == str(manifest.seed)
    assert first.lineage["data"] == manifest.data["uri"]
    assert first.lineage["registered_by"] == ADOPTED
    resolved = service.ResolveModel(
        rpb.ResolveModelRequest(tenant_id="acme", ref=common_pb2.ModelRef(name=ENTRY))
    )
    assert (resolved.sha256, resolved.serving_version) == (manifest.sha256, 0)
    assert resolved.kind == "classifier" and resolved.resolution == shared.resolution

    # veil train writes new weights into the entry and registers them.
    registry = TrainedStore(database_url)
    newer = replace(from_manifest(manifest, TRAINED_BY), sha256="0" * 64)
    made, new = registry.register(newer)
    assert new and made.number == 2
    assert registry.register(newer) == (replace(made, registered_at=made.registered_at), False)
    model = a.GetModel(rpb.GetModelRequest(name=ENTRY))
    assert [(v.ref.version, v.state) for v in model.versions] == [
        (2, pb.MODEL_VERSION_STATE_READY),
        (1, pb.MODEL_VERSION_STATE_RETIRED),
    ]
    assert model.current.ref.version == 2 and model.current.lineage["registered_by"] == TRAINED_BY
    now = service.ResolveModel(
        rpb.ResolveModelRequest(tenant_id="globex", ref=common_pb2.ModelRef(name=ENTRY))
    )
    assert now.version.ref.version == 2 and now.sha256 == "0" * 64
    old = rpb.ResolveModelRequest(tenant_id="acme", ref=common_pb2.ModelRef(name=ENTRY, version=1))
    assert code_of(service.ResolveModel, old)[0] == grpc.StatusCode.NOT_FOUND

    # Its aliases are the operator's: a tenant's "*" token does not move them, and even
    # the operator cannot point one at a classifier's registration the store replaced.
    promote = rpb.SetAliasRequest(
        ref=common_pb2.ModelRef(name=ENTRY, version=1), alias="production"
    )
    assert code_of(a.SetAlias, promote)[0] == grpc.StatusCode.PERMISSION_DENIED
    operator = Registry(channel, TOKEN_OPERATOR)
    code, said = code_of(operator.SetAlias, promote)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not kept" in said
    code, _ = code_of(acme.SubmitJob, submit_request(base_model=common_pb2.ModelRef(name=ENTRY)))
    assert code == grpc.StatusCode.NOT_FOUND
    for call, request in (
        (a.GetModel, rpb.GetModelRequest(name="nope")),
        (
            service.ResolveModel,
            rpb.ResolveModelRequest(tenant_id="acme", ref=common_pb2.ModelRef(name="nope")),
        ),
    ):
        assert code_of(call, request)[0] == grpc.StatusCode.NOT_FOUND


def test_the_operator_moves_a_kept_encoders_alias_for_every_tenant(
    channel: grpc.Channel, store: Path, database_url: str
) -> None:
    """An encoder's registrations are kept whole, so each stays servable; only a token
    granted ``modelregistry:promote`` by name moves its aliases, and every tenant resolves
    what they name, with the store entry that holds it."""
    from tests.unlearning.test_trained import _write_entry

    a, g, service = (Registry(channel, t) for t in (TOKEN_A, TOKEN_B, TOKEN_SERVICE))
    operator = Registry(channel, TOKEN_OPERATOR)
    registry = TrainedStore(database_url)
    try:
        first = _write_entry(store, "diffae", "diffae", b"first")
        register_kept(registry, store, first, TRAINED_BY)
        second = _write_entry(store, "diffae", "diffae", b"second")
        register_kept(registry, store, second, TRAINED_BY)
    finally:
        registry.close()

    def resolve(tenant: str) -> rpb.ResolvedModel:
        ref = common_pb2.ModelRef(name="diffae")
        return service.ResolveModel(rpb.ResolveModelRequest(tenant_id=tenant, ref=ref))

    now = resolve("acme")  # no alias yet: the newest
    assert (now.version.ref.version, now.entry, now.sha256) == (2, "diffae-r2", second.sha256)
    assert now.serving_version == 0 and now.kind == "diffae"

    def pin_at(version: int) -> rpb.SetAliasRequest:
        ref = common_pb2.ModelRef(name="diffae", version=version)
        return rpb.SetAliasRequest(ref=ref, alias="production")

    pin = pin_at(1)
    assert code_of(a.SetAlias, pin)[0] == grpc.StatusCode.PERMISSION_DENIED
    moved = operator.SetAlias(pin)
    assert moved.ref.version == 1 and list(moved.aliases) == ["production"]
    # "previous" names what served before: the newest registration.
    for tenant in ("acme", "globex"):
        got = resolve(tenant)
        assert (got.version.ref.version, got.entry, got.sha256) == (1, "diffae-r1", first.sha256)
    model = g.GetModel(rpb.GetModelRequest(name="diffae"))
    assert dict(model.aliases) == {"production": 1, "previous": 2}
    assert model.current.ref.version == 1
    assert [(v.ref.version, v.state) for v in model.versions] == [
        (2, pb.MODEL_VERSION_STATE_READY),
        (1, pb.MODEL_VERSION_STATE_READY),
    ]
    operator.SetAlias(pin_at(2))
    assert dict(g.GetModel(rpb.GetModelRequest(name="diffae")).aliases) == {
        "production": 2,
        "previous": 1,
    }
    previous = rpb.ResolveModelRequest(
        tenant_id="acme", ref=common_pb2.ModelRef(name="diffae"), alias="previous"
    )
    assert service.ResolveModel(previous).entry == "diffae-r1"
    assert code_of(operator.SetAlias, pin_at(9))[0] == grpc.StatusCode.NOT_FOUND
