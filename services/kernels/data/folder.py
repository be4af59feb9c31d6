"""A folder of images plus a CSV of labels: the format most users already have.

``root/labels.csv`` has a header row ``filename,attr1,attr2,...[,task]``; filenames are
paths relative to ``root``. The attribute columns (and optionally a task column) are
chosen by argument, so one CSV can serve several experiments. Every value must be a
small non-negative integer; a bad cell is refused with its file, line and column.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.common.errors import InvalidArgument, NotFound
from services.common.imaging import ImageLimits
from services.kernels.data.base import FaceDataset, load_image_file, resolve_inside

MAX_LABEL = 255
"""Largest label value accepted: attributes are binary or a few levels, not identities."""


def read_label_csv(path: Path, columns: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """(filenames, (N, len(columns)) int64 table, every column name) from a label CSV."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise NotFound(f"label file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidArgument(f"{path} cannot be read as CSV: {exc}") from None
    if "filename" not in header:
        raise InvalidArgument(f"{path}:1: the header needs a 'filename' column; got {header}")
    missing = [name for name in columns if name not in header]
    if missing:
        raise InvalidArgument(f"{path}:1: no column {missing}; columns: {header}")
    where = [header.index(name) for name in columns]
    files, table = [], np.empty((len(rows), len(columns)), dtype=np.int64)
    for row_index, (number, row) in enumerate(rows):
        if len(row) != len(header):
            raise InvalidArgument(f"{path}:{number}: expected {len(header)} cells, got {len(row)}")
        files.append(row[header.index("filename")].strip())
        for col, cell_index in enumerate(where):
            table[row_index, col] = _label(row[cell_index], path, number, columns[col])
    return files, table, header


def _label(cell: str, path: Path, line: int, column: str) -> int:
    try:
        value = int(cell.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_LABEL:
        raise InvalidArgument(
            f"{path}:{line}: column {column!r} must be an integer in [0, {MAX_LABEL}]; got {cell!r}"
        )
    return value


class ImageFolder(FaceDataset):
    """Images under ``root`` labelled by ``root/csv``; checked for existence up front."""

    def __init__(
        self,
        root: str | Path,
        attributes: Sequence[str],
        resolution: int = 64,
        csv_name: str = "labels.csv",
        task: str | None = None,
        num_task_classes: int | None = None,
        limits: ImageLimits | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"image folder {self.root} is not a directory")
        csv_path = resolve_inside(self.root, csv_name, "csv")
        wanted = [*attributes, *([task] if task else [])]
        files, table, _ = read_label_csv(csv_path, wanted)
        self.paths = [resolve_inside(self.root, name, str(csv_path)) for name in files]
        absent = [str(p) for p in self.paths if not p.is_file()]
        if absent:
            raise NotFound(f"{csv_path}: {len(absent)} listed images are missing, e.g. {absent[0]}")
        tasks = table[:, -1] if task else None
        if tasks is not None and num_task_classes is None:
            num_task_classes = int(tasks.max(initial=0)) + 1
        super().__init__(
            sample_ids=[f"folder-{name}" for name in files],
            attribute_names=tuple(attributes),
            attributes=table[:, : len(attributes)],
            resolution=resolution,
            task_name=task,
            tasks=tasks,
            num_task_classes=num_task_classes or 0,
        )
        if tasks is not None and tasks.max(initial=0) >= self.num_task_classes:
            raise InvalidArgument(f"{csv_path}: task {task!r} has labels >= {num_task_classes}")
        self.limits = limits

    def pixels(self, index: int) -> np.ndarray:
        return load_image_file(self.paths[index], self.resolution, self.limits)
