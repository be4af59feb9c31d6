"""Face detection, cropping and pasting for the sanitizer (no server, no model).

Images come from ``skimage.data`` (bundled with scikit-image, no network) and go through the
service's own codec (``services.common.imaging``) as a request's image would.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.imaging import decode_image, encode_image
from services.sanitizer.faces import (
    Box,
    FaceCrop,
    crop_face,
    detect_faces,
    locate_face,
    paste_face,
)

skdata = pytest.importorskip("skimage.data")

# Where the astronaut's face is in skimage.data.astronaut() (512 x 512), found by looking:
# the face with hair and chin lies within x 165-290, y 40-180.
FACE_REGION = Box(165, 40, 125, 140)


def _overlap(a: Box, b: Box) -> int:
    w = min(a.x + a.width, b.x + b.width) - max(a.x, b.x)
    h = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    return max(w, 0) * max(h, 0)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """The astronaut as the service sees it: PNG bytes decoded by the common codec."""
    return decode_image(encode_image(skdata.astronaut())).pixels


@pytest.fixture(scope="module")
def face(astronaut: np.ndarray) -> Box:
    return locate_face(astronaut)


# --- detection ------------------------------------------------------------------------------


def test_astronaut_has_exactly_one_face_where_it_is(astronaut: np.ndarray) -> None:
    boxes = detect_faces(astronaut)
    assert len(boxes) == 1
    (box,) = boxes
    assert isinstance(box.x, int) and isinstance(box.width, int)
    # Most of the detected box is on the face, and it is face-sized (not the whole image).
    assert _overlap(box, FACE_REGION) >= 0.8 * box.width * box.height
    assert 60 <= box.width <= 140 and 60 <= box.height <= 140


def test_lfw_subset_detection_and_false_positive_rate() -> None:
    """lfw_subset: 100 face crops then 100 non-face crops, 25 x 25 grey.

    Measured (alt2, minNeighbors 5, border 0.12) with
    ``python -m pytest tests/sanitizer/test_faces.py -q -p no:cacheprovider -k rate -s``:
    upscaled 4x to 100 x 100, 98/100 faces found and 0/100 non-faces hit; as they are (25 x 25,
    just above min_size 20, found thanks to the border), 78/100 and 0/100.
    """
    images = (skdata.lfw_subset() * 255).round().astype(np.uint8)
    assert images.shape == (200, 25, 25)
    rates = {}
    for side in (100, 25):
        found = [
            bool(detect_faces(_rgb(cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC))))
            for img in images
        ]
        rates[side] = (np.mean(found[:100]), np.mean(found[100:]))
        print(f"lfw_subset at {side}px: detection {rates[side][0]:.2f}, ", end="")
        print(f"false positives {rates[side][1]:.2f}")
    assert rates[100][0] >= 0.9 and rates[100][1] <= 0.05
    assert rates[25][0] >= 0.6 and rates[25][1] <= 0.05
    # Below min_size nothing is scanned.
    assert not any(detect_faces(_rgb(img), min_size=26) for img in images[:100])


@pytest.mark.parametrize("side", [128, 2048])
def test_astronaut_found_at_other_sizes(astronaut: np.ndarray, side: int) -> None:
    # 2048 is scanned shrunk to 1024; the box comes back in the image's own pixels.
    image = cv2.resize(astronaut, (side, side))
    (box,) = detect_faces(image)
    scale = side / 512
    scaled = Box(*(round(v * scale) for v in (165, 40, 125, 140)))
    assert _overlap(box, scaled) >= 0.8 * box.width * box.height


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8),
        np.full((300, 200, 3), 128, dtype=np.uint8),
        np.zeros((8, 8, 3), dtype=np.uint8),
    ],
    ids=["noise", "uniform", "tiny"],
)
def test_no_face_is_failed_precondition(image: np.ndarray) -> None:
    assert detect_faces(image) == []
    with pytest.raises(FailedPrecondition, match="whole_image or a box") as caught:
        locate_face(image)
    assert caught.value.reason == "FAILED_PRECONDITION"


def test_images_smaller_than_min_size_are_not_scanned(astronaut: np.ndarray) -> None:
    assert detect_faces(astronaut[:19, :19]) == []
    assert detect_faces(astronaut, min_size=600) == []
    assert detect_faces(astronaut, min_size=120) == []  # the face is ~95 px


def test_two_faces_are_invalid_argument_listing_both(astronaut: np.ndarray) -> None:
    pair = np.concatenate([astronaut, astronaut], axis=1)
    boxes = detect_faces(pair)
    assert len(boxes) == 2
    assert {b.x < 512 for b in boxes} == {True, False}
    with pytest.raises(InvalidArgument) as caught:
        locate_face(pair)
    error = caught.value
    listed = error.details["faces"].split(";")
    assert listed == [f"{b.x},{b.y},{b.width},{b.height}" for b in boxes]
    assert all(entry in error.message for entry in listed)
    assert error.details["count"] == "2"
    assert all(isinstance(v, str) for v in error.details.values())
    # A listed box sent back selects that face.
    x, y, w, h = (int(v) for v in listed[1].split(","))
    assert locate_face(pair, box=Box(x, y, w, h)) == boxes[1]


def test_detection_is_thread_safe(astronaut: np.ndarray) -> None:
    image = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    expected = detect_faces(image)
    assert len(expected) == 1
    results: list[list[Box]] = []

    def work() -> None:
        for _ in range(2):
            results.append(detect_faces(image))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8


# --- locating -------------------------------------------------------------------------------


def test_whole_image_and_named_box(astronaut: np.ndarray) -> None:
    image = astronaut[:300, :200]
    assert locate_face(image, whole_image=True) == Box(0, 0, 200, 300)
    assert locate_face(image, box=Box(10, 20, 30, 40)) == Box(10, 20, 30, 40)
    # Clamped to the image.
    assert locate_face(image, box=Box(-10, 250, 50, 100)) == Box(0, 250, 40, 50)
    assert locate_face(image, box=Box(-5, -5, 500, 500)) == Box(0, 0, 200, 300)


@pytest.mark.parametrize(
    "box", [Box(200, 0, 10, 10), Box(-20, 5, 20, 5), Box(5, 5, 0, 10), Box(5, 5, 10, -3)]
)
def test_box_with_nothing_inside_is_invalid_argument(astronaut: np.ndarray, box: Box) -> None:
    image = astronaut[:300, :200]
    with pytest.raises(InvalidArgument, match=r"face\.box") as caught:
        locate_face(image, box=box)
    assert caught.value.details["field"] == "face.box"


def test_whole_image_and_box_together_are_invalid(astronaut: np.ndarray) -> None:
    with pytest.raises(InvalidArgument, match="not both"):
        locate_face(astronaut, whole_image=True, box=Box(0, 0, 10, 10))


def test_bad_arrays_are_programming_errors(astronaut: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        detect_faces(astronaut.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        locate_face(astronaut[:, :, 0])
    with pytest.raises(ValueError, match="margin"):
        crop_face(astronaut, Box(0, 0, 10, 10), 32, margin=-0.1)
    with pytest.raises(ValueError, match="resolution"):
        crop_face(astronaut, Box(0, 0, 10, 10), 0)


# --- cropping -------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [32, 64, 256])
def test_crop_is_a_square_around_the_face(
    astronaut: np.ndarray, face: Box, resolution: int
) -> None:
    crop = crop_face(astronaut, face, resolution)
    assert isinstance(crop, FaceCrop)
    assert crop.box == face
    assert crop.crop.shape == (resolution, resolution, 3) and crop.crop.dtype == np.uint8
    cb = crop.crop_box
    assert cb.width == cb.height == round(max(face.width, face.height) * 1.5)
    # Centred on the face (to a pixel) with a quarter of the face's side on each side.
    assert abs((cb.x + cb.width / 2) - (face.x + face.width / 2)) <= 1
    assert abs((cb.y + cb.height / 2) - (face.y + face.height / 2)) <= 1
    assert cb.x <= face.x and cb.x + cb.width >= face.x + face.width


def test_crop_without_margin_is_the_face(astronaut: np.ndarray) -> None:
    box = Box(100, 120, 64, 64)
    crop = crop_face(astronaut, box, 64, margin=0.0)
    assert crop.crop_box == box
    np.testing.assert_array_equal(crop.crop, astronaut[120:184, 100:164])


def test_crop_at_the_border_is_clamped_and_mirrored(astronaut: np.ndarray) -> None:
    box = Box(0, 10, 40, 40)  # the square would start at x = -10
    crop = crop_face(astronaut, box, 60, margin=0.25)
    assert crop.crop_box == Box(0, 0, 50, 60)
    assert crop.square == Box(-10, 0, 60, 60)
    assert crop.crop.shape == (60, 60, 3)
    # Same size as the square: the crop is the region with 10 mirrored columns on the left.
    np.testing.assert_array_equal(crop.crop[:, 10:], astronaut[0:60, 0:50])
    np.testing.assert_array_equal(crop.crop[:, 9::-1], astronaut[0:60, 1:11])


def test_whole_image_crop_of_a_non_square_image(astronaut: np.ndarray) -> None:
    image = astronaut[:, :300]
    box = locate_face(image, whole_image=True)
    crop = crop_face(image, box, 32)
    assert crop.crop_box == crop.box == Box(0, 0, 300, 512)
    assert crop.crop.shape == (32, 32, 3)  # the aspect is not kept


def test_tiny_box_is_upscaled(astronaut: np.ndarray) -> None:
    crop = crop_face(astronaut, Box(200, 200, 4, 4), 32)
    assert crop.crop_box == Box(199, 199, 6, 6)
    assert crop.crop.shape == (32, 32, 3)


# --- pasting --------------------------------------------------------------------------------


def _seam(image: np.ndarray, original: np.ndarray, cb: Box) -> float:
    """The largest step between neighbouring pixels across crop_box's four edges that
    ``image`` adds to the one already in ``original`` (the photo's own edges do not count)."""
    x0, y0, x1, y1 = cb.x, cb.y, cb.x + cb.width, cb.y + cb.height

    def steps(pixels: np.ndarray) -> list[np.ndarray]:
        pixels = pixels.astype(np.int16)
        return [
            pixels[y0 - 1, x0:x1] - pixels[y0, x0:x1],
            pixels[y1 - 1, x0:x1] - pixels[y1, x0:x1],
            pixels[y0:y1, x0 - 1] - pixels[y0:y1, x0],
            pixels[y0:y1, x1 - 1] - pixels[y0:y1, x1],
        ]

    pairs = zip(steps(image), steps(original), strict=True)
    return float(max(np.abs(a - b).max() for a, b in pairs))


def test_paste_is_seamless_and_leaves_the_rest_alone(astronaut: np.ndarray, face: Box) -> None:
    crop = crop_face(astronaut, face, 32)
    different = 255 - crop.crop  # as far from the original as it gets
    out = paste_face(astronaut, crop, different)
    assert out.shape == astronaut.shape and out.dtype == np.uint8
    cb = crop.crop_box
    outside = np.ones(astronaut.shape[:2], dtype=bool)
    outside[cb.y : cb.y + cb.height, cb.x : cb.x + cb.width] = False
    np.testing.assert_array_equal(out[outside], astronaut[outside])
    # The face itself is replaced outright (the feather lies in the margin).
    resized = cv2.resize(different, (cb.width, cb.height), interpolation=cv2.INTER_CUBIC)
    fy, fx = face.y - cb.y, face.x - cb.x
    np.testing.assert_array_equal(
        out[face.y : face.y + face.height, face.x : face.x + face.width],
        resized[fy : fy + face.height, fx : fx + face.width],
    )
    hard = astronaut.copy()
    hard[cb.y : cb.y + cb.height, cb.x : cb.x + cb.width] = resized
    assert _seam(hard, astronaut, cb) > 100
    assert _seam(out, astronaut, cb) <= 2


def test_feather_is_a_smooth_ramp_over_the_margin() -> None:
    black = np.zeros((200, 200, 3), dtype=np.uint8)
    crop = crop_face(black, Box(60, 60, 80, 80), 32)  # square side 120, ramp 18 px
    assert crop.crop_box == Box(40, 40, 120, 120)
    out = paste_face(black, crop, np.full_like(crop.crop, 255)).astype(np.int16)
    row = out[100, :, 0]
    assert (row[:40] == 0).all() and (row[160:] == 0).all() and (row[58:142] == 255).all()
    assert (np.diff(row[:100]) >= 0).all()  # rises monotonically to the face
    # A raised cosine over 18 px of 255 steps at most 255 * pi / 36 ~= 22 per pixel.
    assert np.abs(np.diff(row)).max() <= 23
    assert row[40] <= 2  # the first pixel inside the crop is barely touched


def test_paste_at_the_border_replaces_the_border_pixels(astronaut: np.ndarray) -> None:
    box = Box(0, 10, 40, 40)
    crop = crop_face(astronaut, box, 32)
    white = np.full_like(crop.crop, 255)
    out = paste_face(astronaut, crop, white)
    # No feather along the image's edges: the face's pixels there are all replaced.
    assert (out[0:50, 0:40] == 255).all()
    assert (out[crop.crop_box.height :, :] == astronaut[crop.crop_box.height :, :]).all()
    assert (out[:, crop.crop_box.width :] == astronaut[:, crop.crop_box.width :]).all()


def test_whole_image_round_trip_keeps_the_size(astronaut: np.ndarray) -> None:
    image = astronaut[:400, :250]
    crop = crop_face(image, locate_face(image, whole_image=True), 32)
    out = paste_face(image, crop, crop.crop)
    assert out.shape == image.shape and out.dtype == np.uint8
    expected = cv2.resize(crop.crop, (250, 400), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(out, expected)  # no feathering: there is no seam
    # Through the codec, as the response would carry it.
    assert decode_image(encode_image(out)).pixels.shape == (400, 250, 3)


def test_identity_paste_changes_little(astronaut: np.ndarray, face: Box) -> None:
    crop = crop_face(astronaut, face, 256)
    out = paste_face(astronaut, crop, crop.crop)
    diff = np.abs(out.astype(np.int16) - astronaut.astype(np.int16))
    assert diff.mean() < 1.0


def test_paste_rejects_a_sanitized_crop_of_the_wrong_shape(
    astronaut: np.ndarray, face: Box
) -> None:
    crop = crop_face(astronaut, face, 32)
    with pytest.raises(ValueError, match="sanitized"):
        paste_face(astronaut, crop, np.zeros((64, 64, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="sanitized"):
        paste_face(astronaut, crop, crop.crop.astype(np.float32))
