"""``veil demo``: start the local stack, talk to it over gRPC as a product backend would,
print what happened, stop the stack. Uses only public APIs (the CLI and the client)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import grpc

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import common_pb2, diagnostics_pb2
from services.cli.registry import SERVICES
from services.common.imaging import encode_image
from services.runtime.client import VeilClient

DEMO_TOKEN = "demo-token"


def demo_image() -> bytes:
    """A real portrait that ships with scikit-image (the ``data`` extra); without that extra,
    a procedural face of ``synthfaces`` (part of Veil itself)."""
    try:
        from skimage import data
    except ImportError:
        from services.kernels.data.synthfaces import SynthFaces

        return encode_image(SynthFaces(n=1, seed=0, resolution=256).pixels(0), "PNG")
    return encode_image(data.astronaut(), "PNG")


async def _wait_ready(client: VeilClient, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await client.check_health("readiness") == 1:
                return
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the stack did not become ready")
        await asyncio.sleep(0.2)


async def _talk() -> None:
    accountant = SERVICES["accountant"].settings()
    async with VeilClient(f"{accountant.host}:{accountant.port}", token=DEMO_TOKEN) as veil:
        await _wait_ready(veil)
        me = await veil.diagnostics.WhoAmI(diagnostics_pb2.WhoAmIRequest())
        print(f"WhoAmI          tenant={me.tenant_id} service={me.service} version={me.version}")
        image = await veil.diagnostics.InspectImage(
            diagnostics_pb2.InspectImageRequest(image=common_pb2.Image(data=demo_image()))
        )
        print(
            f"InspectImage    {image.format} {image.width}x{image.height} ({image.encoded_bytes} B)"
        )
        try:
            await veil.diagnostics.InspectImage(
                diagnostics_pb2.InspectImageRequest(image=common_pb2.Image(data=b"not an image"))
            )
        except grpc.aio.AioRpcError as err:
            print(f"bad image       {err.code().name}: {err.details()}")
        await _ledger(veil)


async def _ledger(veil: VeilClient) -> None:
    """Budgets for a tenant, a dataset and one data subject; spends until refused."""
    run = uuid.uuid4().hex[:8]  # a fresh dataset per run: the demo ledger file persists
    dataset = f"demo-faces-{run}"
    for scope, epsilon in (
        (pb.BudgetScope(), 1000.0),
        (pb.BudgetScope(dataset_id=dataset), 50.0),
        (pb.BudgetScope(dataset_id=dataset, subject_id="alice"), 8.0),
    ):
        await veil.accountant.PutBudget(
            pb.PutBudgetRequest(budget=pb.Budget(scope=scope, epsilon=epsilon, delta=1e-5))
        )
    print(f"PutBudget       tenant 1000, dataset {dataset} 50, subject alice 8 (δ=1e-5)")
    for i in range(1, 11):
        charge = pb.Charge(
            dataset_id=dataset,
            subject_ids=["alice"],
            event=pb.PrivacyEvent(gaussian=pb.GaussianMechanism(noise_multiplier=1.5)),
            service="demo",
            idempotency_key=f"{run}-release-{i}",
        )
        try:
            receipt = await veil.accountant.Spend(pb.SpendRequest(charge=charge))
        except grpc.aio.AioRpcError as err:
            print(f"Spend #{i}        {err.code().name}: {err.details()}")
            break
        alice = receipt.after[-1]
        spent = alice.epsilon_limit - alice.epsilon_remaining  # min(RDP, tight): both bound ε
        print(
            f"Spend #{i}        cost ε={receipt.cost.epsilon:.3f}; alice has spent ε={spent:.3f}"
            f" of {alice.epsilon_limit:g}"
        )
    status = await veil.accountant.GetBudget(
        pb.GetBudgetRequest(scope=pb.BudgetScope(dataset_id=dataset, subject_id="alice"))
    )
    print(
        f"GetBudget       alice: {status.event_count} events, ε={status.epsilon_spent_rdp:.3f} "
        f"(RDP) / {status.epsilon_spent_tight:.3f} ({status.tight_accountant.upper()})"
    )


def main() -> int:
    env = dict(os.environ)
    env.setdefault("VEIL_ACCOUNTANT_TOKENS", json.dumps({DEMO_TOKEN: {"tenant": "demo"}}))
    stack = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env)
    try:
        asyncio.run(_talk())
    finally:
        stack.send_signal(signal.SIGTERM)
        code = stack.wait(timeout=30)
    print(f"stack stopped (exit {code})")
    return 0 if code == 0 else 1
