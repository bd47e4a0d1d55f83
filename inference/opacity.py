"""Opaque areas: parts of a scan the beam did not cross, where the review cannot see.

A MeV scanner penetrates about 300-400 mm of steel. Behind more than that (a tank of dense
liquid, a stack of steel coils, or any load at 8 bits with little air signal) the detector
reads its dark level: whatever lies there never reaches the model, and no model can call the
area clear. Customs practice treats such an area as a reason to look, so the review reports it
as a region labelled ``opaque`` and the gate does not release the truck on its own
(`gate_controller.decision.policy`: an officer decides, ``policy.opaque_action``).

The test runs on the model grid (12.5 mm columns, the scan's rows resampled to the model's),
where each pixel is the area average of the transmission it covers:

- a pixel is opaque when its high-energy transmission is below `OPAQUE_TRANSMISSION` (2e-4,
  twice the conditioning floor `T_FLOOR`; attenuation 8.5, about 350 mm of steel at 6 MeV).
  Averaging is over transmission, not attenuation, so one pixel with signal in the group keeps
  it from being opaque;
- isolated opaque pixels (a wheel hub seen edge-on, an axle, a stuck-dark speck) are removed by
  a 3 x 3 opening;
- a connected opaque area counts from ``min_area_m2`` up. GFP/1 gives the column pitch
  (``pixel_mm``) but not the detector's row pitch, so rows are converted with the nominal
  detector height `NOMINAL_DETECTOR_HEIGHT_MM` spread over the model's rows; real detectors span
  2.9-4.5 m, so the area is exact along the vehicle and within +-20 % across it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from inference.conditioning import T_FLOOR
from inference.result import DEFAULT_OPAQUE_AREA_M2

__all__ = [
    "DEFAULT_OPAQUE_AREA_M2",
    "NOMINAL_DETECTOR_HEIGHT_MM",
    "OPAQUE_ATTENUATION",
    "OPAQUE_TRANSMISSION",
    "OpaqueArea",
    "opaque_areas",
]

OPAQUE_TRANSMISSION: Final = 2.0 * T_FLOOR
OPAQUE_ATTENUATION: Final = -math.log(OPAQUE_TRANSMISSION)
NOMINAL_DETECTOR_HEIGHT_MM: Final = 4000.0
_OPENING: Final = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class OpaqueArea:
    """One connected opaque area: its bounding box on the model grid (x = column, y = row) and
    its area in square metres."""

    x: int
    y: int
    w: int
    h: int
    area_m2: float


def opaque_areas(attenuation: npt.NDArray[np.floating], column_mm: float, min_area_m2: float,
                 ) -> list[OpaqueArea]:
    """Opaque areas of at least ``min_area_m2`` in the high-energy attenuation ``-ln T`` on the
    model grid (``rows x columns``, valid columns only), largest first. ``min_area_m2 <= 0``
    turns the test off."""
    if min_area_m2 <= 0 or attenuation.size == 0:
        return []
    rows = attenuation.shape[0]
    pixel_m2 = column_mm * NOMINAL_DETECTOR_HEIGHT_MM / rows / 1e6
    mask = (attenuation >= OPAQUE_ATTENUATION).astype(np.uint8)
    if int(mask.sum()) * pixel_m2 < min_area_m2:
        return []
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _OPENING)
    count, _, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    out = []
    for i in range(1, count):
        area = float(stats[i, cv2.CC_STAT_AREA]) * pixel_m2
        if area >= min_area_m2:
            x, y, w, h = (int(v) for v in stats[i, :4])
            out.append(OpaqueArea(x=x, y=y, w=w, h=h, area_m2=round(area, 3)))
    out.sort(key=lambda a: -a.area_m2)
    return out
