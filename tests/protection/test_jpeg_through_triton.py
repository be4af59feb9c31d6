"""Protect → JPEG 85 → the authorized model, served by a real Triton, still reads the faces.

The protection service runs on a real gRPC server over a real tritonserver holding the
packaged weights: ``veil_protect`` runs FMD (the service's defaults: ROBUSTNESS_FULL, the
committed surrogates) and ``veil_classifier`` serves the authorized model for the answer's
checks and for ``Evaluate``. :data:`N` held-out faces (synthfaces of seed 21, which no model
was trained on) are protected with :data:`STEPS` steps, and each protected image reaches the
authorized model as a JPEG at quality 85 two ways: the PNG answer re-encoded by the client
(Pillow), and the server's own JPEG answer (``output_encoding`` JPEG, ``jpeg_quality`` 85),
all in one ``ProtectBatch`` stream so that Triton batches them.

Asserted, through ``Evaluate`` (Triton's ``veil_classifier``): on both, the authorized
model's accuracy is at least its accuracy on the originals less one face in :data:`N`
(the bench's rate, ``python -m bench.protection --fmd-robustness full`` on 32 faces: after
JPEG 90 1.000 on the originals → 0.969 on the protected, after JPEG 75 0.938 → 0.969); and
each answer's checks are the returned image, a real JPEG at 70 and at 95, a 0.5x resize and a
2-pixel shift.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from services._proto.veil.v1 import common_pb2, protection_pb2_grpc
from services._proto.veil.v1 import protection_pb2 as pb
from services.common.imaging import decode_image, encode_image
from services.inference.backend import InferenceSettings
from services.kernels.data.synthfaces import SynthFaces
from services.kernels.store import DEFAULT_ROOT
from services.protection.app import Settings, build_app
from services.serving.contract import CLASSIFIER, PROTECT
from services.triton.server import TritonServer
from tests.support.server import bearer, serve, test_settings
from tests.support.triton import copy_repository, free_port_settings

pytestmark = [pytest.mark.triton, pytest.mark.slow]

N = 8
STEPS = 20
QUALITY = 85


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[protection_pb2_grpc.ProtectionStub]:
    pytest.importorskip("pytriton", reason="needs nvidia-pytriton (the bundled tritonserver)")
    root = tmp_path_factory.mktemp("triton")
    repository = copy_repository(root / "repo", DEFAULT_ROOT, models=(CLASSIFIER, PROTECT))
    triton = TritonServer(free_port_settings(repository, startup_timeout_s=120.0)).start()
    try:
        inference = InferenceSettings(
            backend="triton",
            triton_url=triton.grpc_url,
            store=DEFAULT_ROOT,
            models=[CLASSIFIER, PROTECT],
        )
        base = test_settings().model_dump()
        base.pop("metrics_port")
        settings = Settings(**base, metrics_port=None, unauthorized={}, inference=inference)
        with serve(build_app(settings)) as running, grpc.insecure_channel(running.target) as ch:
            yield protection_pb2_grpc.ProtectionStub(ch)
    finally:
        triton.stop()


def jpeg(data: bytes, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_a_protected_face_survives_a_jpeg_85_for_its_owner(
    stub: protection_pb2_grpc.ProtectionStub,
) -> None:
    faces = SynthFaces(n=N, seed=21, resolution=32)
    originals = [encode_image(faces.pixels(i)) for i in range(N)]
    labels = [int(faces.tasks[i]) for i in range(N)]
    params = pb.FmdParams(iterations=STEPS)
    asked = [
        pb.ProtectRequest(
            image=common_pb2.Image(data=data),
            params=params,
            request_id=f"{encoding}{i}",
            output_encoding=encoding,
            jpeg_quality=QUALITY if encoding == pb.IMAGE_ENCODING_JPEG else 0,
        )
        for encoding in (pb.IMAGE_ENCODING_PNG, pb.IMAGE_ENCODING_JPEG)
        for i, data in enumerate(originals)
    ]  # one stream: Triton batches the FMD requests
    answers = {a.request_id: a for a in stub.ProtectBatch(iter(asked), metadata=bearer())}
    assert not [a.error for a in answers.values() if a.HasField("error")]
    pngs = [answers[f"{pb.IMAGE_ENCODING_PNG}{i}"] for i in range(N)]
    jpegs = [answers[f"{pb.IMAGE_ENCODING_JPEG}{i}"] for i in range(N)]
    for png in pngs:
        assert png.robustness == pb.ROBUSTNESS_FULL and png.image.format_hint == "png"
        assert [c.transform for c in png.checks] == [
            "as returned", "jpeg q70", "jpeg q95", "resize 0.5x", "shift 2px"
        ]  # fmt: skip
        assert png.margin == min(c.margin for c in png.checks)
    for answer in jpegs:
        assert decode_image(answer.image.data).format == "JPEG"
        assert answer.image.format_hint == "jpeg"
    client_side = [jpeg(a.image.data, QUALITY) for a in pngs]
    server_side = [a.image.data for a in jpegs]

    for name, protected in (("client JPEG", client_side), ("server JPEG", server_side)):
        pairs = [
            pb.LabeledImage(
                original=common_pb2.Image(data=o), protected=common_pb2.Image(data=p), label=y
            )
            for o, p, y in zip(originals, protected, labels, strict=True)
        ]
        out = stub.Evaluate(pb.EvaluateRequest(images=pairs), metadata=bearer())
        clean, kept = out.authorized_accuracy_original, out.authorized_accuracy_protected
        print(f"{name} q{QUALITY}: authorized {clean:.3f} on the originals -> {kept:.3f}")
        assert out.image_count == N
        assert kept >= clean - 1 / N - 1e-9, (name, clean, kept)
        assert np.isfinite(out.mean_psnr_db) and out.mean_psnr_db > 20  # ε and the codec
