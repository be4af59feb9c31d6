"""FFHQ in its published layout, with attributes from the FFHQ-Features JSON where given.

``root/images1024x1024/00000/00000.png`` … ``69000/69999.png`` (70 folders of 1000; or
``thumbnails128x128/`` alike, or any folder named by ``images=``). FFHQ ships no labels: an
autoencoder trains on the images alone (``attributes=`` empty, ``--attribute-weight 0``).
Attributes come from the FFHQ-Features dataset (``features=json``: ``root/json/00000.json``,
a list holding one face's Azure Face API record, ``faceAttributes`` with ``gender``,
``age``, ``glasses``, ``smile``), mapped to this project's names:

    male      gender == "male"          old       age >= OLD_AGE
    glasses   glasses != "NoGlasses"    smiling   smile >= 0.5

An image whose JSON holds no face (an empty list: the API found none) is left out, and so
said in :attr:`FFHQ.skipped`; a JSON that is not such a record is refused with its path.
Images are ordered by number; a missing folder or file is NotFound at load time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument, NotFound
from services.common.imaging import ImageLimits
from services.kernels.data.base import FaceDataset, load_image_file

IMAGE_DIRS = ("images1024x1024", "thumbnails128x128")
FEATURES_DIR = "json"
ATTRIBUTES = ("male", "old", "glasses", "smiling")
OLD_AGE = 50.0
"""Age from which a face counts as ``old`` (the Face API's estimate, in years)."""


def _numbered(directory: Path) -> list[str]:
    """``00000/00000.png``-style relative paths under ``directory``, by number."""
    found = sorted(directory.glob("[0-9][0-9][0-9][0-9][0-9]/[0-9][0-9][0-9][0-9][0-9].png"))
    return [f"{p.parent.name}/{p.name}" for p in found]


def _label(record: Any, path: Path) -> dict[str, int] | None:
    """The four attributes of one FFHQ-Features file (None: no face in it)."""
    if record == []:
        return None
    try:
        face = record[0]["faceAttributes"]
        values = {
            "male": face["gender"] == "male",
            "old": float(face["age"]) >= OLD_AGE,
            "glasses": face["glasses"] != "NoGlasses",
            "smiling": float(face["smile"]) >= 0.5,
        }
    except (TypeError, KeyError, IndexError, ValueError):
        raise InvalidArgument(
            f"{path}: expected a list with one record holding faceAttributes gender, age, "
            "glasses and smile"
        ) from None
    return {k: int(v) for k, v in values.items()}


def _read_features(root: Path, files: list[str]) -> dict[str, dict[str, int] | None]:
    labels: dict[str, dict[str, int] | None] = {}
    for name in files:
        path = root / FEATURES_DIR / f"{Path(name).stem}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(f"FFHQ-Features file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"{path} cannot be read as JSON: {exc}") from None
        labels[name] = _label(record, path)
    return labels


class FFHQ(FaceDataset):
    """FFHQ's images (lazily decoded), with FFHQ-Features attributes when asked for."""

    def __init__(
        self,
        root: str | Path,
        resolution: int = 256,
        images: str | None = None,
        attributes: Sequence[str] = (),
        limits: ImageLimits | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"FFHQ root {self.root} is not a directory")
        chosen = images or next((d for d in IMAGE_DIRS if (self.root / d).is_dir()), "")
        if not chosen or not (self.root / chosen).is_dir():
            raise NotFound(f"FFHQ root {self.root} has no image folder (one of {IMAGE_DIRS})")
        unknown = [a for a in attributes if a not in ATTRIBUTES]
        if unknown:
            raise InvalidArgument(f"FFHQ attributes are {ATTRIBUTES}; got {unknown}")
        self.image_dir = self.root / chosen
        files = _numbered(self.image_dir)
        if not files:
            raise NotFound(f"{self.image_dir} holds no NNNNN/NNNNN.png image")
        table = np.zeros((len(files), len(attributes)), dtype=np.int64)
        self.skipped: list[str] = []
        if attributes:
            labels = _read_features(self.root, files)
            self.skipped = [f for f in files if labels[f] is None]
            files = [f for f in files if labels[f] is not None]
            table = np.array([[labels[f][a] for a in attributes] for f in files], np.int64)  # type: ignore[index]
        self.files = files
        super().__init__(
            sample_ids=[f"ffhq-{Path(f).stem}" for f in files],
            attribute_names=tuple(attributes),
            attributes=table.reshape(len(files), len(attributes)),
            resolution=resolution,
        )
        self.limits = limits

    def pixels(self, index: int) -> np.ndarray:
        return load_image_file(self.image_dir / self.files[index], self.resolution, self.limits)
