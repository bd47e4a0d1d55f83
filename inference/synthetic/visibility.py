"""Whether the scanner could show an injected object at all: its ideal-observer detectability.

An object only belongs to a scan's ground truth if the detector recorded it. The region rule of
`canvas.ANOMALY_VISIBLE` (the object's own attenuation) says nothing about what lies in front
of and behind it: a pistol inside a tank of brine, or under a full tank's liquid at its
deepest chord, sits where the beam is already spent, and the detector records the same counts
with or without it. No reviewer, human or model, can find it in that scan.

The measure is the detectability index of an ideal observer that knows the signal exactly
(signal-known-exactly, Gaussian noise: the matched filter), the most favourable observer there
is::

    d'^2 = sum over channels and pixels of (S_with - S_without)^2 / sigma^2

with ``S = I_air * max(T, T_FLOOR)`` the noise-free detector signal around the object's region
(the scene's transmission with and without the object's own path lengths, the world's blur and
scatter applied), ``sigma^2 = S * quantum^2 + (2.5 * electronic)^2`` the detector's photon and
electronic noise (`detector.digitize`) plus the quantization of the output bit depth. The gate
floors transmission at `conditioning.T_FLOOR` (``1e-4``, attenuation 9.2, about 380 mm of steel
at 6 MeV: the penetration of a MeV cargo scanner), so whatever the object changes below that
floor is not counted either.

An object is *seen* when ``d' >= DETECTABLE_DPRIME`` (5: the Rose criterion for an observer to
tell a known object from noise). Below it the object is recorded in the scan's metadata as
``unseen`` (label, place, d') and is no anomaly of that scan, in the same way as an object
hidden outside the detector column. The index measures noise only, not clutter: a seen object
may still be hard to tell from the cargo around it, which is what the review is for.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from inference.conditioning import T_FLOOR
from inference.synthetic.detector import noise_terms
from inference.synthetic.physics import blur
from inference.synthetic.world import World

__all__ = ["DETECTABLE_DPRIME", "MARGIN_PX", "dprime"]

FloatArray = npt.NDArray[np.float32]

DETECTABLE_DPRIME = 5.0
"""Rose criterion: below this an ideal observer cannot tell the object from the noise."""
MARGIN_PX = 4
"""Output pixels around an object's region over which its signal is summed (blur spreads it)."""
_FULL = 65535.0


def dprime(att_with: list[FloatArray], att_object: list[FloatArray], world: World) -> float:
    """The ideal-observer detectability of one object in a window of the output grid.

    ``att_with``: per channel, the scene's attenuation (``sum mu * t``) with the object;
    ``att_object``: per channel, the object's own share of it (same window).
    """
    i0 = world.air_fraction * _FULL
    photon, read2 = noise_terms(world)
    quant2 = (256.0 ** 2 if world.bits == 8 else 1.0) / 12.0
    total = 0.0
    for a_with, a_obj in zip(att_with, att_object, strict=True):
        with_t = _transmission(a_with, world)
        without_t = _transmission(a_with - a_obj, world)
        signal_without = i0 * without_t
        diff = i0 * (with_t - without_t) * (1.0 - world.scatter)
        var = signal_without * photon + read2 + quant2
        total += float(np.sum(diff.astype(np.float64) ** 2 / var))
    return float(np.sqrt(total))


def _transmission(att: FloatArray, world: World) -> FloatArray:
    """``max(exp(-att), T_FLOOR)`` with the world's blur (the broad scatter is a common offset)."""
    return np.maximum(blur(np.exp(-np.maximum(att, 0.0)).astype(np.float32), world), np.float32(T_FLOOR))
