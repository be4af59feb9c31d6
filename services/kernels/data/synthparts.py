"""The parts of a procedural face, each a soft mask painted onto a batch of canvases.

Conventions: ``img`` is float32 (B, 3, R, R) in [0, 1], painted in place (channels
first: numpy broadcasts a mask over long rows fast, over a trailing axis of 3 slowly); ``u`` is the
(B, K) uniform table of :mod:`synthrender`; face coordinates put the face centre near
(0, 0), x to the right, y down, the face about one unit wide. Per-sample scalars are
(B,) arrays and broadcast as (B, 1, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

F = np.float32


def _c(values: np.ndarray) -> np.ndarray:
    """(B,) → (B, 1, 1) for broadcasting over the pixel grid."""
    return np.asarray(values, dtype=F)[:, None, None]


@dataclass(frozen=True)
class Grid:
    """Image coords (gu, gv) in [-1, 1] and per-sample face coords (x, y)."""

    gu: np.ndarray
    gv: np.ndarray
    x: np.ndarray
    y: np.ndarray
    px: np.ndarray
    """One pixel in face units, (B, 1, 1): the width of every soft edge."""

    @staticmethod
    def make(u: np.ndarray, resolution: int) -> Grid:
        """Translate (±0.12), scale (0.88–1.1) and rotate (±12°) each head."""
        axis = ((np.arange(resolution, dtype=F) + F(0.5)) / F(resolution)) * F(2) - F(1)
        gu, gv = axis[None, None, :], axis[None, :, None]
        tx, ty = _c((u[:, 14] - 0.5) * 0.24), _c((u[:, 15] - 0.5) * 0.24 + 0.04)
        scale = _c(0.88 + 0.22 * u[:, 16])
        theta = _c((u[:, 17] - 0.5) * np.deg2rad(24))
        cos, sin = np.cos(theta), np.sin(theta)
        du, dv = gu - tx, gv - ty
        x = (cos * du + sin * dv) / scale
        y = (cos * dv - sin * du) / scale
        return Grid(gu, gv, x, y, F(2.0 / resolution) / scale)


def ramp(signed: np.ndarray, px: np.ndarray) -> np.ndarray:
    """A one-pixel antialiased edge: 1 inside (signed > 0), 0 outside."""
    return np.clip(F(0.5) + signed / px, F(0), F(1))


def ellipse(g: Grid, cx, cy, a, b) -> np.ndarray:
    """Soft ellipse mask; (1 − d)·min(a, b) approximates the distance to the edge."""
    d = np.sqrt(((g.x - cx) / a) ** 2 + ((g.y - cy) / b) ** 2)
    return ramp((F(1) - d) * np.minimum(a, b), g.px)


def band(g: Grid, cx, half_width, top, bottom) -> np.ndarray:
    """Soft region between curves ``top`` < y < ``bottom`` over |x − cx| < half_width."""
    inside_x = ramp(half_width - np.abs(g.x - cx), g.px)
    return inside_x * ramp(g.y - top, g.px) * ramp(bottom - g.y, g.px)


def paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-composite ``colour`` ((B, 3) or (B, 3, R, R)) through ``mask`` (B, R, R)."""
    m = mask[:, None]
    if colour.ndim == 2:
        colour = colour[:, :, None, None]
    img += m * (colour - img)


def shade(img: np.ndarray, mask: np.ndarray, factor: np.ndarray | float) -> None:
    """Multiply the pixels under ``mask`` by ``factor`` (darken < 1 < brighten)."""
    img *= (F(1) + mask * (np.asarray(factor, dtype=F) - F(1)))[:, None]


def background(g: Grid, u: np.ndarray) -> np.ndarray:
    """A random colour with a gradient and a sinusoidal texture of random orientation."""
    base = (0.15 + 0.75 * u[:, 21:24]).astype(F)[:, :, None, None]
    angle, freq = _c(u[:, 25] * np.pi), _c(1.5 + 5.0 * u[:, 24])
    along = np.cos(angle) * g.gu + np.sin(angle) * g.gv
    texture = _c(0.12 * u[:, 26]) * np.sin(freq * np.pi * along + _c(6.28 * u[:, 27]))
    slope = np.cos(_c(u[:, 37] * 6.28)) * g.gu + np.sin(_c(u[:, 37] * 6.28)) * g.gv
    return base * (F(1) + (texture + F(0.2) * slope)[:, None])


def hair_back(img, g: Grid, hair, u, long_hair) -> None:
    """Long hair: a mass behind the head that falls to the shoulders."""
    volume = _c(0.62 + 0.1 * u[:, 36])
    mask = ellipse(g, 0.0, 0.22, volume, 0.98) * ramp(F(0.92) - g.y, g.px)
    paint(img, mask * _c(long_hair), hair)


def face(img, g: Grid, skin, u, male, old, age) -> None:
    """Neck, then the face: a superellipse whose lower half is the jaw.

    The presentation cue is the jaw: wider and squarer (exponent ~3) for one class,
    narrower and rounder (exponent 2) for the other, with overlapping noise. Age sags
    the jaw (longer face) and draws forehead lines, nasolabial folds and eye bags.
    """
    neck = band(g, 0.0, F(0.2), F(0.3), F(1.5))
    paint(img, neck, skin * F(0.82))
    jaw_a = _c(np.where(male == 1, 0.49, 0.41) + (u[:, 11] - 0.5) * 0.08)
    jaw_p = _c(np.where(male == 1, 3.0, 2.0) + (u[:, 11] - 0.5) * 0.6)
    top_a = _c(0.47 + (u[:, 13] - 0.5) * 0.06)
    wrinkle = _c(np.clip((age - 0.45) / 0.35, 0, 1) * (0.7 + 0.6 * u[:, 31]))
    b = F(0.66) + F(0.05) * wrinkle
    lower = g.y > 0.05
    a = np.where(lower, jaw_a, top_a)
    p = np.where(lower, jaw_p, F(2.0))
    d = (np.abs(g.x / a) ** p + np.abs((g.y - F(0.05)) / b) ** p) ** (F(1) / p)
    mask = ramp((F(1) - d) * F(0.45), g.px)
    rim = np.clip(d, 0, 1) ** 4
    paint(img, mask, skin[:, :, None, None] * (F(1) - F(0.18) * rim)[:, None])
    _wrinkles(img, g, mask * wrinkle)


def _wrinkles(img, g: Grid, strength) -> None:
    """Forehead lines, nasolabial folds and bags under the eyes, scaled by age."""
    lines = np.cos(F(2 * np.pi / 0.065) * (g.y + F(0.01) * np.sin(F(7) * g.x))) ** 8
    forehead = band(g, 0.0, F(0.28), F(-0.44), F(-0.22)) * lines
    fold_x = np.abs(g.x) - (F(0.1) + (g.y - F(0.16)) * F(0.45))
    folds = band(g, 0.0, F(0.3), F(0.16), F(0.42)) * ramp(F(0.014) - np.abs(fold_x), g.px)
    bags = sum(
        ellipse(g, sx, 0.045, F(0.08), F(0.035)) - ellipse(g, sx, 0.03, F(0.075), F(0.03))
        for sx in (-0.2, 0.2)
    )
    shade(img, np.clip(forehead * 0.3 + folds * 0.4 + bags * 0.3, 0, 1) * strength, 0.55)


def hair_cap(img, g: Grid, hair, u) -> None:
    """Hair on top of the head and at the temples, with strand texture."""
    outer = ellipse(g, 0.0, -0.08, _c(0.53 + 0.06 * u[:, 36]), F(0.75))
    inner = ellipse(g, 0.0, 0.16, F(0.46), F(0.63))
    strands = F(1) + F(0.08) * np.sin(F(40) * g.x + _c(u[:, 30] * 6.28))
    paint(img, outer * (F(1) - inner), hair[:, :, None, None] * strands[:, None])


def stubble(img, g: Grid, noise, u, male, shift) -> None:
    """A dotted beard shadow on a third of one presentation class: texture, not shape."""
    has = _c((male == 1) & (u[:, 35] < 0.35))
    region = ellipse(g, _c(shift), 0.42, F(0.32), F(0.26)) * ramp(g.y - F(0.26), g.px)
    dots = (noise[:, 0] > 0.6).astype(F)
    shade(img, region * dots * has, 0.7)


def eyes(img, g: Grid, brow_colour, u, male, shift) -> None:
    """Whites, irises, pupils and brows; brows are thicker for the jaw-wide class."""
    iris = np.array([[0.30, 0.18, 0.08], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30]], F)
    iris_rgb = iris[np.minimum((u[:, 29] * 3).astype(np.int64), 2)]
    thick = _c(np.where(male == 1, 0.036, 0.017) + (u[:, 12] - 0.5) * 0.012)
    for side in (-1.0, 1.0):
        cx = _c(side * 0.2 + shift)
        paint(img, ellipse(g, cx, -0.04, F(0.085), F(0.045)), np.full((len(u), 3), 0.95, F))
        gaze = cx + _c(shift * 0.3)
        paint(img, ellipse(g, gaze, -0.04, F(0.04), F(0.04)), iris_rgb)
        paint(img, ellipse(g, gaze, -0.04, F(0.018), F(0.018)), np.zeros((len(u), 3), F))
        arch = F(-0.16) + F(0.035) * ((g.x - cx) / F(0.11)) ** 2
        brow = band(g, cx, F(0.11), arch - thick, arch + thick)
        paint(img, brow, brow_colour * F(0.6))


def nose_and_mouth(img, g: Grid, skin, u, smiling, shift) -> None:
    """A shaded nose and a mouth: a thin line, or a wide open crescent showing teeth."""
    nx = _c(shift * 1.3)
    shade(img, ellipse(g, nx, 0.13, F(0.05), F(0.1)), 0.88)
    for side in (-1.0, 1.0):
        shade(img, ellipse(g, nx + F(side * 0.035), 0.2, F(0.02), F(0.014)), 0.5)
    smile = _c(smiling)
    mx, my = _c(shift * 1.2), F(0.37)
    strength = _c(0.7 + 0.6 * u[:, 33])
    width = F(0.13) + smile * F(0.08)
    t2 = np.minimum(((g.x - mx) / width) ** 2, F(1))
    lift = smile * F(0.06) * strength * t2
    top = my - F(0.018) - lift
    bottom = my + F(0.018) + smile * (F(0.09) * strength * (F(1) - t2)) - lift
    lip = np.array([0.72, 0.30, 0.30], F) * (0.85 + 0.3 * u[:, 34:35]).astype(F)
    paint(img, band(g, mx, width, top, bottom), lip)
    teeth = band(g, mx, width * F(0.8), top + F(0.018), bottom - F(0.03)) * smile
    paint(img, teeth, np.full((len(u), 3), 0.96, F))


def glasses(img, g: Grid, u, worn, shift) -> None:
    """Two rims and a bridge in a random frame colour, with slightly tinted lenses."""
    frames = np.array([[0.05, 0.05, 0.05], [0.35, 0.2, 0.1], [0.75, 0.6, 0.2]], F)
    colour = frames[np.minimum((u[:, 32] * 3).astype(np.int64), 2)]
    on = _c(worn)
    for side in (-1.0, 1.0):
        cx = _c(side * 0.2 + shift)
        outer = ellipse(g, cx, -0.04, F(0.15), F(0.11))
        inner = ellipse(g, cx, -0.04, F(0.115), F(0.075))
        shade(img, inner * on, _c(0.55 + 0.3 * u[:, 39]))
        paint(img, (outer - inner) * on, colour)
    paint(img, band(g, _c(shift), F(0.06), F(-0.07), F(-0.045)) * on, colour)


def finish(img, g: Grid, noise, u) -> np.ndarray:
    """Lighting (brightness and a directional gradient), pixel noise, then uint8."""
    light = _c(0.72 + 0.5 * u[:, 18]) * (
        F(1) + _c((u[:, 19] - 0.5) * 0.5) * g.gu + _c((u[:, 20] - 0.5) * 0.3) * g.gv
    )
    img *= light[:, None]
    img += noise * _c(0.01 + 0.035 * u[:, 28])[:, None]
    out = (np.clip(img, 0, 1) * F(255) + F(0.5)).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))
