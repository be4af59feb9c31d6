"""Serving: the classifier and the decoder in-process vs on Triton, with and without batching.

    .venv/bin/python -m bench.serving [--duration 3] [--concurrency 1,4,16] [--steps 5]
                                      [--delay-us 2000] [--threads 1]

For each model and concurrency (closed loop: N callers, one image per call, each sends its
next call when the last one returns): throughput and p50/p99 latency for (a) LocalBackend,
(b) Triton without dynamic batching, (c) Triton with ``dynamic_batching`` (the delay from
``--delay-us``), then the batching gain at the highest concurrency (c / b throughput), and
Triton's own per-request queue and compute times and mean batch size from its metrics
endpoint. Models are random-init at the default config sizes (resolution 32): speed does
not depend on training. Both servers run from tmp copies of ``triton_models/``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import torch

from services.inference.backend import InferenceBackend, InferenceSettings
from services.inference.factory import create_backend
from services.kernels.classifiers import ClassifierConfig, build_classifier
from services.kernels.diffae import DiffAE, DiffAEConfig
from services.kernels.store import ModelStore
from services.serving.contract import CLASSIFIER, DECODER
from services.triton.repository import render
from services.triton.server import TritonServer
from services.triton.settings import REPO_ROOT, TritonSettings

METRICS = (
    "nv_inference_request_success",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def build_store(root: Path) -> Path:
    """Random-init models at the default sizes, under the default entry names."""
    store = ModelStore(root)
    torch.manual_seed(0)
    diffae_config, clf_config = DiffAEConfig(), ClassifierConfig()
    store.save("diffae", "diffae", DiffAE(diffae_config).state_dict(), diffae_config.to_dict())
    clf = build_classifier(clf_config)
    store.save("task-resnet", "classifier", clf.state_dict(), clf_config.to_dict())
    return root


def copy_repository(root: Path, store: Path, batching: bool, delay_us: int, threads: int) -> Path:
    return render(
        REPO_ROOT / "triton_models",
        root,
        parameters={"store": str(store), "threads": str(threads)},
        batching=batching,
        queue_delay_us=delay_us,
        models=(CLASSIFIER, DECODER),
    )


def scrape(url: str) -> dict[tuple[str, str], float]:
    """(metric, model) → value, summed over versions."""
    values: dict[tuple[str, str], float] = {}
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            match = re.match(r'(\w+)\{.*model="([^"]+)".*\}\s+([0-9.eE+-]+)$', line)
            if match and match[1] in METRICS:
                key = (match[1], match[2])
                values[key] = values.get(key, 0.0) + float(match[3])
    return values


async def load_test(
    call: Callable[[], Awaitable[object]], concurrency: int, duration: float
) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency (ms) of a closed loop."""
    latencies: list[float] = []
    stop = time.monotonic() + duration

    async def caller() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    p50, p99 = np.percentile(np.array(latencies) * 1e3, [50, 99])
    return len(latencies) / elapsed, float(p50), float(p99)


def workloads(steps: int) -> dict[str, Callable[[InferenceBackend], Awaitable[object]]]:
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    z = rng.standard_normal((1, 64)).astype(np.float32)
    noise = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    return {
        CLASSIFIER: lambda b: b.classify(image),
        DECODER: lambda b: b.decode(z, noise, steps),
    }


async def measure(
    settings: InferenceSettings, args: argparse.Namespace, metrics_url: str | None
) -> dict[tuple[str, int], tuple[float, ...]]:
    rows: dict[tuple[str, int], tuple[float, ...]] = {}
    backend = create_backend(settings)
    try:
        for model, work in workloads(args.steps).items():
            await work(backend)  # warm up (loads the model in-process for local)
            for concurrency in args.concurrency:
                before = scrape(metrics_url) if metrics_url else {}
                result = await load_test(lambda w=work: w(backend), concurrency, args.duration)
                extra: tuple[float, ...] = ()
                if metrics_url:
                    after = scrape(metrics_url)
                    delta = {
                        m: after.get((m, model), 0) - before.get((m, model), 0) for m in METRICS
                    }
                    n = max(delta["nv_inference_request_success"], 1)
                    extra = (
                        delta["nv_inference_queue_duration_us"] / n / 1e3,
                        delta["nv_inference_compute_infer_duration_us"] / n / 1e3,
                        n / max(delta["nv_inference_exec_count"], 1),
                    )
                rows[(model, concurrency)] = result + extra
    finally:
        await backend.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")],
                        default=[1, 4, 16])  # fmt: skip
    parser.add_argument("--steps", type=int, default=5, help="DDIM steps per decode")
    parser.add_argument("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (local backend)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, dict[tuple[str, int], tuple[float, ...]]] = {}
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        root = Path(tmp)
        store = build_store(root / "store")
        local = InferenceSettings(backend="local", store=store, models=[CLASSIFIER, DECODER])
        results["local"] = asyncio.run(measure(local, args, None))
        for label, batching in (("triton", False), ("triton+batching", True)):
            repo = copy_repository(root / label, store, batching, args.delay_us, args.threads)
            settings = TritonSettings(model_repository=repo, grpc_port=0, http_port=0,
                                      metrics_port=0, startup_timeout_s=300)  # fmt: skip
            with TritonServer(settings) as server:
                remote = InferenceSettings(backend="triton", triton_url=server.grpc_url,
                                           models=[CLASSIFIER, DECODER], timeout_s=120)  # fmt: skip
                results[label] = asyncio.run(measure(remote, args, server.metrics_url))
    print_table(results, args)
    return 0


def print_table(results: dict[str, dict[tuple[str, int], tuple[float, ...]]], args) -> None:
    print(f"\nserving bench: duration {args.duration}s, decode steps {args.steps}, "
          f"delay {args.delay_us}us, torch threads {args.threads}, {torch.get_num_threads()} "
          f"threads here, resolution 32")  # fmt: skip
    header = "| model | backend | conc | req/s | p50 ms | p99 ms | queue ms | compute ms | batch |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in (CLASSIFIER, DECODER):
        for label, rows in results.items():
            for concurrency in args.concurrency:
                row = rows[(model, concurrency)]
                rps, p50, p99 = row[:3]
                extra = (
                    "| {:.2f} | {:.2f} | {:.2f} ".format(*row[3:])
                    if len(row) > 3
                    else "| - | - | - "
                )
                print(
                    f"| {model} | {label} | {concurrency} | {rps:.1f} | {p50:.1f} | {p99:.1f} "
                    f"{extra}|"
                )
    top = max(args.concurrency)
    for model in (CLASSIFIER, DECODER):
        gain = results["triton+batching"][(model, top)][0] / results["triton"][(model, top)][0]
        print(f"batching gain at concurrency {top}, {model}: {gain:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
