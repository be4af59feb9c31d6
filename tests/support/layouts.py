"""Tiny datasets in each published on-disk layout, written from synthetic faces.

Every writer takes procedural faces (``SynthFaces``, whose labels are exact) and writes
them the way the real dataset ships, labels mapped to that dataset's names, so a loader's
output can be compared with the truth it was written from:

    CelebA      img_align_celeba/000001.jpg, list_attr_celeba.txt, list_eval_partition.txt
    CelebA-HQ   CelebA-HQ-img/0.jpg, CelebAMask-HQ-attribute-anno.txt,
                CelebA-HQ-to-CelebA-mapping.txt (+ CelebA's list_eval_partition.txt)
    FFHQ        thumbnails128x128/00000/00000.png, json/00000.json (FFHQ-Features)
    folder      images/face-000.png, labels.csv
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from services.kernels.data.synthfaces import SynthFaces

CELEBA_NAMES = [f"Attr{i:02d}" for i in range(33)] + [
    "Male", "Young", "Pale_Skin", "Eyeglasses", "Smiling", "Mouth_Slightly_Open", "Blond_Hair",
]  # fmt: skip
"""40 names, as CelebA has; the five sensitive ones carry the synthetic faces' truth."""


def faces(n: int = 24, seed: int = 5, size: int = 64) -> SynthFaces:
    return SynthFaces(n=n, seed=seed, resolution=size)


def truth(source: SynthFaces) -> dict[str, np.ndarray]:
    """Each synthetic attribute's labels, by name."""
    return {name: source.attributes[:, i] for i, name in enumerate(source.attribute_names)}


def celeba_row(source: SynthFaces, i: int) -> list[int]:
    """CelebA's 40 values (0/1) of face ``i``: the sensitive ones from the truth (Young is
    not old, Pale_Skin is not dark_skin), the task column from the pose, the rest 0."""
    t = {k: int(v[i]) for k, v in truth(source).items()}
    row = dict.fromkeys(CELEBA_NAMES, 0)
    row.update(
        Male=t["male"], Young=1 - t["old"], Pale_Skin=1 - t["dark_skin"],
        Eyeglasses=t["glasses"], Smiling=t["smiling"],
        Mouth_Slightly_Open=int(source.tasks[i] == 1),
    )  # fmt: skip
    return [row[name] for name in CELEBA_NAMES]


def _attr_file(path: Path, names: list[str], rows: list[tuple[str, list[int]]]) -> None:
    lines = [str(len(rows)), " ".join(names)]
    lines += [" ".join([f, *("1" if v else "-1" for v in values)]) for f, values in rows]
    path.write_text("\n".join(lines) + "\n")


def write_celeba(root: Path, source: SynthFaces, partition: list[int] | None = None) -> Path:
    (root / "img_align_celeba").mkdir(parents=True)
    files = [f"{i + 1:06d}.jpg" for i in range(len(source))]
    for i, name in enumerate(files):
        Image.fromarray(source.pixels(i)).save(root / "img_align_celeba" / name, quality=95)
    _attr_file(
        root / "list_attr_celeba.txt",
        CELEBA_NAMES,
        [(f, celeba_row(source, i)) for i, f in enumerate(files)],
    )
    parts = partition or [i % 3 for i in range(len(files))]
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{f} {p}\n" for f, p in zip(files, parts, strict=True))
    )
    return root


def write_celebahq(root: Path, source: SynthFaces) -> Path:
    """CelebA-HQ image ``k`` is CelebA's file ``1000 + 7k`` (a mapping, as released, that
    is not the identity), whose CelebA split is ``k % 3``."""
    (root / "CelebA-HQ-img").mkdir(parents=True)
    rows, mapping, partition = [], ["idx         orig_idx    orig_file"], []
    for k in range(len(source)):
        Image.fromarray(source.pixels(k)).save(root / "CelebA-HQ-img" / f"{k}.jpg", quality=95)
        rows.append((f"{k}.jpg", celeba_row(source, k)))
        original = 1000 + 7 * k
        mapping.append(f"{k:<11d} {original - 1:<11d} {original:06d}.jpg")
        partition.append(f"{original:06d}.jpg {k % 3}")
    _attr_file(root / "CelebAMask-HQ-attribute-anno.txt", CELEBA_NAMES, rows)
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return root


def ffhq_record(source: SynthFaces, i: int) -> list[dict[str, object]]:
    """An FFHQ-Features record whose mapped attributes are face ``i``'s truth."""
    t = {k: int(v[i]) for k, v in truth(source).items()}
    face = {
        "gender": "male" if t["male"] else "female",
        "age": 63.0 if t["old"] else 27.0,
        "glasses": "ReadingGlasses" if t["glasses"] else "NoGlasses",
        "smile": 0.93 if t["smiling"] else 0.02,
        "emotion": {"neutral": 0.5},
    }
    return [{"faceRectangle": {"top": 1, "left": 1, "width": 10, "height": 10},
             "faceAttributes": face}]  # fmt: skip


def write_ffhq(root: Path, source: SynthFaces, no_face: tuple[int, ...] = ()) -> Path:
    """Thumbnails in folders of 1000 (here image 1000 k + j would be ``0k000/0kj…``: all in
    ``00000/`` for fewer than 1000), with FFHQ-Features JSON; ``no_face``: images whose JSON
    is the empty list the Face API gave where it found no face."""
    (root / "json").mkdir(parents=True)
    for i in range(len(source)):
        folder = root / "thumbnails128x128" / f"{i // 1000 * 1000:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.pixels(i)).save(folder / f"{i:05d}.png")
        record = [] if i in no_face else ffhq_record(source, i)
        (root / "json" / f"{i:05d}.json").write_text(json.dumps(record))
    return root


def write_folder(root: Path, source: SynthFaces) -> Path:
    (root / "images").mkdir(parents=True)
    t = truth(source)
    lines = ["filename," + ",".join(t) + ",pose"]
    for i in range(len(source)):
        name = f"images/face-{i:03d}.png"
        Image.fromarray(source.pixels(i)).save(root / name)
        lines.append(",".join([name, *(str(int(v[i])) for v in t.values()), str(source.tasks[i])]))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
