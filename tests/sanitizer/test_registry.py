"""The sanitizer describes its model from the model registry (the unlearning server's
``veil.v1.ModelRegistry``): live, and through its ``ModelRecords`` port.

The unlearning server's model store is the one the sanitizer serves (a copy of the
packaged ``diffae`` and ``probes``), so the server adopts both entries when it starts:
ListAttributes gives the encoder's version 1 and its lineage, current. A newer
registration of ``diffae`` (what ``veil train`` does) shows as version 2, not current,
without a restart; a registry that cannot be reached makes ListAttributes UNAVAILABLE;
without a registry the store's manifests answer. The port's contract runs on
:class:`tests.sanitizer.fakes.FakeRecords` and on
:class:`services.sanitizer.registry.RegistryRecords`, and so does the core's description.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services._proto.veil.v1 import sanitizer_pb2 as pb
from services._proto.veil.v1 import sanitizer_pb2_grpc
from services.common.errors import Unavailable
from services.inference.attributes import AttributeModel, attribute_model
from services.inference.backend import SANITIZER_MODELS, InferenceSettings
from services.kernels.manifests import DEFAULT_ROOT, Manifest, StoreReader, manifest_lineage
from services.runtime.registry import RegistryClient
from services.runtime.settings import TokenGrant
from services.sanitizer.core import Sanitizer
from services.sanitizer.metrics import SanitizerMetrics
from services.sanitizer.pipeline import Pipeline, inline
from services.sanitizer.ports import ModelRecords
from services.sanitizer.registry import RegistryRecords
from services.sanitizer.sessions import SessionStore
from services.sanitizer.settings import SanitizerSettings
from services.unlearning.trained import ADOPTED, TRAINED_BY, TrainedStore, from_manifest
from tests.sanitizer import conftest
from tests.sanitizer.conftest import TENANT_TOKEN, Run, sanitizer_settings
from tests.sanitizer.fakes import FakeKernels, FakeLedger, FakeRecords
from tests.support.server import ServerThread, bearer, free_port, serve
from tests.unlearning.conftest import settings as unlearning_settings

ENTRIES = ("diffae", "probes", "domain-diffae")
REGISTRY_TOKEN = "sanitizer-test-registry"
TOKENS = {
    **conftest.TOKENS,
    REGISTRY_TOKEN: TokenGrant(
        tenant="veil-sanitizer", scopes=["modelregistry:resolve_model"], delegate=True
    ),
}
NEWER = "0" * 64
"""The SHA-256 of a content of an entry registered after the servers started."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged ``diffae``, ``probes`` and ``domain-diffae``, copied: the store both
    servers read."""
    root = tmp_path_factory.mktemp("store")
    for entry in ENTRIES:
        shutil.copytree(DEFAULT_ROOT / entry, root / entry)
    return root


@pytest.fixture(scope="module")
def manifests(store: Path) -> dict[str, Manifest]:
    return {entry: StoreReader(store).manifest(entry) for entry in ENTRIES}


def start_registry(tmp: Path, store: Path) -> ServerThread:
    """An unlearning server on ``store`` (it adopts its entries) that loads no model."""
    from services.unlearning.app import build_app

    settings = unlearning_settings(
        tmp, store, tokens=TOKENS, inference=InferenceSettings(store=store, models=[])
    )
    return ServerThread(build_app(settings))


def register_newer(tmp: Path, manifest: Manifest) -> None:
    """What ``veil train`` does after writing new weights into the entry: register them in
    the unlearning service's database."""
    registry = TrainedStore(f"sqlite:///{tmp / 'unlearning.sqlite'}")
    try:
        registry.register(replace(from_manifest(manifest, TRAINED_BY), sha256=NEWER))
    finally:
        registry.close()


def sanitizer_app(tmp: Path, store: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    """A sanitizer serving ``store`` in-process. ListAttributes charges nothing: the
    accountant is a port where nothing listens."""
    from services.sanitizer.app import build_app

    settings = sanitizer_settings(
        tmp,
        f"127.0.0.1:{free_port()}",
        inference=InferenceSettings(store=store, models=list(SANITIZER_MODELS)),
        **overrides,
    )
    return build_app(settings)


def list_attributes(channel: grpc.Channel) -> pb.ListAttributesResponse:
    stub = sanitizer_pb2_grpc.SanitizerStub(channel)
    return stub.ListAttributes(
        pb.ListAttributesRequest(), metadata=bearer(TENANT_TOKEN), timeout=10
    )


# -- live ---------------------------------------------------------------------------------


def test_list_attributes_follows_the_registry_without_a_restart(
    tmp_path: Path, store: Path, manifests: dict[str, Manifest]
) -> None:
    registry = start_registry(tmp_path, store)
    running = True
    try:
        app = sanitizer_app(
            tmp_path,
            store,
            registry_url=registry.target,
            registry_token=REGISTRY_TOKEN,
            registry_cache_s=0,
            registry_timeout_s=2.0,
        )
        with serve(app) as sanitizer, grpc.insecure_channel(sanitizer.target) as channel:
            model = list_attributes(channel).model
            assert (model.name, model.version, model.current) == ("diffae", 1, True)
            assert model.lineage["sha256"] == manifests["diffae"].sha256
            assert model.lineage["command"] == manifests["diffae"].command
            assert model.lineage["registered_by"] == ADOPTED
            assert model.probes == "probes"
            assert model.probes_lineage["sha256"] == manifests["probes"].sha256
            assert model.probes_lineage["diffae_sha256"] == manifests["diffae"].sha256

            register_newer(tmp_path, manifests["diffae"])
            model = list_attributes(channel).model
            assert (model.version, model.current) == (2, False)
            assert model.lineage["sha256"] == NEWER
            assert model.lineage["registered_by"] == TRAINED_BY
            assert model.probes_lineage["sha256"] == manifests["probes"].sha256
            assert model.resolution == 32 and "synthfaces" in model.training_data

            registry.stop(grace=0)
            running = False
            with pytest.raises(grpc.RpcError) as caught:
                list_attributes(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert "registry" in caught.value.details()  # type: ignore[attr-defined]
    finally:
        if running:
            registry.stop(grace=0)


def test_without_a_registry_the_manifests_describe_the_model(
    tmp_path: Path, store: Path, manifests: dict[str, Manifest]
) -> None:
    with (
        serve(sanitizer_app(tmp_path, store)) as sanitizer,
        grpc.insecure_channel(sanitizer.target) as channel,
    ):
        model = list_attributes(channel).model
    assert (model.name, model.version, model.current) == ("diffae", 0, True)
    assert dict(model.lineage) == manifest_lineage(manifests["diffae"])
    assert model.lineage["sha256"] == manifests["diffae"].sha256
    assert model.lineage["seed"] == str(manifests["diffae"].seed)
    assert model.lineage["data"] == manifests["diffae"].data["uri"]
    assert dict(model.probes_lineage) == manifest_lineage(manifests["probes"])


def test_the_manifests_lineage_is_the_registrys_less_who_registered(
    manifests: dict[str, Manifest],
) -> None:
    """With or without a registry, ListAttributes gives the same keys of a lineage."""
    for manifest in manifests.values():
        registered = dict(from_manifest(manifest, ADOPTED).lineage)
        assert registered.pop("registered_by") == ADOPTED
        assert registered == manifest_lineage(manifest)


# -- the port, on the fake and on the registry ----------------------------------------------


@dataclass
class Records:
    """A ``ModelRecords`` and how to change what it answers."""

    port: ModelRecords
    register_newer: Callable[[str], None]
    """Register a new content (SHA-256 :data:`NEWER`) of an entry."""
    go_down: Callable[[], None]
    """Make the registry unreachable."""


@pytest.fixture(params=["fake", "registry"])
def records(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    store: Path,
    manifests: dict[str, Manifest],
    run: Run[Any],
) -> Iterator[Records]:
    if request.param == "fake":
        fake = FakeRecords()
        for manifest in manifests.values():  # what the unlearning service adopts at start
            fake.register(manifest.name, manifest.sha256, manifest_lineage(manifest))

        def fake_newer(entry: str) -> None:
            fake.register(entry, NEWER, manifest_lineage(manifests[entry]))

        def fake_down() -> None:
            fake.down = True

        yield Records(fake, fake_newer, fake_down)
        return
    registry = start_registry(tmp_path, store)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            registry.stop(grace=0)

    real = RegistryRecords(RegistryClient(registry.target, REGISTRY_TOKEN, 2.0, 0.0))
    yield Records(real, lambda entry: register_newer(tmp_path, manifests[entry]), stop)
    run(real.close())
    stop()


def test_a_record_is_the_newest_registration_for_every_tenant(
    records: Records, manifests: dict[str, Manifest], run: Run[Any]
) -> None:
    port = records.port
    first = run(port.record("acme", "diffae"))
    assert first is not None and first.version == 1
    assert first.sha256 == first.lineage["sha256"] == manifests["diffae"].sha256
    assert run(port.record("globex", "diffae")) == first, "a shared model"
    assert run(port.record("acme", "no-such-entry")) is None
    records.register_newer("diffae")
    newer = run(port.record("acme", "diffae"))
    assert newer is not None and newer.version == 2
    assert newer.sha256 == newer.lineage["sha256"] == NEWER
    probes = run(port.record("acme", "probes"))
    assert probes is not None and (probes.version, probes.sha256) == (
        1,
        manifests["probes"].sha256,
    )


def test_a_registry_that_cannot_be_reached_is_unavailable(records: Records, run: Run[Any]) -> None:
    records.go_down()
    with pytest.raises(Unavailable):
        run(records.port.record("acme", "diffae"))


def test_close_is_idempotent(records: Records, run: Run[Any]) -> None:
    run(records.port.record("acme", "diffae"))
    run(records.port.close())
    run(records.port.close())


# -- the core on each ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(store: Path) -> AttributeModel:
    return attribute_model(InferenceSettings(store=store), "probes")


@pytest.fixture
def make_core(
    tmp_path: Path, model: AttributeModel
) -> Iterator[Callable[[ModelRecords | None], Sanitizer]]:
    stores: list[SessionStore] = []

    def make(records: ModelRecords | None) -> Sanitizer:
        settings = SanitizerSettings(database_url=f"sqlite:///{tmp_path / 'sessions.sqlite'}")
        kernels = FakeKernels(model.space.directions.shape[0], model.resolution)
        store = SessionStore(settings.database_url)
        stores.append(store)
        pipeline = Pipeline(lambda: kernels, model)
        metrics = SanitizerMetrics(CollectorRegistry())
        return Sanitizer(settings, pipeline, store, FakeLedger(), metrics, inline, records)

    yield make
    for store in stores:
        store.close()


def test_the_core_says_whether_its_model_is_the_registrys_current_one(
    records: Records,
    make_core: Callable[[ModelRecords | None], Sanitizer],
    manifests: dict[str, Manifest],
    run: Run[Any],
) -> None:
    core = make_core(records.port)
    described = run(core.describe("acme"))
    assert (described.name, described.probes) == ("diffae", "probes")
    assert (described.version, described.current) == (1, True)
    assert described.lineage["sha256"] == manifests["diffae"].sha256
    assert described.probes_lineage["sha256"] == manifests["probes"].sha256
    records.register_newer("probes")  # a retrained probe set: the encoder stays version 1
    described = run(core.describe("acme"))
    assert (described.version, described.current) == (1, False)
    assert described.probes_lineage["sha256"] == NEWER
    records.go_down()
    with pytest.raises(Unavailable):
        run(core.describe("acme"))


def test_an_entry_the_registry_does_not_know_is_not_current(
    make_core: Callable[[ModelRecords | None], Sanitizer],
    manifests: dict[str, Manifest],
    run: Run[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeRecords()
    diffae = manifests["diffae"]
    fake.register("diffae", diffae.sha256, manifest_lineage(diffae))  # no probes
    core = make_core(fake)
    with caplog.at_level(logging.WARNING, logger="services.sanitizer.description"):
        for _ in range(2):
            described = run(core.describe("acme"))
            assert (described.version, described.current) == (1, False)
            assert described.probes_lineage == manifest_lineage(manifests["probes"])
    warned = [r for r in caplog.records if "does not know 'probes'" in r.getMessage()]
    assert len(warned) == 1, "warned once, not on every call"


def test_without_records_the_core_describes_the_manifests(
    make_core: Callable[[ModelRecords | None], Sanitizer],
    manifests: dict[str, Manifest],
    run: Run[Any],
) -> None:
    described = run(make_core(None).describe("acme"))
    assert (described.version, described.current) == (0, True)
    assert described.lineage == manifest_lineage(manifests["diffae"])
    assert described.probes_lineage == manifest_lineage(manifests["probes"])
