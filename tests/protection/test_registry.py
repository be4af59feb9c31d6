"""Protection resolves each tenant's authorized model through the model registry, live:
an unlearning server (the registry) and a protection server share one model store; a
tenant's publish becomes its authorized model without a restart, and the other tenant
can neither use nor detect it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import common_pb2, protection_pb2_grpc, unlearning_pb2_grpc
from services._proto.veil.v1 import protection_pb2 as pb
from services._proto.veil.v1 import unlearning_pb2 as upb
from services.common.imaging import encode_image
from services.kernels.data.synthfaces import SynthFaces
from services.runtime.settings import TokenGrant
from tests.support.server import ServerThread, bearer, serve
from tests.unlearning.conftest import REPLACED, REVISED_URI, tiny_store

pytestmark = pytest.mark.slow

ACME, GLOBEX, SERVICE = "registry-acme", "registry-globex", "registry-protection"
TOKENS = {
    ACME: TokenGrant(tenant="acme", scopes=["*"]),
    GLOBEX: TokenGrant(tenant="globex", scopes=["*"]),
    SERVICE: TokenGrant(
        tenant="veil-protection", scopes=["modelregistry:resolve_model"], delegate=True
    ),
}
MODEL = "veil_classifier"
CACHE_S = 0.5


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classifier as ``task-resnet`` (16 px, trained on 300 synthfaces): what
    unlearning publishes versions of and FMD (with no surrogates) protects for."""
    return tiny_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def servers(
    store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, ServerThread]]:
    from services.inference.backend import InferenceSettings
    from services.protection.app import Settings as ProtectionSettings
    from services.protection.app import build_app as protection_app
    from services.unlearning.app import Settings as UnlearningSettings
    from services.unlearning.app import build_app as unlearning_app

    tmp = tmp_path_factory.mktemp("unlearning")
    common = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "tokens": TOKENS}
    unlearning = UnlearningSettings(
        **common,
        database_url=f"sqlite:///{tmp / 'u.sqlite'}",
        store=store,
        work_dir=tmp / "work",
        inference=InferenceSettings(store=store, models=[MODEL]),
        poll_s=0.1,
        reference_steps=5,
        job_threads=1,
        max_steps=50,
        readiness_interval_s=0.2,
    )
    with serve(unlearning_app(unlearning)) as registry:
        protection = ProtectionSettings(
            **common,
            registry_url=registry.target,
            registry_token=SERVICE,
            registry_cache_s=CACHE_S,
            unauthorized={},
            domain="",  # a random-init classifier has no training domain to check against
            inference=InferenceSettings(
                store=store, models=["veil_classifier", "veil_protect"], surrogates=[]
            ),
        )
        with serve(protection_app(protection)) as protecting:
            yield registry, protecting


def image() -> bytes:
    return encode_image(SynthFaces(n=4, seed=21, resolution=16).pixels(0))


def protect(channel: grpc.Channel, token: str, version: int = 0) -> pb.ProtectResponse:
    stub = protection_pb2_grpc.ProtectionStub(channel)
    request = pb.ProtectRequest(
        image=common_pb2.Image(data=image()),
        params=pb.FmdParams(iterations=3),
        authorized_model=common_pb2.ModelRef(name=MODEL, version=version),
    )
    return stub.Protect(request, metadata=bearer(token), timeout=60)


def refusal(channel: grpc.Channel, token: str, version: int) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        protect(channel, token, version)
    return caught.value.code(), caught.value.details()  # type: ignore[attr-defined]


def evaluate(channel: grpc.Channel, token: str, version: int, protected: bytes) -> float:
    """Evaluate one pair against the tenant's ``version``: the authorized accuracy."""
    stub = protection_pb2_grpc.ProtectionStub(channel)
    pair = pb.LabeledImage(
        original=common_pb2.Image(data=image()),
        protected=common_pb2.Image(data=protected),
        label=0,
    )
    out = stub.Evaluate(
        pb.EvaluateRequest(
            images=[pair], authorized_model=common_pb2.ModelRef(name=MODEL, version=version)
        ),
        metadata=bearer(token),
        timeout=60,
    )
    return float(out.authorized_accuracy_original)


def publish(channel: grpc.Channel, token: str, steps: int) -> int:
    """An unlearning job of ``token``'s tenant, run to its end; the version it made."""
    stub = unlearning_pb2_grpc.UnlearningStub(channel)
    job = stub.SubmitJob(
        upb.SubmitJobRequest(
            base_model=common_pb2.ModelRef(name=MODEL),
            revision=upb.DatasetRevision(dataset_uri=REVISED_URI, replaced_sample_ids=REPLACED),
            forget_attributes=["male"],
            method=upb.UNLEARNING_METHOD_FINETUNE,
            options={"steps": str(steps)},
        ),
        metadata=bearer(token),
        timeout=60,
    )
    events = stub.WatchJob(
        upb.WatchJobRequest(job_id=job.status.job_id), metadata=bearer(token), timeout=600
    )
    for _ in events:
        pass
    done = stub.GetJob(upb.GetJobRequest(job_id=job.status.job_id), metadata=bearer(token))
    assert done.status.state == common_pb2.JOB_STATE_SUCCEEDED, done.status.message
    return int(done.result_model.version)


def test_a_publish_becomes_that_tenants_authorized_model_only(
    servers: tuple[ServerThread, ServerThread],
) -> None:
    registry, protecting = servers
    with (
        grpc.insecure_channel(registry.target) as reg,
        grpc.insecure_channel(protecting.target) as prot,
    ):
        base = protect(prot, ACME)
        assert base.authorized_model.version == 1
        assert protect(prot, GLOBEX).image.data == base.image.data  # one shared base

        assert publish(reg, ACME, steps=4) == 2
        time.sleep(CACHE_S + 0.2)  # no restart: the cached resolution lapses
        mine = protect(prot, ACME)
        assert mine.authorized_model.version == 2
        assert mine.image.data != base.image.data  # FMD ran against the new weights
        assert protect(prot, ACME, version=1).image.data == base.image.data
        assert protect(prot, ACME, version=2).image.data == mine.image.data

        theirs = protect(prot, GLOBEX)
        assert theirs.authorized_model.version == 1 and theirs.image.data == base.image.data
        code, said = refusal(prot, GLOBEX, 2)  # acme's number, and acme's serial
        unknown_code, unknown = refusal(prot, GLOBEX, 99)
        assert code == unknown_code == grpc.StatusCode.NOT_FOUND
        assert said.replace("2", "N") == unknown.replace("99", "N")
        assert evaluate(prot, ACME, 2, mine.image.data) >= 0.0  # Evaluate resolves as well
        with pytest.raises(grpc.RpcError) as caught:
            evaluate(prot, GLOBEX, 2, mine.image.data)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

        assert publish(reg, GLOBEX, steps=6) == 2  # numbered within globex: its own 2
        time.sleep(CACHE_S + 0.2)
        own = protect(prot, GLOBEX)
        assert own.authorized_model.version == 2
        assert own.image.data not in (base.image.data, mine.image.data)
        assert protect(prot, ACME).image.data == mine.image.data
        code, _ = refusal(prot, ACME, 3)  # the serial of globex's version
        assert code == grpc.StatusCode.NOT_FOUND


def test_a_registry_that_cannot_be_reached_is_unavailable(store: Path) -> None:
    """Nothing is protected for a model that cannot be resolved: UNAVAILABLE (retryable),
    never the shared base in its place."""
    import socket

    from services.inference.backend import InferenceSettings
    from services.protection.app import Settings, build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    settings = Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        tokens=TOKENS,
        registry_url=dead,
        registry_token=SERVICE,
        registry_timeout_s=1.0,
        unauthorized={},
        domain="",  # a random-init classifier: no training domain
        inference=InferenceSettings(
            store=store, models=["veil_classifier", "veil_protect"], surrogates=[]
        ),
    )
    with serve(build_app(settings)) as protecting, grpc.insecure_channel(protecting.target) as ch:
        code, said = refusal(ch, ACME, 0)
    assert code == grpc.StatusCode.UNAVAILABLE and "registry" in said
