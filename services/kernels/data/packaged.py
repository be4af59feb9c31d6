"""Real photographs that ship inside installed packages (scikit-image's ``data`` module).

They need no download, so tests and demos can always use real pixels. They carry **no
sensitive-attribute ground truth**: the LFW subset's only label is ``is_face`` (the first
100 of its 200 images are faces, the last 100 background patches, per its docstring),
and the astronaut portrait has no labels at all. Use them for smoke tests, face/non-face
checks and demos, never to measure attribute leakage.

The in-memory arrays are encoded to PNG and decoded by the common codec, like every
other image source, so the same limits apply everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from services.common.errors import FailedPrecondition
from services.common.imaging import ImageLimits, decode_image, encode_image
from services.kernels.data.base import FaceDataset, fit_square

LFW_FACES = 100
"""``lfw_subset()`` holds 100 faces followed by 100 non-faces."""


def _skimage_data() -> Any:
    """Import ``skimage.data`` lazily: it is the optional ``data`` extra."""
    try:
        from skimage import data
    except ImportError:
        raise FailedPrecondition(
            "packaged datasets need scikit-image: pip install 'veil[data]'"
        ) from None
    return data


def _through_codec(pixels: np.ndarray, resolution: int, limits: ImageLimits | None) -> np.ndarray:
    return fit_square(decode_image(encode_image(pixels), limits).pixels, resolution)


class LfwSubset(FaceDataset):
    """The 200 grey 25×25 LFW crops, upsampled and replicated to RGB; attribute ``is_face``."""

    def __init__(self, resolution: int = 64, limits: ImageLimits | None = None) -> None:
        raw = np.asarray(_skimage_data().lfw_subset())
        grey = np.clip(raw * 255.0 + 0.5, 0, 255).astype(np.uint8) if raw.dtype != np.uint8 else raw
        is_face = (np.arange(len(grey)) < LFW_FACES).astype(np.int64)
        super().__init__(
            sample_ids=[f"lfw-{i:03d}" for i in range(len(grey))],
            attribute_names=("is_face",),
            attributes=is_face[:, None],
            resolution=resolution,
        )
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        self._images = np.stack([_through_codec(img, resolution, limits) for img in rgb])

    def pixels(self, index: int) -> np.ndarray:
        return self._images[index]


class Astronaut(FaceDataset):
    """scikit-image's astronaut portrait (Eileen Collins, public domain): one unlabelled sample."""

    def __init__(self, resolution: int = 64, limits: ImageLimits | None = None) -> None:
        super().__init__(
            sample_ids=["astronaut"],
            attribute_names=(),
            attributes=np.zeros((1, 0), dtype=np.int64),
            resolution=resolution,
        )
        self._image = _through_codec(np.asarray(_skimage_data().astronaut()), resolution, limits)

    def pixels(self, index: int) -> np.ndarray:
        return self._image
