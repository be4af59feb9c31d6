"""A commit whose answer is lost, then an accountant that is down on the retry: the key must
stay claimed (its charge may have landed), and the retry after that must finish under the
one charge — never "use a new key", which would charge twice.

Losing exactly one answer of one RPC is a fault a real accountant cannot be made to show on
demand, so the sanitizer's ledger is the real gRPC client wrapped to drop it (the only
stand-in here; the accountant, its ledger and the sanitizer are real servers)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from services._proto.veil.v1 import accountant_pb2 as apb
from services._proto.veil.v1 import accountant_pb2_grpc, common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.common.errors import Unavailable
from services.common.imaging import encode_image
from services.kernels.data.synthfaces import SynthFaces
from services.sanitizer.ledger import AccountantLedger
from services.sanitizer.ports import ChargeSpec, Held, Spent
from tests.sanitizer.conftest import DATASET, SERVICE_TOKEN, TENANT_TOKEN
from tests.support.server import ServerThread, bearer


class Faulty(AccountantLedger):
    """The real client; ``lose_commit`` drops the answer of a commit that landed,
    ``down`` refuses every call as an unreachable accountant would."""

    lose_commit = False
    down = False

    async def reserve(self, charge: ChargeSpec, lease_s: float) -> Held:
        if self.down:
            raise Unavailable("the accountant is unavailable (test)")
        return await super().reserve(charge, lease_s)

    async def delta(self, charge: ChargeSpec) -> float:
        if self.down:
            raise Unavailable("the accountant is unavailable (test)")
        return await super().delta(charge)

    async def commit(self, tenant: str, reservation_id: str) -> Spent:
        spent = await super().commit(tenant, reservation_id)
        if self.lose_commit:
            raise Unavailable("the answer was lost (test)")
        return spent


def test_a_lost_commit_answer_is_finished_under_its_one_charge(
    accountant: ServerThread, make_sanitizer: Callable[..., ServerThread]
) -> None:
    ledger = Faulty(accountant.target, SERVICE_TOKEN, 5.0)
    running = make_sanitizer(ledger=ledger, commit_attempts=1, claim_lease_s=0.2)
    face = encode_image(SynthFaces(n=4, seed=7, resolution=48).pixels(0))
    request = pb.SanitizeRequest(
        dataset_id=DATASET,
        subject_id="alice",
        image=common_pb2.Image(data=face),
        delta=1e-5,
        epsilon=1.0,
        face=pb.FaceSelection(whole_image=True),
        idempotency_key="lost-1",
    )
    with (
        grpc.insecure_channel(running.target) as channel,
        grpc.insecure_channel(accountant.target) as ledger_channel,
    ):
        stub = sanitizer_pb2_grpc.SanitizerStub(channel)

        def events() -> list[str]:
            found = accountant_pb2_grpc.AccountantStub(ledger_channel).ListEvents(
                apb.ListEventsRequest(), metadata=bearer(TENANT_TOKEN)
            )
            return [e.spend_id for e in found.events]

        ledger.lose_commit = True
        with pytest.raises(grpc.RpcError) as exc:
            stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(events()) == 1  # it landed; its answer did not
        ledger.lose_commit, ledger.down = False, True
        with pytest.raises(grpc.RpcError) as exc:
            stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        ledger.down = False
        out = stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
        assert events() == [out.spend_id]  # the one charge, finished; never a second
        again = stub.Sanitize(request, metadata=bearer(TENANT_TOKEN))
        assert again.replayed and again.image.data == out.image.data
