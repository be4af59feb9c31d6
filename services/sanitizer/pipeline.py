"""One image through the weighted diffusion mechanism: the code path every release takes.

photo bytes ─decode─▶ pixels ─find/crop face─▶ crop (R×R) ─encode─▶ z
   z ─privatize (services.kernels.mechanism: clip, noise σ·w_a, complement)─▶ z̃
   z̃, fresh x_T ─decode (DDIM)─▶ crop' ─paste back (feathered)─▶ photo' ─PNG─▶ bytes

The encoder and decoder run on the inference backend (in-process or Triton), which the
pipeline sees as its :class:`~services.sanitizer.ports.Kernels` port; the mechanism's
noise and x_T are drawn here, from the generator each draw brings (for a release, a PCG64
seeded with 256 OS-random bits). CPU-bound image work runs on the server's worker pool
(``offload``), never on the event loop. ``bench/sanitizer.py`` and ``veil audit`` call
this same class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from services.common.imaging import ImageLimits, decode_image, encode_image
from services.inference.attributes import AttributeModel
from services.kernels.domain import DomainModel, DomainScore
from services.kernels.mechanism import (
    AttributeSpace,
    Calibration,
    Complement,
    fresh_noise,
    privatize,
)
from services.sanitizer.faces import Box, FaceCrop, crop_face, locate_face, paste_face
from services.sanitizer.ports import Kernels

T = TypeVar("T")


async def inline(fn: Callable[..., T], /, *args: Any) -> T:
    """Run ``fn`` right here (tests, benches: no server, no worker pool)."""
    return fn(*args)


@dataclass(frozen=True)
class FaceChoice:
    """Where the face is: detect it (default), the whole image, or a named box."""

    whole_image: bool = False
    box: Box | None = None


@dataclass(frozen=True)
class Prepared:
    """A decoded photo and the face crop the model sees (with its semantic code and
    in-domain score once :meth:`Pipeline.screen` has encoded it)."""

    pixels: np.ndarray
    face: FaceCrop
    code: np.ndarray | None = None
    """(d,) semantic code of the crop: :meth:`Pipeline.encode` reuses it."""
    domain: DomainScore | None = None

    @property
    def model_input(self) -> np.ndarray:
        """(3, R, R) float32 in [-1, 1]."""
        return to_model(self.face.crop[None])[0]


@dataclass(frozen=True)
class Draw:
    """One output: its calibration and the generator its noise and x_T come from."""

    calibration: Calibration
    rng: np.random.Generator


def to_model(crops: np.ndarray) -> np.ndarray:
    """(B, R, R, 3) uint8 → (B, 3, R, R) float32 in [-1, 1]."""
    return (crops.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


def from_model(images: np.ndarray) -> np.ndarray:
    """(B, 3, R, R) in [-1, 1] → (B, R, R, 3) uint8."""
    pixels = (np.clip(images, -1.0, 1.0) + 1.0) * 127.5
    return np.rint(pixels).astype(np.uint8).transpose(0, 2, 3, 1)


class Exclusive:
    """Any number of users at once, or one swap alone: a swap waits for the users in
    flight to finish, and users that come while a swap waits or runs wait for it (so a
    stream of users cannot starve it). Single event loop; every change of state is made
    without an await, so a cancelled user or swap never leaves it wrong."""

    def __init__(self) -> None:
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        self._open.set()
        self._swap = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._users += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def swapping(self) -> AsyncIterator[None]:
        async with self._swap:
            self._open.clear()
            try:
                await self._idle.wait()
                yield
            finally:
                self._open.set()


class Pipeline:
    """The mechanism end to end on one backend and one attribute model (the encoder, its
    probes and its in-domain score: a *generation*, which :meth:`install` replaces whole
    while no request is in flight)."""

    def __init__(
        self,
        backend: Callable[[], Kernels],
        model: AttributeModel,
        *,
        limits: ImageLimits | None = None,
        margin: float = 0.25,
        output_format: str = "PNG",
        backend_ready: Callable[[], bool | None] = lambda: True,
        domain: DomainModel | None = None,
    ) -> None:
        """``domain``: the encoder's in-domain score (None: every face is scored in it)."""
        self._backend = backend
        self._backend_ready = backend_ready
        self.model = model
        self.limits = limits or ImageLimits()
        self.margin = margin
        self.output_format = output_format
        self.domain = domain
        self.exclusive = Exclusive()
        """Requests run under ``exclusive.using()``; :meth:`install` under ``swapping()``."""

    @property
    def space(self) -> AttributeSpace:
        return self.model.space

    def install(self, model: AttributeModel, domain: DomainModel | None) -> None:
        """Serve ``model`` and ``domain`` from now on (the caller holds
        ``exclusive.swapping()`` and has switched the backend's encoder to match)."""
        self.model, self.domain = model, domain

    def backend_down(self) -> bool:
        """The backend's last readiness probe failed (None: no probe has answered yet, and
        the call goes on: a lease lapsing while models load is retried, never charged)."""
        return self._backend_ready() is False

    # -- images ----------------------------------------------------------------------------

    def prepare_sync(self, data: bytes, face: FaceChoice) -> Prepared:
        """Decode ``data`` within the limits, find the face, crop it for the model."""
        pixels = decode_image(data, self.limits).pixels
        return self.prepare_pixels(pixels, face)

    def prepare_pixels(self, pixels: np.ndarray, face: FaceChoice) -> Prepared:
        box = locate_face(pixels, whole_image=face.whole_image, box=face.box, margin=self.margin)
        margin = 0.0 if face.whole_image else self.margin
        return Prepared(pixels, crop_face(pixels, box, self.model.resolution, margin))

    def finish_sync(self, prepared: Prepared, crop: np.ndarray) -> bytes:
        """Paste a sanitized crop back into its photo and encode the result."""
        return encode_image(paste_face(prepared.pixels, prepared.face, crop), self.output_format)

    def finish_pixels(self, prepared: Prepared, crop: np.ndarray) -> np.ndarray:
        return paste_face(prepared.pixels, prepared.face, crop)

    # -- the mechanism ---------------------------------------------------------------------

    async def encode(self, prepared: Sequence[Prepared]) -> np.ndarray:
        """Semantic codes (B, d) of the crops (those :meth:`screen` encoded: not again)."""
        codes = [p.code for p in prepared]
        if all(c is not None for c in codes):
            return np.stack(codes)  # type: ignore[arg-type]
        batch = np.stack([p.model_input for p in prepared])
        return await self._backend().encode(batch)

    async def screen(self, prepared: Sequence[Prepared]) -> list[Prepared]:
        """Each of ``prepared`` with its code (one encoder call for all) and, with a domain
        model, its in-domain score (``services.kernels.domain``: a function of the private
        input that the mechanism's guarantee does not cover; the core returns it to the
        caller only)."""
        codes = await self.encode(prepared)
        scores = [None] * len(codes) if self.domain is None else self.domain.judge(codes)
        return [
            replace(p, code=code, domain=score)
            for p, code, score in zip(prepared, codes, scores, strict=True)
        ]

    def noisy_codes(
        self, z: np.ndarray, draws: Sequence[Draw], complement: Complement
    ) -> tuple[np.ndarray, np.ndarray]:
        """(z̃ (B, d), x_T (B, 3, R, R)): row i privatized with draw i's calibration and
        generator, which also draws its fresh x_T."""
        rows, noise = [], []
        for i, draw in enumerate(draws):
            rows.append(privatize(z[i : i + 1], self.space, draw.calibration, draw.rng, complement))
            noise.append(fresh_noise(draw.rng, 1, self.model.resolution))
        return np.concatenate(rows).astype(np.float32), np.concatenate(noise)

    async def generate(
        self, z: np.ndarray, draws: Sequence[Draw], steps: int, complement: Complement
    ) -> np.ndarray:
        """Sanitized crops (B, R, R, 3) uint8 for codes ``z`` (B, d), one draw per row."""
        noisy, x_T = self.noisy_codes(z, draws, complement)
        images = await self._backend().decode(noisy, x_T, steps)
        return from_model(np.asarray(images))
