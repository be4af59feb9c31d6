"""CelebA and folder+CSV adapters on tiny fixture trees; the URI registry; LFW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from services.common.errors import InvalidArgument, InvalidImage, NotFound
from services.kernels.data import CelebA, ImageFolder, LfwSubset, open_dataset, to_uint8
from services.kernels.data.celeba import SENSITIVE_ATTRIBUTES

NAMES = [f"Attr{i}" for i in range(35)] + list(SENSITIVE_ATTRIBUTES)
FILES = [f"{i:06d}.jpg" for i in range(1, 7)]
PARTITION = [0, 0, 0, 1, 2, 2]


def _jpeg(path: Path, shade: int, size: tuple[int, int] = (20, 24)) -> None:
    Image.new("RGB", size, (shade, 255 - shade, 128)).save(path, format="JPEG")


def _attr_line(name: str, index: int) -> str:
    values = [("1" if (index + col) % 2 else "-1") for col in range(len(NAMES))]
    return " ".join([name, *values])


@pytest.fixture
def celeba_root(tmp_path: Path) -> Path:
    (tmp_path / "img_align_celeba").mkdir()
    for i, name in enumerate(FILES):
        _jpeg(tmp_path / "img_align_celeba" / name, 40 * i)
    lines = [str(len(FILES)), " ".join(NAMES)] + [_attr_line(n, i) for i, n in enumerate(FILES)]
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    part = [f"{n} {p}" for n, p in zip(FILES, PARTITION, strict=True)]
    (tmp_path / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return tmp_path


def test_celeba_splits_labels_and_ids(celeba_root: Path) -> None:
    train = CelebA(celeba_root, resolution=16, split="train", task="Attr0")
    assert train.sample_ids == ("celeba-000001.jpg", "celeba-000002.jpg", "celeba-000003.jpg")
    assert len(CelebA(celeba_root, 16, "val", task="Attr0")) == 1
    assert len(CelebA(celeba_root, 16, "test", task="Attr0")) == 2
    assert len(CelebA(celeba_root, 16, "all", task="Attr0")) == 6
    sample = train.sample(1)
    # file index 1: column c is 1 when (1 + c) is odd, i.e. c even -> Male is column 35.
    expected = {"Male": 0, "Young": 1, "Pale_Skin": 0, "Eyeglasses": 1, "Smiling": 0}
    assert sample.attributes == expected
    assert sample.task_label == 1 and sample.image.shape == (3, 16, 16)
    assert CelebA(celeba_root, 16, "train", task="Attr0").sample_ids == train.sample_ids


def test_celeba_default_task_missing_is_refused(celeba_root: Path) -> None:
    with pytest.raises(InvalidArgument, match="Mouth_Slightly_Open"):
        CelebA(celeba_root, 16)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("000003.jpg 1 -1", r"list_attr_celeba.txt:5: expected a filename and 40 values"),
        (_attr_line("000003.jpg", 0).replace("-1", "0", 1), r":5: attribute values must be"),
        (_attr_line("../x.jpg", 0), r":5: '../x.jpg' is not a plain file name"),
    ],
)
def test_celeba_bad_attribute_line_names_file_and_line(
    celeba_root: Path, line: str, match: str
) -> None:
    path = celeba_root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[4] = line
    path.write_text("\n".join(lines))
    with pytest.raises(InvalidArgument, match=match):
        CelebA(celeba_root, 16, task="Attr0")


def test_celeba_missing_files(celeba_root: Path, tmp_path: Path) -> None:
    (celeba_root / "list_eval_partition.txt").unlink()
    with pytest.raises(NotFound, match=r"list_eval_partition\.txt"):
        CelebA(celeba_root, 16, task="Attr0")
    dataset = CelebA(celeba_root, 16, split="all", task="Attr0")
    (celeba_root / "img_align_celeba" / FILES[2]).unlink()
    with pytest.raises(NotFound, match=r"000003\.jpg"):
        dataset[2]
    with pytest.raises(NotFound, match="not a directory"):
        CelebA(tmp_path / "nope", 16)


def test_bad_image_propagates_invalid_image_with_file_name(celeba_root: Path) -> None:
    (celeba_root / "img_align_celeba" / FILES[0]).write_bytes(b"not a jpeg at all")
    dataset = CelebA(celeba_root, 16, task="Attr0")
    with pytest.raises(InvalidImage, match=r"000001\.jpg"):
        dataset[0]


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    rows = ["filename,smile,age_bin,pose"]
    for i in range(4):
        _jpeg(tmp_path / "imgs" / f"p{i}.jpg", 60 * i, size=(30, 20))
        rows.append(f"imgs/p{i}.jpg,{i % 2},{i},{i % 3}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_folder_reads_chosen_columns_and_batches(folder_root: Path) -> None:
    dataset = ImageFolder(folder_root, ["smile", "age_bin"], resolution=12, task="pose")
    assert dataset.sample_ids[0] == "folder-imgs/p0.jpg" and dataset.num_task_classes == 3
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 12, 12) and batch["image"].dtype == torch.float32
    assert batch["attributes"].tolist() == [[0, 0], [1, 1], [0, 2], [1, 3]]
    assert batch["task"].tolist() == [0, 1, 2, 0] and batch["index"].tolist() == [0, 1, 2, 3]
    assert float(batch["image"].min()) >= -1.0 and float(batch["image"].max()) <= 1.0


@pytest.mark.parametrize(
    ("row", "error", "match"),
    [
        ("imgs/p0.jpg,2,x,0", InvalidArgument, r"labels.csv:3: column 'age_bin'"),
        ("imgs/p0.jpg,1", InvalidArgument, r"labels.csv:3: expected 4 cells"),
        ("imgs/gone.jpg,1,1,0", NotFound, r"gone.jpg"),
        ("../escape.jpg,1,1,0", InvalidArgument, r"outside"),
    ],
)
def test_folder_validation(folder_root: Path, row: str, error: type, match: str) -> None:
    path = folder_root / "labels.csv"
    lines = path.read_text().splitlines()
    lines[2] = row
    path.write_text("\n".join(lines))
    with pytest.raises(error, match=match):
        ImageFolder(folder_root, ["smile", "age_bin"], task="pose")


def test_folder_unknown_column(folder_root: Path) -> None:
    with pytest.raises(InvalidArgument, match="no column"):
        ImageFolder(folder_root, ["gender"])


def test_registry_opens_every_scheme(celeba_root: Path, folder_root: Path) -> None:
    synth = open_dataset("synthfaces://?n=10&seed=3", resolution=32)
    assert len(synth) == 10 and synth.sample_ids[0] == "synth-3-000000"
    celeba = open_dataset(f"celeba://{celeba_root}?split=test&task=Attr1", resolution=16)
    assert len(celeba) == 2 and celeba.task_name == "Attr1"
    folder = open_dataset(f"folder://{folder_root}?attributes=smile&task=pose", resolution=16)
    assert folder.attribute_names == ("smile",)
    assert open_dataset("astronaut://", resolution=16)[0]["image"].shape == (3, 16, 16)


@pytest.mark.parametrize("uri", ["imagenet://x", "synthfaces", "", "folder://"])
def test_registry_refuses_unknown_forms(uri: str) -> None:
    with pytest.raises(InvalidArgument, match=r"expected|needs"):
        open_dataset(uri)


def test_registry_missing_root(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        open_dataset(f"celeba://{tmp_path}/missing")


def test_lfw_subset_first_hundred_are_faces() -> None:
    dataset = LfwSubset(resolution=32)
    assert len(dataset) == 200 and dataset.attribute_names == ("is_face",)
    assert dataset.attributes[:100, 0].all() and not dataset.attributes[100:, 0].any()
    pixels = to_uint8(dataset[0]["image"])
    assert pixels.shape == (32, 32, 3) and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert dataset.sample(0).task_label is None
