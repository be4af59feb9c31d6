"""``veil.v1.ModelRegistry`` over real gRPC on the unlearning server, two tenants, SQLite
and (marked ``postgres``) PostgreSQL: numbers per tenant, aliases, lineage, and a
resolution that only Veil's services may ask for."""

from __future__ import annotations

import grpc
import pytest

from services._proto.veil.v1 import common_pb2, registry_pb2_grpc
from services._proto.veil.v1 import registry_pb2 as rpb
from services._proto.veil.v1 import unlearning_pb2 as pb
from tests.support.server import bearer
from tests.unlearning.conftest import MODEL, TOKEN_A, TOKEN_B, TOKEN_SERVICE, Client
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
    assert [m.name for m in a.ListModels(rpb.ListModelsRequest()).models] == [MODEL]

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
