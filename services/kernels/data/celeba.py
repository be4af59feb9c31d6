"""CelebA in its published on-disk layout.

``root/img_align_celeba/*.jpg``; ``root/list_attr_celeba.txt`` (line 1: the count, line 2:
the 40 attribute names, then ``filename v1 … v40`` with values −1/1); and
``root/list_eval_partition.txt`` (``filename 0|1|2`` = train/val/test). Labels are mapped
−1/1 → 0/1. Every malformed line is refused with its file and line number, because a
silently skipped row would shift the labels of every later image.

Default task: ``Mouth_Slightly_Open``. It is balanced (about 48% positive), visual, and
neither demographic nor identity-revealing, unlike ``Attractive`` (a subjective label
known to track gender and age) or ``Wearing_Hat`` (5% positive). It does correlate with
``Smiling``: protecting ``Smiling`` will cost some task accuracy, which is a real
trade-off the unlearning reports should show, not hide.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.common.errors import InvalidArgument, NotFound
from services.common.imaging import ImageLimits
from services.kernels.data.base import FaceDataset, load_image_file

SENSITIVE_ATTRIBUTES = ("Male", "Young", "Pale_Skin", "Eyeglasses", "Smiling")
DEFAULT_TASK = "Mouth_Slightly_Open"
SPLITS = {"train": 0, "val": 1, "test": 2}
IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, filenames, (N, 40) int8 table in {0, 1}) from ``list_attr_celeba.txt``."""
    lines = read_lines(path)
    if len(lines) < 2:
        raise InvalidArgument(f"{path}: expected a count line and a header line")
    try:
        count = int(lines[0].strip())
    except ValueError:
        message = f"{path}:1: expected the number of images, got {lines[0]!r}"
        raise InvalidArgument(message) from None
    names = lines[1].split()
    rows = [(n, line) for n, line in enumerate(lines[2:], start=3) if line.strip()]
    if len(rows) != count:
        raise InvalidArgument(f"{path}: line 1 says {count} images but {len(rows)} follow")
    files, table = [], np.empty((count, len(names)), dtype=np.int8)
    for row, (number, line) in enumerate(rows):
        fields = line.split()
        if len(fields) != len(names) + 1:
            raise InvalidArgument(
                f"{path}:{number}: expected a filename and {len(names)} values, "
                f"got {len(fields)} fields"
            )
        if any(value not in ("-1", "1") for value in fields[1:]):
            raise InvalidArgument(f"{path}:{number}: attribute values must be -1 or 1")
        if "/" in fields[0] or "\\" in fields[0] or fields[0].startswith("."):
            raise InvalidArgument(f"{path}:{number}: {fields[0]!r} is not a plain file name")
        files.append(fields[0])
        table[row] = [value == "1" for value in fields[1:]]
    return names, files, table


def read_partition(path: Path) -> dict[str, int]:
    """filename → 0 (train), 1 (val) or 2 (test) from ``list_eval_partition.txt``."""
    partition: dict[str, int] = {}
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise InvalidArgument(f"{path}:{number}: expected 'filename 0|1|2', got {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise NotFound(f"CelebA file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{path} cannot be read: {exc}") from None


def columns_of(names: list[str], wanted: Sequence[str], path: Path) -> list[int]:
    missing = [name for name in wanted if name not in names]
    if missing:
        raise InvalidArgument(f"{path}: no attribute {missing}; available: {names}")
    return [names.index(name) for name in wanted]


class CelebA(FaceDataset):
    """One split of CelebA; images are decoded lazily, labels parsed and checked up front.
    (:class:`services.kernels.data.celebahq.CelebAHQ` is the same with its own files.)"""

    name = "CelebA"
    image_dir = IMAGE_DIR
    attr_file = ATTR_FILE
    prefix = "celeba"

    def __init__(
        self,
        root: str | Path,
        resolution: int = 64,
        split: str = "train",
        attributes: Sequence[str] = SENSITIVE_ATTRIBUTES,
        task: str | None = DEFAULT_TASK,
        limits: ImageLimits | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"{self.name} root {self.root} is not a directory")
        if split not in (*SPLITS, "all"):
            raise InvalidArgument(f"split must be one of {[*SPLITS, 'all']}; got {split!r}")
        attr_path = self.root / self.attr_file
        names, files, table = read_attributes(attr_path)
        keep = np.arange(len(files)) if split == "all" else self._split(files, SPLITS[split])
        keep = keep.astype(np.int64)
        self.files = [files[i] for i in keep]
        columns = columns_of(names, attributes, attr_path)
        task_columns = columns_of(names, [task], attr_path) if task else []
        super().__init__(
            sample_ids=[f"{self.prefix}-{name}" for name in self.files],
            attribute_names=tuple(attributes),
            attributes=table[keep][:, columns].reshape(len(keep), len(columns)),
            resolution=resolution,
            task_name=task,
            tasks=table[keep, task_columns[0]] if task_columns else None,
            num_task_classes=2,
        )
        self.limits = limits

    def _split(self, files: list[str], wanted: int) -> np.ndarray:
        """Indices of ``files`` in split ``wanted`` (0, 1, 2) by ``list_eval_partition.txt``."""
        partition_path = self.root / PARTITION_FILE
        partition = read_partition(partition_path)
        unlisted = [name for name in files if name not in partition]
        if unlisted:
            raise InvalidArgument(f"{partition_path}: no split for {unlisted[:3]} …")
        return np.array([i for i, f in enumerate(files) if partition[f] == wanted])

    def pixels(self, index: int) -> np.ndarray:
        path = self.root / self.image_dir / self.files[index]
        return load_image_file(path, self.resolution, self.limits)
