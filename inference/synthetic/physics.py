"""From path lengths to transmitted signal: source energies, material response, scatter, blur.

Beer-Lambert ``T = exp(-sum(mu_m * t_m))`` per energy channel. The effective coefficients of
the four materials depend on the source: a 4/6 MeV dual-energy linac is the reference
(`canvas.MU_HIGH`, `canvas.LOW_HIGH_RATIO`); a 6/9 MeV source attenuates less and separates
materials less (the low/high ratio excess shrinks), a 3/6 MeV source separates them more. A
single-energy scanner has one channel at 4, 6 or 9 MeV. Per scan, each material's coefficient is
jittered by the world (a scanner's own spectral calibration), and so is the ratio excess.

Scatter adds a broad, low-contrast share of the transmitted signal (it fills in dense regions);
blur (focal spot, detector crosstalk) is a small Gaussian in each direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from inference.synthetic.canvas import LOW_HIGH_RATIO, MU_HIGH
from inference.synthetic.world import World

__all__ = ["ENERGIES", "Response", "attenuation", "blur", "response", "transmission"]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class _Source:
    mu_scale: float        # high-energy coefficient relative to the 6 MeV reference end point
    ratio_excess: float    # (low/high ratio - 1) relative to the 4/6 reference pair


ENERGIES: dict[str, _Source] = {
    "4/6": _Source(1.0, 1.0),
    "6/9": _Source(0.86, 0.7),
    "3/6": _Source(1.0, 1.3),
}
_SINGLE_MU = {4.0: 1.12, 6.0: 1.0, 9.0: 0.86}


@dataclass(frozen=True)
class Response:
    """Per-channel effective coefficients (1/mm) of the four materials."""

    mu: tuple[FloatArray, ...]


def response(world: World) -> Response:
    jitter = np.asarray(world.mu_jitter, dtype=np.float32)
    if world.energy == "single":
        return Response(mu=(MU_HIGH * np.float32(_SINGLE_MU[world.single_mev]) * jitter,))
    src = ENERGIES[world.energy]
    high = MU_HIGH * np.float32(src.mu_scale) * jitter
    ratio = 1.0 + (LOW_HIGH_RATIO - 1.0) * np.float32(src.ratio_excess * world.ratio_jitter)
    return Response(mu=(high.astype(np.float32), (high * ratio).astype(np.float32)))


def attenuation(t: FloatArray, mu: FloatArray) -> FloatArray:
    """``sum_m t[m] * mu[m]`` over the material planes of a canvas."""
    att = t[0] * mu[0]
    for m in range(1, t.shape[0]):
        att += t[m] * mu[m]
    return np.asarray(att, dtype=np.float32)


def blur(trans: FloatArray, world: World) -> FloatArray:
    """The world's focal-spot and crosstalk blur of a transmission plane (output grid)."""
    if world.blur_rows > 0.05 or world.blur_cols > 0.05:
        return np.asarray(cv2.GaussianBlur(trans, (0, 0), sigmaX=max(world.blur_cols, 0.05),
                                           sigmaY=max(world.blur_rows, 0.05)), dtype=np.float32)
    return trans


def transmission(att: FloatArray, world: World) -> FloatArray:
    """``exp(-att)`` with the world's blur and scatter applied (output grid)."""
    trans = blur(np.asarray(cv2.exp(-att), dtype=np.float32), world)
    if world.scatter > 0:
        small = cv2.resize(trans, (max(trans.shape[1] // 8, 1), max(trans.shape[0] // 8, 1)),
                           interpolation=cv2.INTER_AREA)
        broad = cv2.GaussianBlur(small, (0, 0), sigmaX=4.0)
        broad = cv2.resize(broad, (trans.shape[1], trans.shape[0]), interpolation=cv2.INTER_LINEAR)
        trans = np.asarray(trans * np.float32(1.0 - world.scatter) + broad * np.float32(world.scatter),
                           dtype=np.float32)
    return trans
