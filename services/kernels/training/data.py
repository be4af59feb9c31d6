"""Training data held in memory as ``uint8``: a dataset is rendered or decoded once.

synthfaces renders ~300 images/s, so 20 000 images take about a minute; with a cache
directory the pixels are kept as an ``.npz`` and later runs load them in a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.kernels.data import FaceDataset, SynthFaces, open_dataset
from services.kernels.defaults import DEFAULT_CACHE


@dataclass
class ImageTable:
    """Images (N, 3, R, R) ``uint8`` with their labels; ``batch`` converts to [-1, 1]."""

    images: torch.Tensor
    attributes: torch.Tensor
    """(N, A) ``int64``; columns follow ``attribute_names``."""
    tasks: torch.Tensor
    attribute_names: tuple[str, ...]
    num_task_classes: int
    uri: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return self.images[indices].float().div_(127.5).sub_(1.0)

    def split(self, holdout: float) -> tuple[ImageTable, ImageTable]:
        """(train, held-out): the last ``holdout`` fraction is held out (deterministic)."""
        cut = len(self) - max(1, round(len(self) * holdout))
        return self._take(slice(0, cut)), self._take(slice(cut, len(self)))

    def _take(self, part: slice) -> ImageTable:
        return ImageTable(
            self.images[part],
            self.attributes[part],
            self.tasks[part],
            self.attribute_names,
            self.num_task_classes,
            self.uri,
        )


def _pixels(dataset: FaceDataset, cache_dir: Path | None) -> np.ndarray:
    if isinstance(dataset, SynthFaces):
        return dataset.materialize(cache_dir=cache_dir)
    return np.stack([dataset.pixels(i) for i in range(len(dataset))])


def load_table(
    uri: str, resolution: int, cache_dir: str | Path | None = DEFAULT_CACHE
) -> ImageTable:
    """Open ``uri`` at ``resolution`` and hold every image in memory."""
    dataset = open_dataset(uri, resolution=resolution)
    pixels = _pixels(dataset, None if cache_dir is None else Path(cache_dir))
    images = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))
    return ImageTable(
        images=images,
        attributes=torch.from_numpy(dataset.attributes.copy()),
        tasks=torch.from_numpy(dataset.tasks.copy()),
        attribute_names=dataset.attribute_names,
        num_task_classes=dataset.num_task_classes,
        uri=uri,
    )
