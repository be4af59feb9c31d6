"""A vectorised procedural face renderer with known ground-truth attributes.

Every sample is a row of uniforms drawn from ``np.random.default_rng([seed, index])``
(then its pixel noise from the same stream), so sample ``i`` is identical whether it is
rendered alone or inside any batch. Shapes are soft masks on a per-sample coordinate
grid (ellipses, superellipses and bands with a one-pixel linear edge), evaluated for the
whole batch at once: no per-pixel Python. The grid is resolution-agnostic, so the same
face can be rendered at 32, 64 or 128 pixels.

Attributes live in the pixels, correlated the way real ones are (long hair with the
presentation cue, grey hair and glasses with age, hair colour with skin tone), under
nuisance variation (background, lighting, pose of the whole head, noise) so that no
single pixel gives them away.
"""

from __future__ import annotations

import numpy as np

from services.kernels.data import synthparts as parts

RENDER_VERSION = 1
"""Bumped whenever a change alters pixels or labels, so caches are never stale."""

NUM_UNIFORMS = 40
SKIN = np.array(
    [[0.98, 0.86, 0.78], [0.92, 0.75, 0.62], [0.80, 0.60, 0.45], [0.60, 0.42, 0.30],
     [0.40, 0.27, 0.19]],
    dtype=np.float32,
)  # fmt: skip
SKIN_LEVEL_CDF = np.array([0.25, 0.50, 0.70, 0.85, 1.0])
HAIR = np.array(
    [[0.08, 0.07, 0.07], [0.25, 0.16, 0.10], [0.45, 0.30, 0.18], [0.85, 0.72, 0.45],
     [0.60, 0.25, 0.12]],
    dtype=np.float32,
)  # fmt: skip
POSE_SHIFT = np.array([-0.11, 0.0, 0.11], dtype=np.float32)


def draw_uniforms(seed: int, indices: np.ndarray) -> np.ndarray:
    """(B, NUM_UNIFORMS) uniforms, one independent stream per (seed, index)."""
    return np.stack([np.random.default_rng([seed, int(i)]).random(NUM_UNIFORMS) for i in indices])


def draw_noise(seed: int, indices: np.ndarray, resolution: int) -> np.ndarray:
    """(B, 3, R, R) standard normals: the same streams, after the uniforms."""
    out = np.empty((len(indices), 3, resolution, resolution), dtype=np.float32)
    for row, i in enumerate(indices):
        rng = np.random.default_rng([seed, int(i)])
        rng.random(NUM_UNIFORMS)
        out[row] = rng.standard_normal((3, resolution, resolution), dtype=np.float32)
    return out


def labels(u: np.ndarray) -> dict[str, np.ndarray]:
    """Ground truth from the uniforms alone (no rendering needed).

    Presentation is a fair coin; age is a latent in [0, 1] with ``old`` above 0.6; the
    skin-tone level (0 lightest … 4 darkest) has ``dark_skin`` = level ≥ 3; long hair is
    80% likely for one presentation and 15% for the other; glasses 45% when old, else 15%;
    grey hair follows age with noise; smile is independent; pose (the task) is uniform.
    """
    male = u[:, 0] < 0.5
    age = u[:, 1]
    level = np.searchsorted(SKIN_LEVEL_CDF, u[:, 2], side="right")
    grey = np.clip((age - 0.55) / 0.35 + (u[:, 7] - 0.5) * 0.6, 0.0, 0.95)
    return {
        "male": male.astype(np.int64),
        "old": (age >= 0.6).astype(np.int64),
        "dark_skin": (level >= 3).astype(np.int64),
        "glasses": (u[:, 8] < np.where(age >= 0.6, 0.45, 0.15)).astype(np.int64),
        "smiling": (u[:, 9] < 0.5).astype(np.int64),
        "long_hair": (u[:, 5] < np.where(male, 0.15, 0.8)).astype(np.int64),
        "grey_hair": (grey > 0.4).astype(np.int64),
        "skin_tone": level.astype(np.int64),
        "pose": np.minimum((u[:, 10] * 3).astype(np.int64), 2),
        "_grey": grey.astype(np.float32),
    }


def render(u: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Render ``uint8`` (B, R, R, 3) faces from uniforms and pixel noise."""
    lab = labels(u)
    resolution = noise.shape[-1]
    f32 = u.astype(np.float32)
    g = parts.Grid.make(f32, resolution)
    skin = SKIN[lab["skin_tone"]] * (0.94 + 0.12 * f32[:, 3:4])
    skin[:, 2] *= 0.95 + 0.1 * f32[:, 4]
    hair_index = np.where(lab["dark_skin"] == 1, (f32[:, 6] * 2), f32[:, 6] * 5)
    hair_base = HAIR[np.minimum(hair_index.astype(np.int64), 4)]
    grey = lab["_grey"][:, None]
    hair = hair_base * (1 - grey) + np.array([0.80, 0.80, 0.82], np.float32) * grey
    shift = POSE_SHIFT[lab["pose"]] + (f32[:, 38] - 0.5) * 0.03

    img = parts.background(g, f32)
    parts.hair_back(img, g, hair, f32, lab["long_hair"])
    parts.face(img, g, skin, f32, lab["male"], lab["old"], u[:, 1].astype(np.float32))
    parts.hair_cap(img, g, hair, f32)
    parts.stubble(img, g, noise, f32, lab["male"], shift)
    parts.eyes(img, g, hair_base, f32, lab["male"], shift)
    parts.nose_and_mouth(img, g, skin, f32, lab["smiling"], shift)
    parts.glasses(img, g, f32, lab["glasses"], shift)
    return parts.finish(img, g, noise, f32)
