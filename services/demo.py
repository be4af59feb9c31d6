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

import grpc

from services._proto.veil.v1 import common_pb2, diagnostics_pb2
from services.client import VeilClient
from services.common.imaging import encode_image
from services.registry import SERVICES

DEMO_TOKEN = "demo-token"


def demo_image() -> bytes:
    """A real portrait that ships with scikit-image (the ``data`` extra)."""
    from skimage import data

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
