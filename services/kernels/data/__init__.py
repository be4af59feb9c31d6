"""Face datasets behind one interface (:class:`FaceDataset`), opened by URI.

See :mod:`services.kernels.data.base` for the sample format and
:mod:`services.kernels.data.registry` for the URI forms.
"""

from services.kernels.data.base import (
    NO_TASK,
    FaceDataset,
    Sample,
    fit_square,
    from_uint8,
    to_uint8,
)
from services.kernels.data.celeba import CelebA
from services.kernels.data.celebahq import CelebAHQ
from services.kernels.data.ffhq import FFHQ
from services.kernels.data.folder import ImageFolder
from services.kernels.data.packaged import Astronaut, LfwSubset
from services.kernels.data.registry import open_dataset
from services.kernels.data.synthfaces import SynthFaces

__all__ = [
    "FFHQ",
    "NO_TASK",
    "Astronaut",
    "CelebA",
    "CelebAHQ",
    "FaceDataset",
    "ImageFolder",
    "LfwSubset",
    "Sample",
    "SynthFaces",
    "fit_square",
    "from_uint8",
    "open_dataset",
    "to_uint8",
]
