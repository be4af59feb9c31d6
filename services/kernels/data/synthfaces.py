"""``synthfaces``: procedural faces with known ground truth, always available and fast.

No machine here can download a face dataset, and real ones carry no reliable labels
for what we need to measure (does the sanitizer remove *this* attribute?). These faces
carry exact labels for the sensitive attributes (``male``: a presentation cue of jaw,
brows and hair length; ``old``: wrinkles, sagging and grey hair; ``dark_skin`` from five
skin-tone levels; ``glasses``; ``smiling``) and a non-sensitive task, head ``pose``
(left / frontal / right), which the privacy mechanism should leave intact.

Labels come from the per-sample uniforms alone, so building a dataset of 50 000 costs
under a second; pixels are rendered on demand, in batches by :meth:`SynthFaces.render`,
or all at once by :meth:`SynthFaces.materialize` (cached to an ``.npz`` when asked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from services.common.errors import InvalidArgument
from services.kernels.data import revision, synthrender
from services.kernels.data.base import FaceDataset

ALL_ATTRIBUTES = (
    "male",
    "old",
    "dark_skin",
    "glasses",
    "smiling",
    "long_hair",
    "grey_hair",
    "skin_tone",
)
"""Every label the generator knows; ``skin_tone`` is a level 0–4, the rest are 0/1."""
SENSITIVE_ATTRIBUTES = ALL_ATTRIBUTES[:5]
POSES = ("left", "frontal", "right")
TASK = "pose"


class SynthFaces(FaceDataset):
    """``n`` procedural faces; sample ``i`` depends only on (seed, i, resolution)."""

    def __init__(
        self,
        n: int = 50_000,
        seed: int = 0,
        resolution: int = 64,
        attributes: Sequence[str] = SENSITIVE_ATTRIBUTES,
        cache_dir: str | Path | None = None,
        correlate: Mapping[str, float] | None = None,
        resample: Sequence[str] = (),
        resample_seed: int = 1,
    ) -> None:
        """``correlate`` and ``resample`` make the unlearning variants of
        :mod:`services.kernels.data.revision` (correlation first, then the redraw)."""
        if not 0 < n <= 10_000_000 or seed < 0:
            raise InvalidArgument(f"synthfaces needs 0 < n <= 1e7 and seed >= 0; got {n}, {seed}")
        unknown = sorted(set(attributes) - set(ALL_ATTRIBUTES))
        if unknown:
            raise InvalidArgument(f"unknown attributes {unknown}; synthfaces has {ALL_ATTRIBUTES}")
        self.seed = seed
        uniforms = synthrender.draw_uniforms(seed, np.arange(n))
        if correlate:
            uniforms = revision.correlate(uniforms, seed, correlate)
        if resample:
            uniforms = revision.resample(uniforms, seed, resample, resample_seed)
        self.variant = revision.variant_tag(correlate or {}, tuple(resample), resample_seed)
        self._uniforms = uniforms.astype(np.float32)
        labels = synthrender.labels(self._uniforms)
        super().__init__(
            sample_ids=[f"synth-{seed}-{i:06d}" for i in range(n)],
            attribute_names=tuple(attributes),
            attributes=np.stack([labels[name] for name in attributes], axis=1),
            resolution=resolution,
            task_name=TASK,
            tasks=labels[TASK],
            num_task_classes=len(POSES),
        )
        self.all_labels = {name: labels[name] for name in ALL_ATTRIBUTES}
        """Every known label (not only the chosen attributes), for correlation reports."""
        self._images: np.ndarray | None = None
        if cache_dir is not None:
            self.materialize(cache_dir=cache_dir)

    def render(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``uint8`` (B, R, R, 3) for ``indices``, rendered as one vectorised batch."""
        idx = np.asarray(indices, dtype=np.int64)
        noise = synthrender.draw_noise(self.seed, idx, self.resolution)
        return synthrender.render(self._uniforms[idx], noise)

    def pixels(self, index: int) -> np.ndarray:
        if self._images is not None:
            return self._images[index]
        return self.render([index])[0]

    def materialize(self, block: int = 1024, cache_dir: str | Path | None = None) -> np.ndarray:
        """Render every sample (in blocks of ``block``) and keep them in memory.

        With ``cache_dir``, load ``synthfaces-v{version}-s{seed}-n{n}-r{R}.npz`` if present,
        else write it; the renderer version in the name keeps stale caches out.
        """
        if self._images is not None:
            return self._images
        path = None
        if cache_dir is not None:
            name = f"synthfaces-v{synthrender.RENDER_VERSION}-s{self.seed}-n{len(self)}"
            name += self.variant
            path = Path(cache_dir) / f"{name}-r{self.resolution}.npz"
            if path.is_file():
                with np.load(path) as cached:
                    self._images = cached["images"]
                return self._images
        images = np.empty((len(self), self.resolution, self.resolution, 3), dtype=np.uint8)
        for start in range(0, len(self), block):
            stop = min(start + block, len(self))
            images[start:stop] = self.render(np.arange(start, stop))
        self._images = images
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, images=images)
            tmp.replace(path)
        return images
