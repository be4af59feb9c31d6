"""Open any dataset from one URI, so settings and CLIs take a single string.

    synthfaces://?n=50000&seed=0[&attributes=male,old][&cache=/dir]
        [&correlate=male:0.9,old:0.9][&resample=male,old&resample_seed=1]   (data/revision.py)
    lfw://                          astronaut://
    celeba:///path/to/root[?split=train&attributes=Male,Young&task=Mouth_Slightly_Open]
    celebahq:///path/to/root[?split=all&attributes=Male,Young&task=Mouth_Slightly_Open]
    ffhq:///path/to/root[?images=thumbnails128x128&attributes=male,old,glasses,smiling]
    folder:///path/to/root[?csv=labels.csv&attributes=a,b&task=c]

An unknown scheme or a malformed URI is :class:`InvalidArgument` with the expected
forms; a missing root is :class:`NotFound` (raised by the dataset itself).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from services.common.errors import InvalidArgument
from services.common.imaging import ImageLimits
from services.kernels.data import celeba, celebahq, ffhq, folder, packaged, revision, synthfaces
from services.kernels.data.base import FaceDataset

FORMS = (
    "synthfaces://?n=50000&seed=0",
    "lfw://",
    "astronaut://",
    "celeba:///path/to/root?split=train",
    "celebahq:///path/to/root?split=all",
    "ffhq:///path/to/root?attributes=male,old,glasses,smiling",
    "folder:///path/to/root?csv=labels.csv&attributes=a,b&task=c",
)

Opener = Callable[[str, dict[str, str], int, ImageLimits | None], FaceDataset]


def _names(query: dict[str, str], key: str) -> tuple[str, ...] | None:
    value = query.get(key)
    return None if value is None else tuple(n for n in value.split(",") if n)


def _int(query: dict[str, str], key: str, default: int) -> int:
    try:
        return int(query.get(key, default))
    except ValueError:
        raise InvalidArgument(f"{key} must be an integer; got {query[key]!r}") from None


def _synthfaces(path: str, q: dict[str, str], res: int, _: ImageLimits | None) -> FaceDataset:
    return synthfaces.SynthFaces(
        n=_int(q, "n", 50_000),
        seed=_int(q, "seed", 0),
        resolution=res,
        attributes=_names(q, "attributes") or synthfaces.SENSITIVE_ATTRIBUTES,
        cache_dir=q.get("cache"),
        correlate=revision.parse_strengths(q.get("correlate", "")),
        resample=_names(q, "resample") or (),
        resample_seed=_int(q, "resample_seed", 1),
    )


def _celeba(path: str, q: dict[str, str], res: int, limits: ImageLimits | None) -> FaceDataset:
    task = q.get("task", celeba.DEFAULT_TASK) or None
    attributes = _names(q, "attributes") or celeba.SENSITIVE_ATTRIBUTES
    split = q.get("split", "train")
    return celeba.CelebA(_root(path), res, split, attributes, task, limits)


def _celebahq(path: str, q: dict[str, str], res: int, limits: ImageLimits | None) -> FaceDataset:
    task = q.get("task", celeba.DEFAULT_TASK) or None
    attributes = _names(q, "attributes") or celeba.SENSITIVE_ATTRIBUTES
    return celebahq.CelebAHQ(_root(path), res, q.get("split", "all"), attributes, task, limits)


def _ffhq(path: str, q: dict[str, str], res: int, limits: ImageLimits | None) -> FaceDataset:
    return ffhq.FFHQ(_root(path), res, q.get("images"), _names(q, "attributes") or (), limits)


def _folder(path: str, q: dict[str, str], res: int, limits: ImageLimits | None) -> FaceDataset:
    attributes = _names(q, "attributes")
    if attributes is None:
        raise InvalidArgument("folder:// needs attributes=a,b (the CSV columns to use)")
    classes = _int(q, "classes", 0) or None
    return folder.ImageFolder(
        _root(path), attributes, res, q.get("csv", "labels.csv"), q.get("task"), classes, limits
    )


def _root(path: str) -> str:
    if not path:
        raise InvalidArgument(f"this dataset needs a path; expected one of {FORMS}")
    return path


OPENERS: dict[str, Opener] = {
    "synthfaces": _synthfaces,
    "lfw": lambda path, q, res, limits: packaged.LfwSubset(res, limits),
    "astronaut": lambda path, q, res, limits: packaged.Astronaut(res, limits),
    "celeba": _celeba,
    "celebahq": _celebahq,
    "ffhq": _ffhq,
    "folder": _folder,
}


def open_dataset(uri: str, resolution: int = 64, limits: ImageLimits | None = None) -> FaceDataset:
    """The dataset ``uri`` names, its images fitted to ``resolution`` × ``resolution``."""
    parts = urlsplit(uri)
    opener = OPENERS.get(parts.scheme)
    if opener is None or "://" not in uri:
        raise InvalidArgument(
            f"unknown dataset URI {uri!r}; expected one of {FORMS}",
            details={"known_schemes": ",".join(OPENERS)},
        )
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    path = unquote(parts.netloc + parts.path)
    return opener(path, query, resolution, limits)
