"""synthfaces variants for unlearning: a task-correlated training set and its revision.

Unlearning needs a model that *carries* the sensitive attributes, and a revised dataset
that does not. Both are edits of the per-sample uniforms of :mod:`synthrender`, so they
keep the generator's exact labels and its "sample i depends only on (seed, i)" rule:

* ``correlate``: for each named attribute, with probability ``strength`` its uniform is
  moved into the half of its range that gives the value the sample's pose asks for
  (attribute j is on for pose ``CORRELATED_POSE[j % 3]``, off otherwise), else it keeps
  its natural draw. A pose model trained on such faces can use the attributes as a
  shortcut, so its features encode them.
* ``resample``: the "ideal" revision. The uniforms behind each named attribute are
  redrawn from an independent stream (``resample_seed``), so the revised faces keep their
  ids, poses, backgrounds and pixel noise but carry attributes independent of the task.

Within a value, a moved uniform stays uniformly distributed (an affine map of the
original draw), so the faces look like natural ones of that value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from services.common.errors import InvalidArgument

COLUMNS: dict[str, tuple[int, ...]] = {
    "male": (0, 5),
    "old": (1, 7),
    "dark_skin": (2, 6),
    "glasses": (8,),
    "smiling": (9,),
}
"""The uniforms behind each attribute that can be correlated or resampled (the first one
decides the label; the others are the cues drawn with it: hair length with presentation,
grey hair and glasses with age, hair colour with skin tone)."""
CORRELATED_POSE = (0, 2, 1)
"""Attribute j of ``correlate`` is on for this pose (left, right, frontal) and off for
the others."""
_CORRELATE_STREAM = 0xC0_77E1
_RESAMPLE_STREAM = 0x5E_5A3E


def _check(names: Sequence[str], what: str) -> None:
    unknown = sorted(set(names) - set(COLUMNS))
    if unknown:
        raise InvalidArgument(
            f"{what}: unknown attributes {unknown}; known: {sorted(COLUMNS)}",
            details={"known": ",".join(sorted(COLUMNS))},
        )


def parse_strengths(text: str) -> dict[str, float]:
    """``"male:0.9,old:0.9"`` → ``{"male": 0.9, "old": 0.9}`` (order kept)."""
    strengths: dict[str, float] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition(":")
        try:
            strengths[name] = float(value) if value else 1.0
        except ValueError:
            raise InvalidArgument(f"correlate: {item!r} is not name:strength") from None
        if not 0.0 <= strengths[name] <= 1.0:
            raise InvalidArgument(f"correlate: strength of {name!r} must be in [0, 1]")
    _check(list(strengths), "correlate")
    return strengths


def _set_value(u: np.ndarray, name: str, on: np.ndarray) -> None:
    """Move the deciding uniform of ``name`` into the range giving value ``on`` (rows)."""
    col = COLUMNS[name][0]
    x = u[:, col]
    if name == "male":  # male = u0 < 0.5
        u[:, col] = np.where(on, 0.5 * x, 0.5 + 0.5 * x)
    elif name == "old":  # old = age >= 0.6
        u[:, col] = np.where(on, 0.6 + 0.4 * x, 0.6 * x)
    elif name == "dark_skin":  # level >= 3 <=> u2 >= 0.70
        u[:, col] = np.where(on, 0.70 + 0.30 * x, 0.70 * x)
    elif name == "smiling":  # smiling = u9 < 0.5
        u[:, col] = np.where(on, 0.5 * x, 0.5 + 0.5 * x)
    else:  # glasses = u8 < cut, cut 0.45 when old else 0.15
        cut = np.where(u[:, 1] >= 0.6, 0.45, 0.15)
        u[:, col] = np.where(on, cut * x, cut + (1.0 - cut) * x)


def correlate(u: np.ndarray, seed: int, strengths: Mapping[str, float]) -> np.ndarray:
    """A copy of uniforms ``u`` (N, K) with each attribute tied to the pose (module doc)."""
    _check(list(strengths), "correlate")
    out = u.copy()
    pose = np.minimum((u[:, 10] * 3).astype(np.int64), 2)
    coins = np.random.default_rng([seed, _CORRELATE_STREAM]).random((len(u), len(COLUMNS)))
    for j, (name, strength) in enumerate(strengths.items()):
        tied = coins[:, j] < strength
        on = pose == CORRELATED_POSE[j % len(CORRELATED_POSE)]
        moved = out.copy()
        _set_value(moved, name, on)
        out[tied] = moved[tied]
    return out


def resample(u: np.ndarray, seed: int, names: Sequence[str], resample_seed: int) -> np.ndarray:
    """A copy of ``u`` with the uniforms of ``names`` redrawn independently (module doc)."""
    _check(names, "resample")
    out = u.copy()
    fresh = np.random.default_rng([seed, resample_seed, _RESAMPLE_STREAM]).random(u.shape)
    for name in names:
        cols = list(COLUMNS[name])
        out[:, cols] = fresh[:, cols]
    return out


def variant_tag(strengths: Mapping[str, float], names: Sequence[str], resample_seed: int) -> str:
    """A short, filename-safe tag of a variant ('' for natural faces), for cache names."""
    parts = [f"c{n}{s:g}" for n, s in strengths.items()]
    if names:
        parts.append(f"r{'+'.join(names)}{resample_seed}")
    return ("-" + "-".join(parts)) if parts else ""
