"""CelebA-HQ in the layout of its CelebAMask-HQ release.

``root/CelebA-HQ-img/{0..29999}.jpg`` (1024 × 1024) and
``root/CelebAMask-HQ-attribute-anno.txt``, in the format of CelebA's ``list_attr_celeba.txt``
(line 1: the count, line 2: the 40 attribute names, then ``0.jpg v1 … v40`` with −1/1),
parsed by the same strict reader (:func:`services.kernels.data.celeba.read_attributes`).

CelebA-HQ has no split of its own. ``split=all`` (the default) takes every image; ``train``,
``val`` or ``test`` follow CelebA's partition of each image's source, which needs
``root/CelebA-HQ-to-CelebA-mapping.txt`` (as released: a header ``idx orig_idx orig_file``,
then ``0 119613 119614.jpg``) and CelebA's ``root/list_eval_partition.txt``: a model
evaluated on CelebA's test faces then never trained on the same person's CelebA photo.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.common.errors import InvalidArgument
from services.common.imaging import ImageLimits
from services.kernels.data.celeba import (
    DEFAULT_TASK,
    PARTITION_FILE,
    SENSITIVE_ATTRIBUTES,
    CelebA,
    read_lines,
    read_partition,
)

IMAGE_DIR = "CelebA-HQ-img"
ATTR_FILE = "CelebAMask-HQ-attribute-anno.txt"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"


def read_mapping(path: Path) -> dict[str, str]:
    """CelebA-HQ file name (``0.jpg``) → its CelebA source file (``119614.jpg``)."""
    lines = read_lines(path)
    if not lines or lines[0].split() != ["idx", "orig_idx", "orig_file"]:
        raise InvalidArgument(f"{path}:1: expected the header 'idx orig_idx orig_file'")
    mapping: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise InvalidArgument(f"{path}:{number}: expected 'idx orig_idx orig_file'")
        mapping[f"{fields[0]}.jpg"] = fields[2]
    return mapping


class CelebAHQ(CelebA):
    """CelebA-HQ (all of it, or one CelebA split); images decoded lazily."""

    name = "CelebA-HQ"
    image_dir = IMAGE_DIR
    attr_file = ATTR_FILE
    prefix = "celebahq"

    def __init__(
        self,
        root: str | Path,
        resolution: int = 256,
        split: str = "all",
        attributes: Sequence[str] = SENSITIVE_ATTRIBUTES,
        task: str | None = DEFAULT_TASK,
        limits: ImageLimits | None = None,
    ) -> None:
        super().__init__(root, resolution, split, attributes, task, limits)

    def _split(self, files: list[str], wanted: int) -> np.ndarray:
        """Indices of ``files`` whose CelebA source is in CelebA's split ``wanted``."""
        mapping = read_mapping(self.root / MAPPING_FILE)
        partition = read_partition(self.root / PARTITION_FILE)
        unmapped = [f for f in files if mapping.get(f) not in partition]
        if unmapped:
            raise InvalidArgument(
                f"{self.root}: no CelebA split for {unmapped[:3]} (check {MAPPING_FILE} "
                f"and {PARTITION_FILE})"
            )
        return np.array(
            [i for i, f in enumerate(files) if partition[mapping[f]] == wanted], dtype=np.int64
        )
