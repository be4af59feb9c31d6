"""Every documented dataset layout, written from synthetic faces (``tests/support/layouts.py``)
and read back through its URI: the labels are the faces' truth mapped to the dataset's
names, the pixels are the faces' (within the codec's error), splits follow the layout's
files, and what a layout cannot label is refused or left out with its path named."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidArgument, NotFound
from services.kernels.data import FFHQ, CelebAHQ, open_dataset
from services.kernels.data.base import fit_square
from tests.support import layouts

N = 12


@pytest.fixture(scope="module")
def source():  # type: ignore[no-untyped-def]
    return layouts.faces(N)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def same_faces(dataset, source, rows, min_db: float) -> None:  # type: ignore[no-untyped-def]
    for index, row in enumerate(rows):
        expected = fit_square(source.pixels(row), dataset.resolution)
        assert psnr(dataset.pixels(index), expected) >= min_db, (index, row)


def test_celeba_reads_the_truth_through_its_names(tmp_path: Path, source) -> None:  # type: ignore[no-untyped-def]
    root = layouts.write_celeba(tmp_path / "celeba", source)
    data = open_dataset(f"celeba://{root}?split=all", resolution=32)
    t = layouts.truth(source)
    assert data.attribute_names == ("Male", "Young", "Pale_Skin", "Eyeglasses", "Smiling")
    assert np.array_equal(data.attributes[:, 0], t["male"])
    assert np.array_equal(data.attributes[:, 1], 1 - t["old"])
    assert np.array_equal(data.attributes[:, 2], 1 - t["dark_skin"])
    assert np.array_equal(data.tasks, (source.tasks == 1).astype(int))
    same_faces(data, source, range(N), min_db=30)
    train = open_dataset(f"celeba://{root}?split=train", resolution=32)
    assert len(train) == len(range(0, N, 3))


def test_celebahq_reads_all_and_follows_celebas_split_through_the_mapping(
    tmp_path: Path,
    source,  # type: ignore[no-untyped-def]
) -> None:
    root = layouts.write_celebahq(tmp_path / "hq", source)
    every = open_dataset(f"celebahq://{root}", resolution=32)
    assert isinstance(every, CelebAHQ) and len(every) == N
    assert every.sample_ids[:2] == ("celebahq-0.jpg", "celebahq-1.jpg")
    assert np.array_equal(every.attributes[:, 3], layouts.truth(source)["glasses"])
    same_faces(every, source, range(N), min_db=30)
    for split, part in (("train", 0), ("val", 1), ("test", 2)):
        chosen = open_dataset(f"celebahq://{root}?split={split}", resolution=32)
        rows = [k for k in range(N) if k % 3 == part]
        assert chosen.sample_ids == tuple(f"celebahq-{k}.jpg" for k in rows)
        same_faces(chosen, source, rows, min_db=30)


def test_celebahq_split_without_the_mapping_is_refused(tmp_path: Path, source) -> None:  # type: ignore[no-untyped-def]
    root = layouts.write_celebahq(tmp_path / "hq", source)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n0 5\n")
    with pytest.raises(InvalidArgument, match=r"mapping.txt:2"):
        CelebAHQ(root, 32, split="train")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    with pytest.raises(NotFound, match="mapping"):
        CelebAHQ(root, 32, split="train")
    assert len(CelebAHQ(root, 32)) == N  # split=all needs no mapping


def test_ffhq_images_alone_and_with_features(tmp_path: Path, source) -> None:  # type: ignore[no-untyped-def]
    root = layouts.write_ffhq(tmp_path / "ffhq", source, no_face=(3,))
    images = open_dataset(f"ffhq://{root}", resolution=32)
    assert isinstance(images, FFHQ) and len(images) == N and images.attribute_names == ()
    same_faces(images, source, range(N), min_db=math.inf)  # PNG at its own size: exact
    labelled = open_dataset(f"ffhq://{root}?attributes=male,old,glasses,smiling", resolution=32)
    assert isinstance(labelled, FFHQ) and labelled.skipped == ["00000/00003.png"]
    rows = [i for i in range(N) if i != 3]
    t = layouts.truth(source)
    for column, name in enumerate(("male", "old", "glasses", "smiling")):
        assert np.array_equal(labelled.attributes[:, column], t[name][rows])
    same_faces(labelled, source, rows, min_db=math.inf)


def test_ffhq_refuses_what_it_cannot_read(tmp_path: Path, source) -> None:  # type: ignore[no-untyped-def]
    root = layouts.write_ffhq(tmp_path / "ffhq", source)
    (root / "json" / "00002.json").write_text(json.dumps([{"faceRectangle": {}}]))
    with pytest.raises(InvalidArgument, match=r"00002\.json"):
        FFHQ(root, 32, attributes=("male",))
    (root / "json" / "00002.json").unlink()
    with pytest.raises(NotFound, match=r"00002\.json"):
        FFHQ(root, 32, attributes=("male",))
    with pytest.raises(InvalidArgument, match="attributes"):
        FFHQ(root, 32, attributes=("Male",))
    with pytest.raises(NotFound, match="image folder"):
        FFHQ(tmp_path, 32)


def test_folder_with_csv_reads_the_truth(tmp_path: Path, source) -> None:  # type: ignore[no-untyped-def]
    root = layouts.write_folder(tmp_path / "folder", source)
    names = "male,old,dark_skin,glasses,smiling"
    data = open_dataset(f"folder://{root}?attributes={names}&task=pose&classes=3", resolution=32)
    assert np.array_equal(data.attributes, source.attributes)
    assert np.array_equal(data.tasks, source.tasks)
    same_faces(data, source, range(N), min_db=math.inf)
