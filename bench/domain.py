"""Does the in-domain score tell real photographs from the faces the model was trained on?

    .venv/bin/python -m bench.domain [--n 1000] [--seed 23] [--domain domain-diffae]

The sanitizer's score (``services.kernels.domain``): the Mahalanobis distance of a face's
semantic code from the codes of the autoencoder's training faces, refused above the
threshold its ``domain-<model>`` entry records (the 0.995 quantile of held-out rows of
the training data, ``veil train domain``). Every face takes the service's code path:
``Pipeline.prepare_pixels`` (the face found in a photo, or the whole image), then
``Pipeline.encode`` on the in-process backend, then the entry's score.

Sets:

- **synthfaces**: ``--n`` procedural faces of a seed no model or threshold saw (default 23;
  the models were trained on seed 0, the threshold set on seed 0's held-out rows), sent
  whole as the tests send them;
- **LFW faces**: the 100 faces of scikit-image's ``lfw_subset()``, upscaled 4× to 100 × 100
  (grey, replicated to RGB) and found by the service's face detector (the whole image where
  it finds none);
- **LFW whole**: the same 100 faces sent whole at 25 × 25;
- **astronaut**: scikit-image's portrait, its face found by the detector.

It prints each set's score distribution and refusal rate, and the AUC of the score as a
detector of each real set against the synthetic faces (1.0: every real face scores above
every synthetic one). It does not show that every real photograph is refused, nor that an
input built to score low is in the domain: the score is a guard for honest inputs, not a
defence against an adversary.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

import numpy as np

from services.common.errors import FailedPrecondition
from services.inference.attributes import attribute_model
from services.inference.backend import InferenceSettings
from services.inference.domain import domain_model
from services.inference.local import LocalBackend
from services.kernels.defaults import DEFAULT_DIFFAE, DEFAULT_PROBES
from services.kernels.domain import DomainModel, auc
from services.sanitizer.pipeline import FaceChoice, Pipeline, Prepared
from services.serving.entries import load_domain, read_store

LFW_UPSCALE = 4


def real_sets() -> dict[str, tuple[list[np.ndarray], FaceChoice]]:
    """name → (photos, how the face is chosen), from scikit-image's data module."""
    from PIL import Image
    from skimage import data

    raw = np.asarray(data.lfw_subset())[:100]
    grey = np.clip(raw * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgb = [np.repeat(g[..., None], 3, axis=-1) for g in grey]
    side = grey.shape[1] * LFW_UPSCALE
    big = [np.asarray(Image.fromarray(p).resize((side, side), Image.BILINEAR)) for p in rgb]
    return {
        "LFW faces": (big, FaceChoice()),
        "LFW whole": (rgb, FaceChoice(whole_image=True)),
        "astronaut": ([np.asarray(data.astronaut())], FaceChoice()),
    }


def prepared(pipeline: Pipeline, photos: Sequence[np.ndarray], face: FaceChoice) -> list[Prepared]:
    """Each photo as the service prepares it; the whole image where no face is found."""
    out = []
    for pixels in photos:
        try:
            out.append(pipeline.prepare_pixels(pixels, face))
        except FailedPrecondition:  # no face found: what a caller would then send
            out.append(pipeline.prepare_pixels(pixels, FaceChoice(whole_image=True)))
    return out


async def scores(
    pipeline: Pipeline, domain: DomainModel, faces: list[Prepared], batch: int = 64
) -> np.ndarray:
    codes = [await pipeline.encode(faces[i : i + batch]) for i in range(0, len(faces), batch)]
    return domain.scores(np.concatenate(codes))


def synthetic(n: int, seed: int, resolution: int) -> list[np.ndarray]:
    from services.kernels.data import SynthFaces

    faces = SynthFaces(n=n, seed=seed, resolution=resolution)
    return [faces.pixels(i) for i in range(n)]


async def classifier_scores(
    n: int, seed: int, store: str | None = None, name: str = "veil_classifier"
) -> tuple[dict[str, np.ndarray], float]:
    """The protection service's score (the authorized classifier's penultimate features of
    the whole image at its resolution, ``services.protection.core.to_model``) on each set."""
    from services.inference.catalog import PROTECTION_MODELS, classifier_info
    from services.protection.core import to_model

    settings = InferenceSettings(store=store, models=list(PROTECTION_MODELS), surrogates=[])
    authorized = classifier_info(settings, name)
    domain = domain_model(settings, None, authorized.entry)
    assert domain is not None
    backend = LocalBackend(settings)
    photos = {"synthfaces": synthetic(n, seed, authorized.resolution)}
    photos.update({k: v for k, (v, _) in real_sets().items()})
    out = {}
    try:
        for label, images in photos.items():
            x = np.stack([to_model(p, authorized.resolution) for p in images])
            _, features = await backend.classify(x, model=name, version=1)
            out[label] = domain.scores(np.asarray(features).reshape(len(x), -1))
    finally:
        await backend.close()
    return out, domain.threshold


async def run(args: argparse.Namespace) -> dict[str, np.ndarray]:
    settings = InferenceSettings(store=args.store, diffae=args.diffae)
    backend = LocalBackend(settings)
    try:
        model = attribute_model(settings, args.probes)
        domain = load_domain(read_store(args.store), args.domain, args.diffae)
        pipeline = Pipeline(lambda: backend, model)
        sets = {"synthfaces": (synthetic(args.n, args.seed, model.resolution), FaceChoice(True))}
        sets.update(real_sets())
        out = {}
        for name, (photos, face) in sets.items():
            out[name] = await scores(pipeline, domain, prepared(pipeline, photos, face))
        return out
    finally:
        await backend.close()


def report(results: dict[str, np.ndarray], threshold: float) -> None:
    print(f"{'set':12} {'n':>5} {'median':>7} {'min':>7} {'max':>7} {'refused':>8}")
    for name, s in results.items():
        refused = float(np.mean(s > threshold))
        print(
            f"{name:12} {len(s):5d} {np.median(s):7.2f} {s.min():7.2f} {s.max():7.2f}"
            f" {refused:8.3f}"
        )
    inside = results["synthfaces"]
    real = [s for name, s in results.items() if name != "synthfaces"]
    print(f"\nthreshold {threshold:.3f}; AUC of the score, real set against synthfaces:")
    for name, s in results.items():
        if name != "synthfaces":
            print(f"  {name:12} {auc(inside, s):.4f}")
    print(f"  {'all real':12} {auc(inside, np.concatenate(real)):.4f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="synthetic faces (default 1000)")
    parser.add_argument("--seed", type=int, default=23, help="their seed (default 23)")
    parser.add_argument("--store", default=None, help="model store (default: packaged)")
    parser.add_argument("--diffae", default=DEFAULT_DIFFAE)
    parser.add_argument("--probes", default=DEFAULT_PROBES)
    parser.add_argument("--domain", default=f"domain-{DEFAULT_DIFFAE}")
    parser.add_argument(
        "--classifier",
        default="veil_classifier",
        help="the protection's authorized model as served (empty: skip that part)",
    )
    args = parser.parse_args(argv)
    began = time.perf_counter()
    results = asyncio.run(run(args))
    threshold = load_domain(read_store(args.store), args.domain, args.diffae).threshold
    print(f"bench.domain {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"\nsanitizer: {args.domain} (semantic code z of {args.diffae})")
    report(results, threshold)
    if args.classifier:
        scores, threshold = asyncio.run(
            classifier_scores(args.n, args.seed, args.store, args.classifier)
        )
        print(f"\nprotection: {args.classifier}'s penultimate features (whole image)")
        report(scores, threshold)
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
