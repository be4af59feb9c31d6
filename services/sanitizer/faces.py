"""Find the face in a photograph, cut a square crop for the model, paste the result back.

The sanitizer's diffusion autoencoder works on small square face crops (``resolution`` ×
``resolution``, 32 today) with some context around the face, while callers send real
photographs of any size. This module is the bridge, with no gRPC and no torch:
:func:`locate_face` picks the face region (detected, named by the caller, or the whole
image), :func:`crop_face` cuts a square around it and resizes it for the model, and
:func:`paste_face` resizes the sanitized crop back and blends it in with a feathered seam.

Detection uses OpenCV's bundled Haar cascade ``haarcascade_frontalface_alt2.xml`` (Viola &
Jones, CVPR 2001; Lienhart & Maydt, ICIP 2002): CPU only, ~0.1 s for a 512 × 512 image, no
weights to download. It finds upright frontal faces from ~24 px; profiles and strongly
rotated faces are missed, and the caller then names the region (``FaceSelection.box``) or
sends ``whole_image``. The cascade and its settings were chosen by measurement (scaleFactor
1.1, histogram-equalised grey, a 0.12 replicated border, faces from 20 px), on
``skimage.data``: the 100 faces / 100 non-faces of ``lfw_subset()`` (25 × 25, upscaled 4×
to 100 × 100), ``astronaut()`` resized to 128 … 4096 px (7 sizes, one face each), and 19
face-free images (``coffee``, ``coins``, ``cell``, ``brick``, ``retina``, ``chelsea`` …):

==============================  ===========  ==============  =====================  ==========
cascade, minNeighbors, border   lfw faces    lfw non-faces   astronaut: one box     false boxes
                                found        hit             at (of 7 sizes)        (19 images)
==============================  ===========  ==============  =====================  ==========
**alt2, 5, 0.12 (shipped)**     **98/100**   **0/100**       **7**                  **1**
alt2, 5, none                   86/100       0/100           6 (misses 128)         1
alt2, 3, 0.12                   98/100       0/100           4 (2-3 boxes)          4
alt, 5, 0.12                    97/100       0/100           6 (misses 128)         0
default, 5, 0.12                98/100       0/100           3 (2-3 boxes)          8
==============================  ===========  ==============  =====================  ==========

minNeighbors 5 rather than 6 (also 98/100, 0 false boxes) because 6 loses faces under ~33
px (measured by pasting a shrunk astronaut on ``coffee()``: 3 finds ≥ 20 px, 5 ≥ 24 px).
At their own 25 × 25 the lfw crops give 78/100 and 0/100. Reproduce the lfw numbers with
``python -m pytest tests/sanitizer/test_faces.py -q -p no:cacheprovider -k rate -s``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import cv2.data
import numpy as np

from services.common.errors import FailedPrecondition, InvalidArgument

CASCADE = "haarcascade_frontalface_alt2.xml"
"""The bundled OpenCV cascade used by :func:`detect_faces` (chosen by measurement, above)."""

DETECT_MAX_SIDE = 1024
"""Images are scanned at most this large (longest side); bigger ones are shrunk first.

A 4096 × 4096 scan takes ~5 s and reports false faces in fine texture; at 1024 it takes
~0.6 s. The cost: faces smaller than ``20 * longest_side / 1024`` pixels (80 in a 4096
image) are not found in such large images.
"""

DETECT_BORDER = 0.12
"""Replicated border added around the scanned image, as a fraction of its shorter side.

The cascade needs a little context around a face, so a face that fills the frame (a
passport photo, a pre-cut crop) is otherwise missed: 86 → 98 of 100 lfw faces, no more
false positives (measured, see the module docstring).
"""

_SCALE_FACTOR = 1.1
_MIN_NEIGHBORS = 5
_WINDOW = 20  # alt2's training window: nothing smaller can be found

_local = threading.local()


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels of the image as sent: top-left corner and size."""

    x: int
    y: int
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"


@dataclass(frozen=True)
class FaceCrop:
    """What :func:`crop_face` cut out, and all :func:`paste_face` needs to put it back."""

    box: Box
    """The face region (as detected, as named, or the whole image)."""
    crop_box: Box
    """The region actually cut out: ``square`` clamped to the image (non-square only there)."""
    crop: np.ndarray
    """``(resolution, resolution, 3)`` uint8: the square crop resized for the model."""
    square: Box | None = None
    """The square before clamping; it may reach past the image, where the crop was filled by
    mirroring the image. :func:`crop_face` always sets it; ``None`` (a hand-built FaceCrop)
    means ``crop_box`` itself."""


def detect_faces(image: np.ndarray, *, min_size: int = 20) -> list[Box]:
    """Faces found by the detector, largest first (ties: top-left first).

    ``min_size`` is the smallest face side looked for, in pixels of ``image``; images with a
    side below it are not scanned (``[]``). The scan is of the grey, histogram-equalised
    image, shrunk to :data:`DETECT_MAX_SIDE` if larger and framed by a replicated border
    (:data:`DETECT_BORDER`); boxes are mapped back and clamped to the image.
    """
    _check_image(image)
    height, width = image.shape[:2]
    if min(height, width) < max(min_size, 1):
        return []
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    pad = round(DETECT_BORDER * min(grey.shape))
    # Equalise before framing, so the border does not shift the histogram.
    grey = cv2.copyMakeBorder(cv2.equalizeHist(grey), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    window = max(_WINDOW, round(min_size * scale))
    found = _cascade().detectMultiScale(
        grey,
        scaleFactor=_SCALE_FACTOR,
        minNeighbors=_MIN_NEIGHBORS,
        minSize=(window, window),
    )
    boxes = []
    for fx, fy, fw, fh in np.asarray(found, dtype=np.int64).reshape(-1, 4).tolist():
        raw = Box(
            round((fx - pad) / scale),
            round((fy - pad) / scale),
            round(fw / scale),
            round(fh / scale),
        )
        clamped = _intersect(raw, width, height)
        if clamped is not None:
            boxes.append(clamped)
    return sorted(boxes, key=lambda b: (-b.width * b.height, b.y, b.x))


def locate_face(
    image: np.ndarray,
    *,
    whole_image: bool = False,
    box: Box | None = None,
    margin: float = 0.25,
    min_size: int = 20,
) -> Box:
    """The face region of ``image``, as the request's ``FaceSelection`` says.

    ``whole_image`` → the whole image's box; ``box`` → that box clamped to the image
    (``InvalidArgument`` naming ``face.box`` when nothing is left, or when both are set);
    neither → detect: no face is ``FailedPrecondition``, several are ``InvalidArgument``
    listing every box (largest first) in the message and in ``details["faces"]`` as
    ``"x,y,w,h;x,y,w,h"`` so the caller can send one back as ``FaceSelection.box``.
    ``margin`` does not change the region (:func:`crop_face` applies it); it is only checked.
    """
    _check_image(image)
    _check_margin(margin)
    height, width = image.shape[:2]
    if whole_image and box is not None:
        raise InvalidArgument("face: set whole_image or box, not both", details={"field": "face"})
    if whole_image:
        return Box(0, 0, width, height)
    if box is not None:
        clamped = _intersect(box, width, height)
        if clamped is None:
            raise InvalidArgument(
                f"face.box {box} has no pixels inside the {width}x{height} image",
                details={"field": "face.box", "box": str(box), "image": f"{width}x{height}"},
            )
        return clamped
    faces = detect_faces(image, min_size=min_size)
    if not faces:
        raise FailedPrecondition(
            f"no face found in the {width}x{height} image (smallest face looked for: "
            f"{min_size} px); send FaceSelection.whole_image or a box",
            details={"image": f"{width}x{height}", "min_size": min_size},
        )
    if len(faces) > 1:
        listed = ";".join(str(face) for face in faces)
        raise InvalidArgument(
            f"{len(faces)} faces found (x,y,w,h: {listed}); send one of them as "
            "FaceSelection.box, or FaceSelection.whole_image",
            details={"field": "face", "faces": listed, "count": len(faces)},
        )
    return faces[0]


def crop_face(image: np.ndarray, box: Box, resolution: int, margin: float = 0.25) -> FaceCrop:
    """A ``resolution`` × ``resolution`` crop around ``box``, for the model.

    The square is centred on ``box`` with side ``max(w, h) * (1 + 2 * margin)`` (the model
    was trained on faces with some context). Where it reaches past the image, ``crop_box``
    is clamped and the crop is filled by mirroring the image, so the face stays centred.
    A box covering the whole image (``whole_image``) gets no margin: ``crop_box`` is the
    image, and a non-square image is resized to a square **without keeping its aspect**
    (:func:`paste_face` resizes back). Resizing is ``INTER_AREA`` down, ``INTER_CUBIC`` up.
    """
    _check_image(image)
    _check_margin(margin)
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1; got {resolution}")
    height, width = image.shape[:2]
    face = _intersect(box, width, height)
    if face is None:
        raise InvalidArgument(
            f"face.box {box} has no pixels inside the {width}x{height} image",
            details={"field": "face.box", "box": str(box), "image": f"{width}x{height}"},
        )
    if face == Box(0, 0, width, height):
        crop = _resize(image, resolution, resolution)
        return FaceCrop(box=face, crop_box=face, crop=crop, square=face)
    side = max(1, round(max(face.width, face.height) * (1 + 2 * margin)))
    square = Box(
        math.floor(face.x + face.width / 2 - side / 2),
        math.floor(face.y + face.height / 2 - side / 2),
        side,
        side,
    )
    crop_box = _intersect(square, width, height)
    assert crop_box is not None  # the square contains the face, which is inside the image
    region = image[
        crop_box.y : crop_box.y + crop_box.height, crop_box.x : crop_box.x + crop_box.width
    ]
    top, left = crop_box.y - square.y, crop_box.x - square.x
    bottom = square.y + side - (crop_box.y + crop_box.height)
    right = square.x + side - (crop_box.x + crop_box.width)
    if top or bottom or left or right:
        region = cv2.copyMakeBorder(region, top, bottom, left, right, cv2.BORDER_REFLECT_101)
    crop = _resize(region, resolution, resolution)
    return FaceCrop(box=face, crop_box=crop_box, crop=crop, square=square)


def paste_face(
    image: np.ndarray, face: FaceCrop, sanitized: np.ndarray, feather: float = 0.15
) -> np.ndarray:
    """A copy of ``image`` with ``sanitized`` (the model's output for ``face.crop``) put back.

    ``sanitized`` is resized to the square's size and blended over ``crop_box`` with a mask
    that is 1 inside and falls to 0 by a cosine ramp over ``feather`` of the square's side at
    each edge of ``crop_box`` that lies inside the image, so no hard seam shows. Edges on the
    image border are not feathered: there is no seam there, and feathering would leave
    original face pixels at the border. With the defaults (ramp 0.15 × 1.5 = 0.225 of the
    face's side, inside its 0.25 margin) every pixel of ``face.box`` is replaced outright.
    Pixels outside ``crop_box`` are unchanged bit for bit; a whole-image crop comes back as
    ``sanitized`` resized to the image's size.
    """
    _check_image(image)
    if sanitized.dtype != np.uint8 or sanitized.shape != face.crop.shape:
        raise ValueError(
            f"sanitized must be uint8 {face.crop.shape}; got {sanitized.dtype} {sanitized.shape}"
        )
    if not 0.0 <= feather <= 0.5:
        raise ValueError(f"feather must be in [0, 0.5]; got {feather}")
    height, width = image.shape[:2]
    square = face.square or face.crop_box
    cb = face.crop_box
    if _intersect(cb, width, height) != cb:
        raise ValueError(f"crop_box {cb} does not fit the {width}x{height} image")
    resized = _resize(sanitized, square.height, square.width)
    oy, ox = cb.y - square.y, cb.x - square.x
    patch = resized[oy : oy + cb.height, ox : ox + cb.width].astype(np.float32)
    ramp = feather * max(square.width, square.height)
    rows = _ramp(cb.height, ramp, cb.y > 0, cb.y + cb.height < height)
    cols = _ramp(cb.width, ramp, cb.x > 0, cb.x + cb.width < width)
    mask = (rows[:, None] * cols[None, :])[:, :, None]
    out = image.copy()
    target = out[cb.y : cb.y + cb.height, cb.x : cb.x + cb.width]
    blended = mask * patch + (1.0 - mask) * target.astype(np.float32)
    target[...] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def _ramp(length: int, width: float, before: bool, after: bool) -> np.ndarray:
    """1 in the middle, a raised-cosine fall to 0 over ``width`` px at each flagged end."""
    weights = np.ones(length, dtype=np.float32)
    if width <= 0:
        return weights
    distance = np.arange(length, dtype=np.float32) + 0.5  # from the start, pixel centres
    rise = 0.5 - 0.5 * np.cos(np.pi * np.minimum(distance / width, 1.0))
    if before:
        weights *= rise
    if after:
        weights *= rise[::-1]
    return weights


def _resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    if pixels.shape[:2] == (height, width):
        return pixels.copy()
    shrink = height <= pixels.shape[0] and width <= pixels.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def _intersect(box: Box, width: int, height: int) -> Box | None:
    """``box`` clamped to a ``width`` × ``height`` image, or ``None`` when nothing is left."""
    x0, y0 = max(box.x, 0), max(box.y, 0)
    x1, y1 = min(box.x + box.width, width), min(box.y + box.height, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) RGB; got {image.dtype} {image.shape}")


def _check_margin(margin: float) -> None:
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0; got {margin}")


def _cascade() -> cv2.CascadeClassifier:
    """This thread's classifier, loaded on first use (one per thread: not thread safe)."""
    cascade: cv2.CascadeClassifier | None = getattr(_local, "cascade", None)
    if cascade is None:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        if cascade.empty():
            raise RuntimeError(f"OpenCV could not load its bundled cascade {CASCADE}")
        _local.cascade = cascade
    return cascade
