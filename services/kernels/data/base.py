"""The one interface every face dataset implements.

Models, the DP mechanism's attribute probes and the unlearning jobs all need the same
three things per sample: pixels, the sensitive attributes (ground truth for probes and
leakage measurements) and, when there is one, a non-sensitive task label (the utility
that privacy must not destroy). A stable ``sample_id`` lets the unlearning service name
the samples it removes or replaces, so ids never depend on load order.

Images are ``torch.float32`` tensors of shape (3, R, R) in [-1, 1], the range the
diffusion models train on; :func:`to_uint8` goes back to ``uint8`` (R, R, 3) for
encoding. Every source is center-cropped to a square and resized with Pillow's
antialiased Lanczos filter, so non-square photos are never stretched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from services.common.errors import InvalidArgument, InvalidImage, NotFound
from services.common.imaging import ImageLimits, decode_image

NO_TASK = -1
"""Task label of a sample without one: a DataLoader cannot batch ``None``."""


@dataclass(frozen=True)
class Sample:
    """One image with its labels, for code that works on single images (demos, services)."""

    sample_id: str
    image: torch.Tensor = field(repr=False)
    """``float32`` (3, R, R) in [-1, 1]."""
    attributes: Mapping[str, int] = field(default_factory=dict)
    """Sensitive attribute name → value (0/1, or a small level such as a skin-tone bin)."""
    task_label: int | None = None


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """``uint8`` (H, W, 3) → ``float32`` (3, H, W) in [-1, 1]."""
    array = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    return torch.from_numpy(array).float().div_(127.5).sub_(1.0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``float`` (3, H, W) in [-1, 1] → ``uint8`` (H, W, 3), rounding and clipping."""
    scaled = (image.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def fit_square(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Center-crop ``uint8`` (H, W, 3) to a square, then resize it to ``resolution``.

    Cropping (not padding or stretching) keeps face proportions, which carry the very
    attributes we measure; Lanczos is antialiased both ways (down- and upsampling).
    """
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(square).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8)


def load_image_file(path: Path, resolution: int, limits: ImageLimits | None) -> np.ndarray:
    """Read ``path`` through the common decoder and fit it to ``resolution``.

    Errors name the file: a dataset of 200 000 images is useless to debug otherwise.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"image file {path} does not exist") from None
    except OSError as exc:
        raise NotFound(f"image file {path} cannot be read: {exc.strerror}") from None
    try:
        pixels = decode_image(data, limits).pixels
    except InvalidImage as exc:
        raise InvalidImage(f"{path}: {exc.message}", details=exc.details) from exc
    return fit_square(pixels, resolution)


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` escapes named by a label file."""
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise InvalidArgument(f"{where}: image path {relative!r} is outside {root}")
    return root / relative


def check_resolution(resolution: int) -> int:
    """Refuse resolutions no model here can use (and that would make Pillow fail late)."""
    if not 8 <= resolution <= 1024:
        raise InvalidArgument(f"resolution must be in [8, 1024]; got {resolution}")
    return resolution


class FaceDataset(Dataset[dict[str, torch.Tensor]], ABC):
    """Images + a label table; subclasses only say how to get sample ``i``'s pixels.

    ``attributes`` is an (N, A) integer table whose columns follow ``attribute_names``;
    ``tasks`` is (N,) with :data:`NO_TASK` where a sample has none.
    """

    def __init__(
        self,
        *,
        sample_ids: Sequence[str],
        attribute_names: Sequence[str],
        attributes: np.ndarray,
        resolution: int,
        task_name: str | None = None,
        tasks: np.ndarray | None = None,
        num_task_classes: int = 0,
    ) -> None:
        count = len(sample_ids)
        self.sample_ids: tuple[str, ...] = tuple(sample_ids)
        self.attribute_names: tuple[str, ...] = tuple(attribute_names)
        self.attributes = np.asarray(attributes, dtype=np.int64).reshape(count, -1)
        if self.attributes.shape[1] != len(self.attribute_names):
            raise ValueError("attribute table and attribute_names disagree")
        self.resolution = check_resolution(resolution)
        self.task_name = task_name
        self.tasks = (
            np.full(count, NO_TASK, dtype=np.int64) if tasks is None else np.asarray(tasks)
        ).astype(np.int64)
        self.num_task_classes = num_task_classes if task_name is not None else 0

    @abstractmethod
    def pixels(self, index: int) -> np.ndarray:
        """``uint8`` (R, R, 3) of sample ``index``, already at ``self.resolution``."""

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """A dict of tensors, so the default collate function batches it."""
        index = self._check_index(index)
        return {
            "image": from_uint8(self.pixels(index)),
            "attributes": torch.from_numpy(self.attributes[index].copy()),
            "task": torch.tensor(int(self.tasks[index]), dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long),
        }

    def sample(self, index: int) -> Sample:
        """Sample ``index`` with named labels."""
        index = self._check_index(index)
        task = int(self.tasks[index])
        values = map(int, self.attributes[index])
        return Sample(
            sample_id=self.sample_ids[index],
            image=from_uint8(self.pixels(index)),
            attributes=dict(zip(self.attribute_names, values, strict=True)),
            task_label=None if task == NO_TASK else task,
        )

    def describe(self) -> dict[str, Any]:
        """A summary for logs and benchmark tables."""
        return {
            "type": type(self).__name__,
            "size": len(self),
            "resolution": self.resolution,
            "attributes": list(self.attribute_names),
            "task": self.task_name,
            "num_task_classes": self.num_task_classes,
        }

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return index
