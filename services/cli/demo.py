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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from services._proto.veil.v1 import accountant_pb2 as pb
from services._proto.veil.v1 import common_pb2, diagnostics_pb2
from services.cli.registry import SERVICES
from services.cli.up import REGISTRY_CLIENTS
from services.common.imaging import encode_image
from services.runtime.client import VeilClient

DEMO_TOKEN = "demo-token"
SUBJECT_TOKEN = "demo-alice"
"""A data subject's own token: previews of alice's photos are shown to alice only."""
SANITIZER_TOKEN = "demo-sanitizer"
"""The sanitizer's delegate token at the accountant (it charges its callers' tenants)."""
REGISTRY_TOKENS = {client: f"demo-{client}-registry" for client in REGISTRY_CLIENTS}
"""The delegate token each client of the model registry presents there (protection
resolves its callers' models, the sanitizer reads its encoder's record)."""


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


REFERENCE_STEPS = "20"
"""Steps of the demo's retrained reference (unless VEIL_UNLEARNING_REFERENCE_STEPS says)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each step of the journey does; every step runs either way."""

    fmd_iterations: int = 0
    """FMD's steps per face (0: the service's default, 100)."""
    unlearning_steps: str = "20"
    reference_steps: str = REFERENCE_STEPS


QUICK = Sizes(fmd_iterations=20, unlearning_steps="5", reference_steps="5")
"""``veil demo --quick``: the installed-wheel test in CI runs it."""


async def _talk(sizes: Sizes) -> None:
    accountant = SERVICES["accountant"].settings()
    async with VeilClient(f"{accountant.host}:{accountant.port}", token=DEMO_TOKEN) as veil:
        await _wait_ready(veil, timeout=300)  # `up` starts tritonserver first (~40 s on a CPU)
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
    sanitizer = SERVICES["sanitizer"].settings()
    async with (
        VeilClient(f"{sanitizer.host}:{sanitizer.port}", token=DEMO_TOKEN) as backend,
        VeilClient(f"{sanitizer.host}:{sanitizer.port}", token=SUBJECT_TOKEN) as alice,
        VeilClient(f"{accountant.host}:{accountant.port}", token=DEMO_TOKEN) as ledger,
    ):
        await _wait_ready(backend, timeout=180)
        await _sanitize(backend, alice, ledger)
    protection = SERVICES["protection"].settings()
    async with VeilClient(f"{protection.host}:{protection.port}", token=DEMO_TOKEN) as veil:
        await _wait_ready(veil, timeout=180)
        await _protect(veil, sizes.fmd_iterations)
    unlearning = SERVICES["unlearning"].settings()
    async with VeilClient(f"{unlearning.host}:{unlearning.port}", token=DEMO_TOKEN) as veil:
        await _wait_ready(veil, timeout=180)
        await _unlearn(veil, sizes)


PROTECTED_FACES = 6
"""Held-out faces the demo protects (synthfaces seed 7, which no model was trained on)."""


async def _protect(veil: VeilClient, iterations: int) -> None:
    """Faces protected for the served pose model (FMD, the service's defaults, streamed
    through ProtectBatch; then the fast mode), and what the authorized model and the
    unauthorized ones (which the protection never ran) make of them, via Evaluate."""
    from services._proto.veil.v1 import protection_pb2 as ppb
    from services.kernels.data.synthfaces import SynthFaces

    faces = SynthFaces(n=PROTECTED_FACES, seed=7, resolution=32)
    originals = [encode_image(faces.pixels(i)) for i in range(PROTECTED_FACES)]
    labels = [int(faces.tasks[i]) for i in range(PROTECTED_FACES)]
    for mode in (ppb.PROTECTION_MODE_FMD, ppb.PROTECTION_MODE_FAST):
        name = ppb.ProtectionMode.Name(mode).removeprefix("PROTECTION_MODE_")

        requests = [
            ppb.ProtectRequest(
                image=common_pb2.Image(data=data),
                mode=mode,
                request_id=str(i),
                params=ppb.FmdParams(iterations=iterations),
            )
            for i, data in enumerate(originals)
        ]

        async def items(batch: list[Any] = requests) -> AsyncIterator[Any]:
            for item in batch:
                yield item

        started = time.perf_counter()
        answers = {}
        async for answer in veil.protection.ProtectBatch(items()):
            answers[int(answer.request_id)] = answer
        took = time.perf_counter() - started
        first = answers[0]
        print(
            f"ProtectBatch    {name:<4} {len(answers)} faces in {took:5.1f} s: pose kept "
            f"{sum(a.authorized_prediction_after == a.authorized_label for a in answers.values())}"
            f"/{len(answers)}, linf {first.linf * 255:.0f}/255, PSNR {first.psnr_db:.1f} dB, "
            f"{first.steps_run} steps"
        )
        pairs = [
            ppb.LabeledImage(
                original=common_pb2.Image(data=data), protected=answers[i].image, label=labels[i]
            )
            for i, data in enumerate(originals)
        ]
        result = await veil.protection.Evaluate(ppb.EvaluateRequest(images=pairs))
        print(
            f"Evaluate        {name:<4} authorized {result.authorized_accuracy_original:.2f} → "
            f"{result.authorized_accuracy_protected:.2f}; "
            + "; ".join(
                f"{m.model.name} {m.accuracy_original:.2f} → {m.accuracy_protected:.2f}"
                for m in result.unauthorized
            )
        )


async def _unlearn(veil: VeilClient, sizes: Sizes) -> None:
    """The dataset the served classifier was trained on is revised (200 faces replaced by
    copies whose perceived gender is redrawn); a feature-unlearning job makes the next
    version, watched to completion, then served; its report sits beside retraining's."""
    from services._proto.veil.v1 import unlearning_pb2 as upb
    from services.kernels.store import ModelStore

    base = ModelStore().manifest("task-resnet").data["uri"]
    seed = base.split("seed=")[-1].split("&")[0]
    revision = upb.DatasetRevision(
        dataset_uri=f"{base}&resample=male&resample_seed=1",
        replaced_sample_ids=[f"synth-{seed}-{i:06d}" for i in range(200)],
    )
    job = await veil.unlearning.SubmitJob(
        upb.SubmitJobRequest(
            base_model=common_pb2.ModelRef(name="veil_classifier"),
            revision=revision,
            forget_attributes=["male"],
            method=upb.UNLEARNING_METHOD_FEATURE,
            options={"steps": sizes.unlearning_steps, "fit_samples": "500"},
            idempotency_key=f"demo-{uuid.uuid4().hex[:8]}",
        )
    )
    print(f"SubmitJob       {job.status.job_id[:8]}… feature unlearning of 'male', 200 replaced")
    last = ""
    async for event in veil.unlearning.WatchJob(upb.WatchJobRequest(job_id=job.status.job_id)):
        state = common_pb2.JobState.Name(event.status.state).removeprefix("JOB_STATE_")
        if f"{state}/{event.phase}" != last:
            last = f"{state}/{event.phase}"
            print(f"WatchJob        {state:<9} {event.phase:<10} {event.status.progress:4.0%}")
        if event.status.state == common_pb2.JOB_STATE_FAILED:
            print(f"WatchJob        failed: {event.status.message}")
            return
    done = await veil.unlearning.GetJob(upb.GetJobRequest(job_id=job.status.job_id))
    served = await veil.unlearning.GetModelVersion(
        upb.GetModelVersionRequest(ref=common_pb2.ModelRef(name="veil_classifier"))
    )
    state = upb.ModelVersionState.Name(served.state).removeprefix("MODEL_VERSION_STATE_")
    print(f"GetModelVersion veil_classifier v{served.ref.version} {state} ({served.method} of v1)")
    report, ref = done.report, done.report.retrain_reference
    leak = {x.attribute: x.probe_accuracy for x in report.leakage}
    ref_leak = {x.attribute: x.probe_accuracy for x in ref.leakage}
    print("report          method      task acc  'male' probe  MIA AUC  wall s")
    print(
        f"                feature     {report.task_accuracy:8.3f}  {leak['male']:12.3f}  "
        f"{report.membership_inference_auc:7.3f}  {report.wall_seconds:6.1f}"
    )
    print(
        f"                retrain*    {ref.task_accuracy:8.3f}  {ref_leak['male']:12.3f}  "
        f"{ref.membership_inference_auc:7.3f}  {ref.wall_seconds:6.1f}"
    )
    steps = os.environ.get("VEIL_UNLEARNING_REFERENCE_STEPS", sizes.reference_steps)
    print(
        f"                * retraining cut to {steps} steps to keep the demo short, so its "
        "accuracy is no reference here; `python -m bench.unlearning` has the real one"
    )


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


def lfw_faces(count: int) -> list[bytes]:
    """A few real faces from scikit-image's LFW subset (25×25 grey crops), or procedural
    faces without the ``data`` extra."""
    try:
        from skimage import data
    except ImportError:
        return synthetic_faces(count)
    images = data.lfw_subset()[:count]  # the first 100 are faces
    return [encode_image((img * 255).round().astype("uint8"), "PNG") for img in images]


def synthetic_faces(count: int) -> list[bytes]:
    """Procedural faces of a seed the default model never saw: inside its domain."""
    from services.kernels.data.synthfaces import SynthFaces

    faces = SynthFaces(n=count, seed=3, resolution=32)
    return [encode_image(faces.pixels(i), "PNG") for i in range(count)]


async def _sanitize(backend: VeilClient, alice: VeilClient, ledger: VeilClient) -> None:
    """Alice's real portrait is outside the default model's domain: refused, then previewed
    with ``allow_out_of_domain`` at three strengths; she releases one and runs out of
    budget. The product backend sends two LFW faces (refused, nothing charged) and two
    synthetic ones (charged) in one batch."""
    import tempfile
    from pathlib import Path

    from services._proto.veil.v1 import sanitizer_pb2 as spb

    out = Path(os.environ.get("VEIL_DEMO_OUT") or tempfile.mkdtemp(prefix="veil-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    dataset = f"demo-photos-{uuid.uuid4().hex[:8]}"  # the tenant budget is _ledger's
    await ledger.accountant.PutBudget(
        pb.PutBudgetRequest(
            budget=pb.Budget(
                scope=pb.BudgetScope(dataset_id=dataset),
                epsilon=100.0,
                delta=1e-5,
                subject_default=pb.SubjectDefault(epsilon=3.0, delta=1e-5),
            )
        )
    )
    print(f"PutBudget       dataset {dataset} 100, every subject 3 by default (δ=1e-5)")
    info = await backend.sanitizer.ListAttributes(spb.ListAttributesRequest())
    names = ", ".join(a.name for a in info.attributes)
    model = info.model
    registered = "current" if model.current else "a newer one is registered"
    print(
        f"ListAttributes  {names}; model {model.name} version {model.version} ({registered}) "
        f"at {model.resolution}x{model.resolution}, trained on {model.training_data}"
    )
    photo = common_pb2.Image(data=demo_image())
    ask = spb.CreatePreviewRequest(
        dataset_id=dataset, subject_id="alice", image=photo, strengths=[0.5, 2.0, 8.0],
        delta=1e-5,
    )  # fmt: skip
    try:
        preview = await alice.sanitizer.CreatePreview(ask)
    except grpc.aio.AioRpcError as err:  # a real photo: the default model knows synthfaces
        if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        print(f"CreatePreview   {err.code().name}: {err.details()}")
        ask.allow_out_of_domain = True
        preview = await alice.sanitizer.CreatePreview(ask)
        score = preview.domain
        print(
            f"CreatePreview   allow_out_of_domain: score {score.score:.2f} > threshold "
            f"{score.threshold:.2f} ({score.method}; for alice only: logged nowhere)"
        )
    box = preview.face_box
    for c in preview.candidates:
        (out / f"preview-eps{c.epsilon:g}.png").write_bytes(c.image.data)
    print(
        f"CreatePreview   face at {box.x},{box.y} {box.width}x{box.height}; "
        f"{len(preview.candidates)} candidates (ε 0.5, 2, 8), free, written to {out}"
    )
    release = await alice.sanitizer.Release(
        spb.ReleaseRequest(
            session_id=preview.session_id, epsilon=2.0, idempotency_key=f"{dataset}-alice"
        )
    )
    (out / "released.png").write_bytes(release.image.data)
    per = ", ".join(f"{a.attribute} {a.epsilon:.2f}" for a in release.cost.per_attribute)
    print(
        f"Release         ε={release.cost.epsilon:.3f} at δ={release.cost.delta:g} "
        f"(Lemma 1 figure {release.rdp_epsilon:.3f}); per attribute: {per}"
    )
    status = await ledger.accountant.GetBudget(
        pb.GetBudgetRequest(scope=pb.BudgetScope(dataset_id=dataset, subject_id="alice"))
    )
    print(
        f"Ledger          alice: {status.event_count} charge (spend {release.spend_id[:8]}…), "
        f"ε spent {status.epsilon_spent:.3f} of {status.epsilon_limit:g}"
    )
    for attempt in range(1, 4):
        try:
            await backend.sanitizer.Sanitize(
                spb.SanitizeRequest(
                    dataset_id=dataset,
                    subject_id="alice",
                    image=photo,
                    epsilon=2.0,
                    delta=1e-5,
                    allow_out_of_domain=True,
                )
            )
            print(f"Sanitize #{attempt}     alice again at ε=2: released")
        except grpc.aio.AioRpcError as err:
            print(f"Sanitize #{attempt}     {err.code().name}: {err.details()}")
            break

    faces = [(f"lfw-{i}", face) for i, face in enumerate(lfw_faces(2))]
    faces += [(f"synth-{i}", face) for i, face in enumerate(synthetic_faces(2))]

    async def items():
        for item_id, face in faces:
            yield spb.SanitizeBatchRequest(
                item_id=item_id,
                request=spb.SanitizeRequest(
                    dataset_id=dataset,
                    subject_id=item_id,
                    image=common_pb2.Image(data=face),
                    epsilon=1.0,
                    delta=1e-5,
                    face=spb.FaceSelection(whole_image=True),
                ),
            )

    async for answer in backend.sanitizer.SanitizeBatch(items()):
        if answer.HasField("error"):
            error = answer.error
            score = error.metadata.get("score", "-")
            print(f"SanitizeBatch   {answer.item_id}: {error.reason} (score {score}), not charged")
            continue
        (out / f"{answer.item_id}.png").write_bytes(answer.result.image.data)
        print(
            f"SanitizeBatch   {answer.item_id}: ε={answer.result.cost.epsilon:g} charged "
            f"({answer.done} done, {answer.failed} failed)"
        )


def main(quick: bool = False) -> int:
    sizes = QUICK if quick else Sizes()
    env = dict(os.environ)
    grants = {
        DEMO_TOKEN: {"tenant": "demo"},
        SANITIZER_TOKEN: {"tenant": "veil", "scopes": ["accountant:*"], "delegate": True},
    }
    subject_scopes = ["sanitizer:create_preview", "sanitizer:release", "sanitizer:cancel_preview"]
    env.setdefault("VEIL_ACCOUNTANT_TOKENS", json.dumps(grants))
    env.setdefault(
        "VEIL_SANITIZER_TOKENS",
        json.dumps(
            {
                DEMO_TOKEN: {"tenant": "demo"},
                SUBJECT_TOKEN: {"tenant": "demo", "subject": "alice", "scopes": subject_scopes},
            }
        ),
    )
    env.setdefault("VEIL_SANITIZER_ACCOUNTANT_TOKEN", SANITIZER_TOKEN)
    registry_grant = {
        "tenant": "veil",
        "scopes": ["modelregistry:resolve_model"],
        "delegate": True,
    }
    unlearning_grants: dict[str, Any] = {DEMO_TOKEN: {"tenant": "demo"}}
    for service, token in REGISTRY_TOKENS.items():
        unlearning_grants[token] = registry_grant
        env.setdefault(f"VEIL_{service.upper()}_REGISTRY_TOKEN", token)
    env.setdefault("VEIL_UNLEARNING_TOKENS", json.dumps(unlearning_grants))
    env.setdefault("VEIL_PROTECTION_TOKENS", json.dumps({DEMO_TOKEN: {"tenant": "demo"}}))
    # A short retrained reference: the demo compares against it, it does not need a good one.
    env.setdefault("VEIL_UNLEARNING_REFERENCE_STEPS", sizes.reference_steps)
    stack = subprocess.Popen([sys.executable, "-m", "services.cli", "up"], env=env)
    try:
        asyncio.run(_talk(sizes))
    finally:
        stack.send_signal(signal.SIGTERM)
        code = stack.wait(timeout=30)
    print(f"stack stopped (exit {code})")
    return 0 if code == 0 else 1
