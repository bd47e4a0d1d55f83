"""Anomalies with their ground truth, placed where smugglers put them.

Four classes: compact dense masses (steel or lead-like blocks, shielded containers), firearms
(pistols, rifle bundles), a concealed car, and compact organic masses (brick stacks). Except
for the car, each object goes either inside the load (70 %) or into a hiding place the vehicle
and box offer (`Canvas.hiding`): the floor between the cross members, the reefer's machinery
unit, between the chassis beams, a fuel tank. Objects are sized to fit where they go.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from inference.synthetic.canvas import AL, FE, ORG, PB, Canvas, blocky, ellipse, rect, rot
from inference.synthetic.cargo import car, pallet

__all__ = ["ANOMALY_DRAWERS", "HIDING_PLACES", "bbox_of", "benign_clutter"]

HIDING_PLACES: tuple[str, ...] = ("load", "floor", "reefer", "chassis", "fuel_tank")
_IN_LOAD = 0.7


class _Spot:
    """Where the object being drawn goes: the load space of the current body, or a hiding box."""

    def __init__(self, cv: Canvas, place: str, box: tuple[float, float, float, float] | None) -> None:
        self.place, self.box = place, box
        if box is None:
            self.max_w = (cv.x_in1 - cv.x_in0) * cv.col_mm * 0.9
            self.max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm * 0.8
        else:
            self.max_w = (box[2] - box[0]) * cv.col_mm
            self.max_h = (box[3] - box[1]) * cv.row_mm


def _spot(cv: Canvas, *, small: bool) -> _Spot:
    """Pick where to hide: the load, or (30 %) a hiding place of this vehicle."""
    rng = cv.rng
    places = [p for p in HIDING_PLACES[1:] if cv.hiding.get(p)]
    if not small:
        places = [p for p in places if p in ("reefer", "fuel_tank")]
    if places and (cv.body.kind == "none" or rng.random() > _IN_LOAD):
        place = str(rng.choice(places))
        boxes = cv.hiding[place]
        cv.last_place = place
        return _Spot(cv, place, boxes[int(rng.integers(0, len(boxes)))])
    cv.last_place = "load"
    return _Spot(cv, "load", None)


def _inside_point(cv: Canvas, spot: _Spot, w_mm: float, h_mm: float, on_floor: bool) -> tuple[float, float]:
    rng = cv.rng
    if spot.box is not None:
        x0, y0, x1, y1 = spot.box
        hw, hh = w_mm / 2 / cv.col_mm, h_mm / 2 / cv.row_mm
        cx = rng.uniform(x0 + hw, max(x0 + hw + 1e-3, x1 - hw))
        cy = rng.uniform(y0 + hh, max(y0 + hh + 1e-3, y1 - hh))
        return cx, cy
    half_w = w_mm / 2 / cv.col_mm
    cx = rng.uniform(cv.x_in0 + half_w + 10, max(cv.x_in0 + half_w + 11, cv.x_in1 - half_w - 10))
    inner_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm
    if on_floor:
        above = h_mm / 2 + rng.uniform(0, 150)
    else:
        above = rng.uniform(h_mm / 2 + 20, max(h_mm / 2 + 21, inner_h * 0.85 - h_mm / 2))
    return cx, cv.floor_row(above)


def bbox_of(visible: npt.NDArray[np.bool_]) -> tuple[int, int, int, int] | None:
    ys = np.flatnonzero(visible.any(axis=1))
    xs = np.flatnonzero(visible.any(axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def _anomaly_dense(cv: Canvas, layer: str) -> tuple[float, float]:
    """A compact dense mass: a steel or lead-like block, ingot, or shielded container."""
    rng = cv.rng
    spot = _spot(cv, small=True)
    w = min(rng.uniform(90, 420), max(spot.max_w * 0.9, 60))
    h = min(rng.uniform(80, 320), max(spot.max_h * 0.9, 50))
    lead = rng.random() < 0.45
    material = PB if lead else FE
    thickness = rng.uniform(45, 120) if lead else rng.uniform(70, 170)
    cx, cy = _inside_point(cv, spot, w, h, on_floor=rng.random() < 0.3)
    shape = rect(w, h) if rng.random() < 0.6 else ellipse(w, h)
    angle = rng.uniform(0, math.pi) if spot.box is None else rng.normal(0, 0.1)
    cv.add_polygon(material, rot(shape, angle), thickness, cx, cy, layer=layer)
    return cx, cy


def _pistol(length: float) -> list[tuple[npt.NDArray[np.float64], float]]:
    s = length / 200.0
    slide = np.array([[-100, -18], [100, -18], [100, 14], [-100, 14]]) * s
    grip = np.array([[-95, 10], [-45, 10], [-60, 125], [-100, 120]]) * s
    guard = np.array([[-45, 10], [-5, 10], [-10, 45], [-45, 40]]) * s
    return [(slide.astype(np.float64), 30.0), (grip.astype(np.float64), 26.0),
            (guard.astype(np.float64), 6.0)]


def _rifle(length: float) -> list[tuple[npt.NDArray[np.float64], float]]:
    s = length / 900.0
    barrel = np.array([[0, -10], [420, -10], [420, 10], [0, 10]]) * s
    receiver = np.array([[-260, -35], [20, -35], [20, 30], [-260, 30]]) * s
    magazine = np.array([[-120, 30], [-60, 30], [-30, 220], [-95, 225]]) * s
    grip = np.array([[-230, 30], [-190, 30], [-210, 130], [-250, 125]]) * s
    stock = np.array([[-480, -30], [-260, -30], [-260, 25], [-480, 70]]) * s
    return [(barrel.astype(np.float64), 22.0), (receiver.astype(np.float64), 40.0),
            (magazine.astype(np.float64), 28.0), (grip.astype(np.float64), 20.0),
            (stock.astype(np.float64), -1.0)]


def _anomaly_weapon(cv: Canvas, layer: str) -> tuple[float, float]:
    """Firearms: a pistol, a few pistols, or rifles in a bundle, at any angle (pistols only in
    tight hiding places)."""
    rng = cv.rng
    spot = _spot(cv, small=True)
    rifle = rng.random() < 0.45 and spot.max_w > 1100 and spot.max_h > 500
    count = int(rng.integers(1, 4)) if rifle else int(rng.integers(1, 5))
    if spot.box is not None and not rifle:
        count = 1
    size = rng.uniform(800, 1000) if rifle else rng.uniform(170, 230)
    cx, cy = _inside_point(cv, spot, size, size * 0.6, on_floor=rng.random() < 0.25)
    base_angle = rng.uniform(0, 2 * math.pi) if spot.box is None else rng.choice([0.0, math.pi]) + rng.normal(0, 0.1)
    for k in range(count):
        parts = _rifle(size) if rifle else _pistol(size)
        angle = base_angle + rng.normal(0, 0.15)
        ox = (k * rng.uniform(40, 120) if rifle else rng.uniform(-200, 200) * (count > 1)) / cv.col_mm
        oy = (k * rng.uniform(30, 60) if rifle else rng.uniform(-150, 150) * (count > 1)) / cv.row_mm
        for pts, thickness in parts:
            if thickness < 0:  # polymer / wooden stock
                cv.add_polygon(ORG, rot(pts, angle), 45.0, cx + ox, cy + oy, layer=layer)
            else:
                cv.add_polygon(FE, rot(pts, angle), thickness * rng.uniform(0.9, 1.15), cx + ox, cy + oy,
                               layer=layer)
    return cx, cy


def _anomaly_vehicle(cv: Canvas, layer: str) -> tuple[float, float]:
    """A car concealed in a box: cargo is loaded beside it, so it is superposed on the car."""
    rng = cv.rng
    span = cv.x_in1 - cv.x_in0
    x0 = cv.x_in0 + rng.uniform(0.02, max(0.03, 1 - 4900 / cv.col_mm / span)) * span
    bx0, by0, bx1, by1 = car(cv, x0, 0.0, layer)
    # Concealment cargo beside the car (same columns, other depth): cartons or bags.
    depth = rng.uniform(0.2, 0.45) * cv.inner_width
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 200
    x = bx0 - rng.uniform(0, 600) / cv.col_mm
    while x < bx1 + 300 / cv.col_mm:
        pallet(cv, x, 1200.0, rng.uniform(0.6, 1.0) * max_h, depth, density=rng.uniform(0.1, 0.3))
        x += 1250 / cv.col_mm
    return (bx0 + bx1) / 2, (by0 + by1) / 2


def _anomaly_organic(cv: Canvas, layer: str) -> tuple[float, float]:
    """A compact organic mass: stacked bricks of a dense organic substance (dual energy shows it)."""
    rng = cv.rng
    spot = _spot(cv, small=True)
    w = min(rng.uniform(300, 1000), max(spot.max_w * 0.9, 150))
    h = min(rng.uniform(200, 700), max(spot.max_h * 0.9, 80))
    density = rng.uniform(0.9, 1.3)
    depth = rng.uniform(250, 700)
    cx, cy = _inside_point(cv, spot, w, h, on_floor=rng.random() < 0.4)
    brick_w, brick_h = rng.uniform(150, 300), rng.uniform(60, 120)
    x_, y_, patch = cv.polygon_patch(rot(rect(w, h), rng.normal(0, 0.25)), depth * density, cx, cy)
    tex = blocky(rng, patch.shape[0], patch.shape[1], max(1, int(brick_h / cv.row_mm)),
                  max(1, int(brick_w / cv.col_mm)), spread=0.08)
    cv.add(ORG, x_, y_, patch * tex, layer)
    return cx, cy


ANOMALY_DRAWERS: dict[str, Callable[[Canvas, str], tuple[float, float]]] = {
    "dense_object": _anomaly_dense,
    "weapon": _anomaly_weapon,
    "vehicle": _anomaly_vehicle,
    "organic_mass": _anomaly_organic,
}


def benign_clutter(cv: Canvas) -> None:
    """Small metal things that are neither contraband nor cargo: tools, chains, fittings.

    They are drawn as part of the box (not cargo), so an empty box with a forgotten toolbox is
    still empty for declared-empty verification, and never an anomaly.
    """
    rng = cv.rng
    for _ in range(int(rng.integers(1, 5))):
        w, h = rng.uniform(80, 600), rng.uniform(20, 200)
        cx, cy = _inside_point(cv, _Spot(cv, "load", None), w, h, on_floor=rng.random() < 0.5)
        cv.add_polygon(FE if rng.random() < 0.5 else AL, rot(rect(w, h), rng.uniform(0, math.pi)),
                       rng.uniform(4, 18), cx, cy, layer="structure")
