"""Train → register → serve from a dataset in a published layout.

A tiny FFHQ (thumbnails and FFHQ-Features JSON, written from synthetic faces by
``tests/support/layouts.py``) goes through ``veil train diffae``, ``veil train probes`` and
``veil train domain``, each registered in a model registry database; a live sanitizer then
serves that encoder with its probes and domain, and a release from it is charged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from services._proto.veil.v1 import common_pb2, sanitizer_pb2_grpc
from services._proto.veil.v1 import sanitizer_pb2 as pb
from services.cli.main import main
from services.common.imaging import encode_image
from services.inference.backend import SANITIZER_MODELS, InferenceSettings
from services.unlearning.trained import TrainedStore
from tests.sanitizer.conftest import DATASET, TENANT_TOKEN
from tests.support import layouts
from tests.support.server import ServerThread, bearer

TINY = ["--resolution", "16", "--z-dim", "8", "--encoder-channels", "8", "--unet-channels",
        "8,8", "--steps", "3", "--batch-size", "4", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def test_a_model_trained_on_ffhq_is_registered_and_served(
    tmp_path: Path, make_sanitizer: Callable[..., ServerThread]
) -> None:
    source = layouts.faces(n=40, seed=5, size=32)
    root = layouts.write_ffhq(tmp_path / "ffhq", source)
    data = f"ffhq://{root}?attributes=male,old,glasses,smiling"
    store, registry = tmp_path / "store", f"sqlite:///{tmp_path / 'registry.sqlite'}"
    where = ["--out", str(store), "--registry-url", registry]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["train", "diffae", "--data", data, "--name", "diffae-ffhq", *TINY, *where,
                 *cache, "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0  # fmt: skip
    assert main(["train", "probes", "--diffae", "diffae-ffhq", "--data", data, "--name",
                 "probes-ffhq", "--threshold", "0", "--no-eraser", "--threads", "1",
                 *where, *cache]) == 0  # fmt: skip
    assert main(["train", "domain", "--model", "diffae-ffhq", "--threads", "1",
                 *where, *cache]) == 0  # fmt: skip
    trained = TrainedStore(registry)
    try:
        names = {r.name: r for r in trained.trained_models()}
    finally:
        trained.close()
    assert {"diffae-ffhq", "probes-ffhq", "domain-diffae-ffhq"} <= set(names)
    assert names["diffae-ffhq"].lineage["data"] == data

    inference = InferenceSettings(store=store, diffae="diffae-ffhq", models=SANITIZER_MODELS)
    server = make_sanitizer(inference=inference, probes="probes-ffhq", default_complement="keep")
    with grpc.insecure_channel(server.target) as channel:
        stub = sanitizer_pb2_grpc.SanitizerStub(channel)
        listed = stub.ListAttributes(pb.ListAttributesRequest(), metadata=bearer(TENANT_TOKEN))
        assert listed.model.name == "diffae-ffhq" and listed.model.training_data == data
        assert [a.name for a in listed.attributes] == ["male", "old", "glasses", "smiling"]
        out = stub.Sanitize(
            pb.SanitizeRequest(
                dataset_id=DATASET,
                subject_id="alice",
                image=common_pb2.Image(data=encode_image(source.pixels(0))),
                epsilon=1.0,
                delta=1e-5,
                face=pb.FaceSelection(whole_image=True),
                allow_out_of_domain=True,
            ),
            metadata=bearer(TENANT_TOKEN),
        )
    assert out.spend_id and out.cost.epsilon == pytest.approx(1.0, rel=1e-3)
    assert out.domain.threshold > 0
