"""The sanitizer follows the registry's encoder alias (``services.sanitizer.following``).

Live, end to end: a tiny DiffAE trained under ``torchrun`` on 2 gloo ranks, one of them
SIGKILLed and the job restarted from its last checkpoint, is registered (version 2, kept
whole in the store); its probes and in-domain score are trained and registered; a running
sanitizer that follows ``production`` (pinned to version 1 by the operator) keeps serving
version 1 until the operator moves the alias, then serves version 2 — a preview of version
1 is refused MODEL_CHANGED, uncharged — and goes back to version 1 when the alias does.

With fakes: a swap waits for the requests in flight and holds new ones until it is done;
one that cannot be made leaves the old model serving and is counted.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services._proto.veil.v1 import common_pb2, registry_pb2_grpc, sanitizer_pb2_grpc
from services._proto.veil.v1 import registry_pb2 as rpb
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.cli.main import main
from services.common.errors import ModelNotReady
from services.inference.attributes import Generation, attribute_model
from services.inference.backend import SANITIZER_MODELS, InferenceSettings
from services.kernels.manifests import DEFAULT_ROOT, StoreReader
from services.runtime.settings import TokenGrant
from services.sanitizer.following import Follower
from services.sanitizer.metrics import SanitizerMetrics
from services.sanitizer.pipeline import Pipeline
from services.unlearning.trained import TrainedStore
from tests.sanitizer import conftest
from tests.sanitizer.conftest import DATASET, TENANT_TOKEN
from tests.sanitizer.fakes import FakeKernels, FakeRecords
from tests.sanitizer.test_domain import error_info
from tests.support.server import ServerThread, bearer
from tests.support.torchrun import killed_once, rank_output
from tests.unlearning.conftest import settings as unlearning_settings

ENTRIES = ("diffae", "probes", "domain-diffae")
REGISTRY_TOKEN = "following-test-sanitizer"
OPERATOR_TOKEN = "following-test-operator"
TOKENS = {
    **conftest.TOKENS,
    REGISTRY_TOKEN: TokenGrant(
        tenant="veil-sanitizer", scopes=["modelregistry:resolve_model"], delegate=True
    ),
    OPERATOR_TOKEN: TokenGrant(
        tenant="veil-ops", scopes=["modelregistry:set_alias", "modelregistry:promote"]
    ),
}


# -- live: torchrun → registry → alias → a running sanitizer ------------------------------


def _promote(channel: grpc.Channel, version: int) -> None:
    """The operator points ``production`` of ``diffae`` at ``version``."""
    stub = registry_pb2_grpc.ModelRegistryStub(channel)
    moved = stub.SetAlias(
        rpb.SetAliasRequest(
            ref=common_pb2.ModelRef(name="diffae", version=version), alias="production"
        ),
        metadata=bearer(OPERATOR_TOKEN),
        timeout=10,
    )
    assert moved.ref.version == version and "production" in moved.aliases


def _served(stub: sanitizer_pb2_grpc.SanitizerStub, version: int, limit: float = 60) -> Any:
    """The model ListAttributes describes, once the one served is the registry's
    ``version`` (within ``limit`` s): until the swap, the registry names it but the served
    encoder is not it (``current`` false)."""
    deadline = time.monotonic() + limit
    while True:
        model = stub.ListAttributes(
            pb.ListAttributesRequest(), metadata=bearer(TENANT_TOKEN), timeout=10
        ).model
        if model.version == version and model.current:
            return model
        assert time.monotonic() < deadline, f"still serving version {model.version}"
        time.sleep(0.1)


def _preview(stub: sanitizer_pb2_grpc.SanitizerStub, png: bytes) -> pb.CreatePreviewResponse:
    return stub.CreatePreview(
        pb.CreatePreviewRequest(
            dataset_id=DATASET,
            subject_id="alice",
            image=common_pb2.Image(data=png),
            delta=1e-5,
            strengths=[1.0],
            face=pb.FaceSelection(whole_image=True),
            allow_out_of_domain=True,
        ),
        metadata=bearer(TENANT_TOKEN),
        timeout=60,
    )


def _release(stub: sanitizer_pb2_grpc.SanitizerStub, session: str) -> pb.ReleaseResponse:
    return stub.Release(
        pb.ReleaseRequest(session_id=session, epsilon=1.0),
        metadata=bearer(TENANT_TOKEN),
        timeout=60,
    )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_a_model_trained_under_torchrun_is_served_after_the_alias_moves(
    tmp_path: Path,
    make_sanitizer: Callable[..., ServerThread],
    face_png: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out, logs = tmp_path / "run", tmp_path / "logs"
    store = out / "store"
    for entry in ENTRIES:
        shutil.copytree(DEFAULT_ROOT / entry, store / entry)
    database = f"sqlite:///{tmp_path / 'unlearning.sqlite'}"
    from services.unlearning.app import build_app

    registry = ServerThread(
        build_app(
            unlearning_settings(
                tmp_path,
                store,
                database,
                tokens=TOKENS,
                inference=InferenceSettings(store=store, models=[]),
            )
        )
    )
    try:
        channel = grpc.insecure_channel(registry.target)
        assert all((store / f"{entry}-r1").is_dir() for entry in ENTRIES)  # adopted, kept
        _promote(channel, 1)  # the operator pins what serves now
        sanitizer = make_sanitizer(
            inference=InferenceSettings(store=store, models=list(SANITIZER_MODELS)),
            tokens=TOKENS,
            registry_url=registry.target,
            registry_token=REGISTRY_TOKEN,
            registry_cache_s=0,
            encoder_alias="production",
            follow_every_s=0.2,
        )
        stub = sanitizer_pb2_grpc.SanitizerStub(grpc.insecure_channel(sanitizer.target))
        assert _served(stub, 1).resolution == 32
        before = _preview(stub, face_png)

        # veil train diffae under torchrun, one rank killed once: registered as version 2.
        killed_once(out, logs, database)
        trained = StoreReader(store).manifest("diffae")
        assert trained.metrics["ranks"] == 2 and 5 <= trained.metrics["resumed from"] < 40
        assert (rank_output(logs, 0) + rank_output(logs, 1)).count("trained diffae →") == 1
        records = TrainedStore(database)
        try:
            assert [r.number for r in records.trained_versions("diffae")] == [2, 1]
        finally:
            records.close()
        kept = StoreReader(store).manifest("diffae-r2")
        assert kept.sha256 == trained.sha256
        where = ["--out", str(store), "--registry-url", database]
        cache = ["--cache-dir", str(out / "cache"), "--threads", "1"]
        assert main(["train", "probes", "--diffae", "diffae", "--data",
                     "synthfaces://?n=400&seed=1", *where, *cache]) == 0  # fmt: skip
        assert main(["train", "domain", "--model", "diffae", *where, *cache]) == 0
        time.sleep(0.5)  # a few looks at the alias: it still names version 1
        assert _served(stub, 1, limit=0).resolution == 32

        _promote(channel, 2)
        model = _served(stub, 2)
        assert model.resolution == 16 and model.lineage["sha256"] == trained.sha256
        assert model.current and model.probes_lineage["diffae_sha256"] == trained.sha256
        with pytest.raises(grpc.RpcError) as refused:
            _release(stub, before.session_id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(refused).reason == "MODEL_CHANGED"
        after = _preview(stub, face_png)
        domain = StoreReader(store).manifest("domain-diffae").config
        assert after.domain.threshold == pytest.approx(domain["threshold"], rel=1e-6)
        released = _release(stub, after.session_id)
        assert released.spend_id and released.cost.epsilon == pytest.approx(1.0, rel=1e-3)

        _promote(channel, 1)  # a rollback is the same move
        assert _served(stub, 1).resolution == 32
        assert _release(stub, before.session_id).spend_id  # its model serves again
        channel.close()
    finally:
        registry.stop(grace=0)


# -- with fakes: the swap itself ----------------------------------------------------------


class Switch:
    """The backend's :class:`~services.sanitizer.ports.EncoderSwitch`, recorded."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.used: list[str] = []

    async def load_diffae(self, entry: str) -> None:
        self.loaded.append(entry)

    def use_diffae(self, entry: str) -> None:
        self.used.append(entry)


@pytest.fixture
def parts() -> tuple[FakeRecords, Pipeline, Switch, SanitizerMetrics, Any]:
    model = attribute_model(InferenceSettings(), "probes")
    records = FakeRecords()
    records.register("diffae", model.diffae_sha256, {})
    records.register("diffae", "b" * 64, {})
    kernels = FakeKernels(z_dim=model.space.directions.shape[0], resolution=model.resolution)
    pipeline = Pipeline(lambda: kernels, model)
    newer = replace(model, diffae_sha256="b" * 64, resolution=16)
    return records, pipeline, Switch(), SanitizerMetrics(CollectorRegistry()), newer


def _follower(parts: Any, load: Callable[[str], Generation]) -> Follower:
    records, pipeline, switch, metrics, _ = parts
    return Follower(records, "diffae", "production", load, lambda: switch, pipeline, metrics)


def test_a_swap_waits_for_requests_in_flight_and_holds_new_ones(parts: Any) -> None:
    records, pipeline, switch, metrics, newer = parts
    follower = _follower(parts, lambda entry: Generation(entry, newer, None))
    seen: list[tuple[str, int]] = []

    async def request(name: str, hold: asyncio.Event | None = None) -> None:
        async with pipeline.exclusive.using():
            first = pipeline.model.resolution
            if hold is not None:
                await hold.wait()
            assert pipeline.model.resolution == first  # never two models in one request
            seen.append((name, first))

    async def scenario() -> None:
        records.aliases[("diffae", "production")] = 1
        assert await follower.follow_once() is False and follower.version == 1
        records.aliases[("diffae", "production")] = 2
        hold = asyncio.Event()
        old = asyncio.create_task(request("in flight", hold))
        await asyncio.sleep(0.01)
        swap = asyncio.create_task(follower.follow_once())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(request("late"))
        await asyncio.sleep(0.01)
        assert not swap.done() and not late.done() and switch.used == []
        hold.set()
        assert await swap is True
        await asyncio.gather(old, late)

    asyncio.run(scenario())
    assert seen == [("in flight", 32), ("late", 16)]
    assert switch.loaded == switch.used == ["diffae-r2"] and follower.version == 2
    assert metrics.swaps.labels(outcome="swapped")._value.get() == 1
    assert metrics.served._value.get() == 2


def test_a_swap_that_cannot_be_made_leaves_the_old_model_serving(parts: Any) -> None:
    records, pipeline, switch, metrics, _ = parts
    served = pipeline.model

    def missing(entry: str) -> Generation:
        raise ModelNotReady(f"no probes fitted on {entry}")

    async def scenario(follower: Follower) -> None:
        task = asyncio.create_task(follower.run(0.01))
        await asyncio.sleep(0.1)
        task.cancel()

    records.aliases[("diffae", "production")] = 2
    asyncio.run(scenario(_follower(parts, missing)))
    assert pipeline.model is served and switch.used == []
    assert metrics.swaps.labels(outcome="failed")._value.get() >= 2
    # A store entry whose weights are not the registry's version is not served either.
    wrong = _follower(parts, lambda entry: Generation(entry, served, None))
    with pytest.raises(Exception, match="differs from the registry"):
        asyncio.run(wrong.follow_once())
    assert pipeline.model is served and not wrong.synced


def test_the_in_process_backend_switches_encoders_and_triton_refuses(tmp_path: Path) -> None:
    """``load_diffae`` builds an entry's kernels (weights checked) while the old entry
    serves; ``use_diffae`` switches; Triton serves the encoder of its repository and
    refuses, so a follower on it keeps the old model."""
    from services.common.errors import FailedPrecondition
    from services.inference.local import LocalBackend
    from services.inference.remote import TritonBackend

    store = tmp_path / "store"
    shutil.copytree(DEFAULT_ROOT / "diffae", store / "diffae")
    shutil.copytree(DEFAULT_ROOT / "diffae", store / "diffae-r7")
    (store / "broken").mkdir()
    shutil.copy(DEFAULT_ROOT / "diffae" / "manifest.json", store / "broken")
    (store / "broken" / "weights.safetensors").write_bytes(b"not the weights")
    images = np.zeros((1, 3, 32, 32), np.float32)

    async def scenario() -> None:
        backend = LocalBackend(InferenceSettings(store=store, models=list(SANITIZER_MODELS)))
        try:
            before = await backend.encode(images)
            with pytest.raises(ModelNotReady, match="not loaded"):
                backend.use_diffae("diffae-r7")
            with pytest.raises(Exception, match="do not match its manifest"):
                await backend.load_diffae("broken")
            await backend.load_diffae("diffae-r7")
            backend.use_diffae("diffae-r7")
            assert np.allclose(await backend.encode(images), before)  # same weights
            assert {k[2] for k in backend._kernels} == {"diffae-r7"}
        finally:
            await backend.close()
        with pytest.raises(FailedPrecondition, match="repository"):
            await TritonBackend(InferenceSettings(backend="triton")).load_diffae("diffae-r7")

    asyncio.run(scenario())


def test_a_cancelled_request_does_not_hold_the_swap_back(parts: Any) -> None:
    """A call cancelled mid-way (its client went away) leaves the model as it entered:
    the swap waiting on it goes ahead at once."""
    _, pipeline, _, _, newer = parts

    async def scenario() -> None:
        async def hold() -> None:
            async with pipeline.exclusive.using():
                await asyncio.Event().wait()

        held = asyncio.create_task(hold())
        await asyncio.sleep(0.01)

        async def swap() -> None:
            async with pipeline.exclusive.swapping():
                pipeline.install(newer, None)

        swapping = asyncio.create_task(swap())
        await asyncio.sleep(0.01)
        assert not swapping.done()
        held.cancel()
        await asyncio.wait_for(swapping, timeout=2)
        async with pipeline.exclusive.using():  # open again
            assert pipeline.model is newer

    asyncio.run(scenario())


def test_following_needs_a_registry_and_a_well_formed_alias() -> None:
    from pydantic import ValidationError

    from services.sanitizer.settings import SanitizerSettings

    with pytest.raises(ValidationError, match="needs VEIL_SANITIZER_REGISTRY_URL"):
        SanitizerSettings(encoder_alias="production")
    with pytest.raises(ValidationError, match="starting with a letter"):
        SanitizerSettings(encoder_alias="Prod", registry_url="127.0.0.1:1")
    assert SanitizerSettings(encoder_alias="production", registry_url="r:1").follow_every_s == 10
