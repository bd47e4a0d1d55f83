"""Opaque areas on the model grid: what counts, how large, what is left out."""

from __future__ import annotations

import numpy as np
import pytest

from inference.opacity import NOMINAL_DETECTOR_HEIGHT_MM, OPAQUE_ATTENUATION, opaque_areas

COLUMN_MM = 12.5
ROWS = 256
PIXEL_M2 = COLUMN_MM * NOMINAL_DETECTOR_HEIGHT_MM / ROWS / 1e6


def _grid() -> np.ndarray:
    a = np.full((ROWS, 1200), 2.0, np.float32)  # a load the beam crosses
    a[:, :100] = 0.0  # air before the vehicle
    return a


def test_an_opaque_block_is_found_with_its_box_and_area() -> None:
    a = _grid()
    a[100:164, 500:580] = 9.2  # the conditioning floor: nothing came through
    a[10:12, 900:902] = 9.2  # an axle seen end-on: a speck, not an area
    (area,) = opaque_areas(a, COLUMN_MM, 0.5)
    assert (area.x, area.y, area.w, area.h) == (500, 100, 80, 64)
    assert area.area_m2 == pytest.approx(80 * 64 * PIXEL_M2, rel=1e-3)


def test_below_the_opacity_level_or_the_minimum_area_nothing_is_found() -> None:
    a = _grid()
    a[100:164, 500:580] = OPAQUE_ATTENUATION - 0.05  # dark, but the beam still crossed it
    assert opaque_areas(a, COLUMN_MM, 0.5) == []
    a[100:164, 500:580] = 9.2
    area = 80 * 64 * PIXEL_M2
    assert opaque_areas(a, COLUMN_MM, area * 1.1) == []
    assert len(opaque_areas(a, COLUMN_MM, area * 0.9)) == 1
    assert opaque_areas(a, COLUMN_MM, 0.0) == []  # the test turned off


def test_areas_come_largest_first_and_separately() -> None:
    a = _grid()
    a[50:100, 200:260] = 9.2
    a[120:220, 700:800] = 9.2
    areas = opaque_areas(a, COLUMN_MM, 0.2)
    assert [x.x for x in areas] == [700, 200]
    assert areas[0].area_m2 > areas[1].area_m2
