"""The sanitizer's ports, one contract each, run on the in-memory fake and on the real adapter.

``Ledger``: :class:`tests.sanitizer.fakes.FakeLedger` and
:class:`services.sanitizer.ledger.AccountantLedger` charging a real accountant over
loopback gRPC. ``Kernels``: :class:`tests.sanitizer.fakes.FakeKernels` and the in-process
backend with the committed weights. Then the core itself (no server: the pipeline, the
session store on SQLite, the worker pool replaced by ``inline``) releases, replays and is
refused on each ledger, with the fake kernels. (``ModelRecords``, the model registry:
``tests/sanitizer/test_registry.py``.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import AlreadyExists, BudgetExhausted, FailedPrecondition
from services.common.imaging import encode_image
from services.inference.attributes import AttributeModel, attribute_model
from services.inference.backend import InferenceSettings
from services.kernels.data.synthfaces import SynthFaces
from services.sanitizer.core import Caller, Request, Sanitizer
from services.sanitizer.ledger import AccountantLedger
from services.sanitizer.metrics import SanitizerMetrics
from services.sanitizer.pipeline import FaceChoice, Pipeline, inline
from services.sanitizer.ports import ChargeSpec, Kernels, Ledger
from services.sanitizer.sessions import SessionStore
from services.sanitizer.settings import SanitizerSettings
from tests.sanitizer.conftest import DATASET, SERVICE_TOKEN, Run
from tests.sanitizer.fakes import FakeKernels, FakeLedger
from tests.support.server import ServerThread

SUBJECT_EPSILON, DELTA = 10.0, 1e-5
"""The budget ``tests.sanitizer.conftest.accountant`` gives each subject of the dataset."""


@pytest.fixture(params=["fake", "accountant"])
def ledger(request: pytest.FixtureRequest, run: Run[Any]) -> Iterator[Ledger]:
    if request.param == "fake":
        fake = FakeLedger()
        fake.put_budget("acme", DATASET, SUBJECT_EPSILON, DELTA)
        yield fake
        return
    accountant: ServerThread = request.getfixturevalue("accountant")
    # A long deadline: a replayed commit may wait for the accountant's tight figure.
    real = AccountantLedger(accountant.target, SERVICE_TOKEN, 60.0)
    yield real
    run(real.close())


def charge(key: str = "k", multiplier: float = 5.0, **fields: Any) -> ChargeSpec:
    values: dict[str, Any] = {"tenant": "acme", "dataset": DATASET, "subject": "alice"}
    return ChargeSpec(**{**values, **fields}, noise_multiplier=multiplier, key=key)


# -- Ledger ---------------------------------------------------------------------------------


def test_delta_is_the_budgets(ledger: Ledger, run: Run[Any]) -> None:
    assert run(ledger.delta(charge())) == DELTA
    assert run(ledger.ready()) is True


def test_reserve_is_idempotent_by_key(ledger: Ledger, run: Run[Any]) -> None:
    held = run(ledger.reserve(charge("a"), 30))
    assert held.delta == DELTA and not held.replayed and not held.spend_id
    again = run(ledger.reserve(charge("a", request_id="retry"), 30))
    assert again.reservation_id == held.reservation_id and again.replayed
    with pytest.raises(AlreadyExists):
        run(ledger.reserve(charge("a", multiplier=6.0), 30))
    with pytest.raises(AlreadyExists):
        run(ledger.reserve(charge("a", subject="bob"), 30))
    other = run(ledger.reserve(charge("b"), 30))
    assert other.reservation_id != held.reservation_id


def test_commit_is_idempotent_and_states_the_cost(ledger: Ledger, run: Run[Any]) -> None:
    held = run(ledger.reserve(charge("c"), 30))
    spent = run(ledger.commit("acme", held.reservation_id))
    assert spent.spend_id and not spent.replayed and spent.cost is not None
    assert spent.cost.epsilon > 0 and spent.cost.delta == held.delta and spent.cost.accountant
    again = run(ledger.commit("acme", held.reservation_id))
    assert again.spend_id == spent.spend_id and again.replayed
    retried = run(ledger.reserve(charge("c"), 30))
    assert retried.reservation_id == held.reservation_id
    assert retried.replayed and retried.spend_id == spent.spend_id
    with pytest.raises(FailedPrecondition):
        run(ledger.release("acme", held.reservation_id, "too late"))


def test_a_released_reservation_is_never_committed_and_its_key_re_arms_it(
    ledger: Ledger, run: Run[Any]
) -> None:
    held = run(ledger.reserve(charge("r"), 30))
    run(ledger.release("acme", held.reservation_id, "failed"))
    run(ledger.release("acme", held.reservation_id, "failed"))  # idempotent
    with pytest.raises(FailedPrecondition):
        run(ledger.commit("acme", held.reservation_id))
    again = run(ledger.reserve(charge("r"), 30))
    assert again.reservation_id == held.reservation_id and not again.replayed


def test_a_charge_over_the_budget_is_refused(ledger: Ledger, run: Run[Any]) -> None:
    with pytest.raises(BudgetExhausted):
        run(ledger.reserve(charge("big", multiplier=0.05), 30))
    assert run(ledger.reserve(charge("small"), 30)).delta == DELTA


def test_unknown_budgets_and_reservations_are_failed_preconditions(
    ledger: Ledger, run: Run[Any]
) -> None:
    with pytest.raises(FailedPrecondition):
        run(ledger.delta(charge(dataset="no-budget")))
    with pytest.raises(FailedPrecondition):
        run(ledger.reserve(charge("x", dataset="no-budget"), 30))
    with pytest.raises(FailedPrecondition):
        run(ledger.commit("acme", "no-such-reservation"))
    held = run(ledger.reserve(charge("mine"), 30))
    with pytest.raises(FailedPrecondition):  # another tenant's: as if unknown
        run(ledger.commit("globex", held.reservation_id))


def test_close_is_idempotent(ledger: Ledger, run: Run[Any]) -> None:
    run(ledger.ready())
    run(ledger.close())
    run(ledger.close())


# -- Kernels --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> AttributeModel:
    return attribute_model(InferenceSettings(), "probes")


@pytest.fixture(params=["fake", "local"])
def kernels(
    request: pytest.FixtureRequest, model: AttributeModel, run: Run[Any]
) -> Iterator[Kernels]:
    if request.param == "fake":
        yield FakeKernels(model.space.directions.shape[0], model.resolution)
        return
    from services.inference.local import LocalBackend

    local = LocalBackend(InferenceSettings(models=["veil_encoder", "veil_decoder"]))
    yield local
    run(local.close())


def test_kernels_keep_the_shapes_and_the_range(
    kernels: Kernels, model: AttributeModel, run: Run[Any]
) -> None:
    r, d = model.resolution, model.space.directions.shape[0]
    images = np.random.default_rng(1).uniform(-1, 1, (2, 3, r, r)).astype(np.float32)
    z = np.asarray(run(kernels.encode(images)))
    assert z.shape == (2, d) and np.isfinite(z).all()
    x_T = np.random.default_rng(2).standard_normal((2, 3, r, r)).astype(np.float32)
    out = np.asarray(run(kernels.decode(z, x_T, 2)))
    assert out.shape == (2, 3, r, r) and out.min() >= -1.0 and out.max() <= 1.0
    assert np.array_equal(out, np.asarray(run(kernels.decode(z, x_T, 2))))  # deterministic


# -- the core on each ledger ----------------------------------------------------------------


@pytest.fixture
def make_core(tmp_path: Path, model: AttributeModel) -> Iterator[Callable[[Ledger], Sanitizer]]:
    stores: list[SessionStore] = []

    def make(ledger: Ledger) -> Sanitizer:
        settings = SanitizerSettings(
            database_url=f"sqlite:///{tmp_path / 'sessions.sqlite'}", default_ddim_steps=2
        )
        kernels = FakeKernels(model.space.directions.shape[0], model.resolution)
        store = SessionStore(settings.database_url)
        store.create_schema()
        stores.append(store)
        metrics = SanitizerMetrics(CollectorRegistry())
        return Sanitizer(settings, Pipeline(lambda: kernels, model), store, ledger, metrics, inline)

    yield make
    for store in stores:
        store.close()


def face_request() -> Request:
    face = encode_image(SynthFaces(n=4, seed=7, resolution=48).pixels(0))
    return Request(
        dataset=DATASET,
        subject="alice",
        image=face,
        delta=DELTA,
        face=FaceChoice(whole_image=True),
    )


def test_the_core_releases_once_per_key_and_refuses_past_the_budget(
    ledger: Ledger, make_core: Callable[[Ledger], Sanitizer], run: Run[Any]
) -> None:
    core, caller = make_core(ledger), Caller("acme")
    released = run(core.sanitize(caller, face_request(), 1.0, "core-1"))
    assert released.spend_id and not released.replayed and released.image
    assert released.delta == DELTA and released.ledger_delta == DELTA
    assert released.ledger_accountant and released.ledger_epsilon >= released.epsilon * 0.999
    again = run(core.sanitize(caller, face_request(), 1.0, "core-1"))
    assert again.replayed and again.spend_id == released.spend_id
    assert again.image == released.image
    with pytest.raises(BudgetExhausted):
        run(core.sanitize(caller, face_request(), 3 * SUBJECT_EPSILON, "core-2"))
    assert run(core.sanitize(caller, face_request(), 2.0, "core-3")).spend_id  # nothing held
