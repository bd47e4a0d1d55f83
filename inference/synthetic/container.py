"""Container bodies seen from the side: dry, high-cube, reefer, tank, open-top, flat-rack.

The beam crosses the box across its width, so side walls add a path that varies with the
corrugation, while roof, floor and cross members are seen edge-on as dark lines. Each type
adds what makes it recognisable: the reefer's insulated walls and machinery unit at the front
wall, the tank's shell and frame, the open-top's tarpaulin on roof bows, the flat-rack's end
walls without sides or roof. Everything here is ``structure`` (never cargo).
"""

from __future__ import annotations

import math

import numpy as np

from inference.synthetic.canvas import AL, FE, INNER_WIDTH_MM, ORG, Body, Canvas

__all__ = ["CONTAINER_HEIGHT_MM", "LENGTHS_MM", "draw_container"]

LENGTHS_MM = {20: 6058.0, 40: 12192.0, 45: 13716.0}
CONTAINER_HEIGHT_MM = {"dry": 2591.0, "high_cube": 2896.0, "reefer": 2896.0, "tank": 2591.0,
                       "open_top": 2591.0, "flat_rack": 2591.0}


def _walls(cv: Canvas, xs: float, xe: float, y_top: float, y_bottom: float, *, sheet: float, pitch: float,
           depth: float) -> None:
    """Corrugated side walls (both sides): the inclined flanks lengthen the beam's path."""
    c0, c1 = max(int(xs), 0), min(math.ceil(xe), cv.columns)
    if c1 <= c0:
        return
    cols = np.arange(c0, c1, dtype=np.float32)
    phase = ((cols - xs) * cv.col_mm / pitch) % 1.0
    flank = ((phase > 0.2) & (phase < 0.35)) | ((phase > 0.7) & (phase < 0.85))
    wall = np.where(flank, 2 * sheet * depth, 2 * sheet).astype(np.float32)
    y0, y1 = max(int(y_top), 0), min(math.ceil(y_bottom), cv.rows)
    cv.t[FE, y0:y1, c0:c1] += wall[None, :]


def _roof(cv: Canvas, xs: float, xe: float, y_roof: float, *, material: int, sheet_mm: float) -> None:
    """A roof sheet seen edge-on: a wavy dark line (its corrugation), plus the top side rails."""
    c = np.arange(max(int(xs), 0), min(int(xe), cv.columns))
    if c.size == 0:
        return
    wave = np.sin((c - xs) * cv.col_mm / cv.rng.uniform(400, 520) * 2 * math.pi) * cv.rng.uniform(10, 25) / cv.row_mm
    r = y_roof + 0.4 + wave
    inside = (r >= 0) & (r < cv.rows - 1)  # a tall box's roof may be above the detector column
    r, c = r[inside], c[inside]
    ri = r.astype(np.int64)
    frac = (r - ri).astype(np.float32)
    roof = np.float32(INNER_WIDTH_MM * sheet_mm / cv.row_mm)
    cv.t[material, ri, c] += roof * (1 - frac)
    cv.t[material, ri + 1, c] += roof * frac


def _floor(cv: Canvas, xs: float, xe: float, y_floor: float, y_bottom: float) -> None:
    """Plywood floor edge-on across the width, cross members every ~300 mm, bottom rails."""
    rng = cv.rng
    ply_rows = rng.uniform(26, 30) / cv.row_mm
    cv.add_box(ORG, xs, xe, y_floor, y_floor + ply_rows, thick=INNER_WIDTH_MM * 0.7, layer="structure")
    pitch = float(rng.uniform(270, 340)) / cv.col_mm
    x = xs + float(rng.uniform(0.5, 1.0)) * pitch
    while x < xe - 5:
        cv.add_vertical_sheet(FE, x, y_floor + ply_rows, y_bottom, 4.5, across_mm=INNER_WIDTH_MM)
        cv.add_edge_sheet(FE, x - 22 / cv.col_mm, x + 22 / cv.col_mm, y_bottom - 0.6, 4.5, across_mm=INNER_WIDTH_MM)
        x += pitch
    cv.add_box(FE, xs, xe, y_floor, y_bottom, thick=2 * 6.0, layer="structure")
    cv.add_hiding_place("floor", xs + 200 / cv.col_mm, y_floor + ply_rows, xe - 200 / cv.col_mm, y_bottom)


def _end_frames(cv: Canvas, xs: float, xe: float, y_roof: float, *, y_bottom: float, y_floor: float,
                doors: bool = True) -> None:
    """Front wall and corner posts, door end with doors and locking bars, corner castings."""
    cv.add_box(FE, xs, xs + 60 / cv.col_mm, y_roof, y_bottom, thick=2 * 9.0 + 40.0, layer="structure")
    cv.add_vertical_sheet(FE, xs + 30 / cv.col_mm, y_roof, y_floor, 2.0, across_mm=INNER_WIDTH_MM * 0.9)
    cv.add_box(FE, xe - 130 / cv.col_mm, xe, y_roof, y_bottom, thick=2 * 11.0 + 30.0, layer="structure")
    if doors:
        for k in range(4):  # locking bars
            cv.add_box(FE, xe - (40 + 20 * k) / cv.col_mm, xe - (20 + 20 * k) / cv.col_mm,
                       y_roof, y_bottom, thick=2 * 15.0, layer="structure")
        cv.add_vertical_sheet(FE, xe - 60 / cv.col_mm, y_roof, y_floor, 2.0, across_mm=INNER_WIDTH_MM * 0.8)
    for xc in (xs, xe - 178 / cv.col_mm):
        for yc in (y_roof, y_bottom - 118 / cv.row_mm):
            cv.add_box(FE, xc, xc + 178 / cv.col_mm, yc, yc + 118 / cv.row_mm, thick=2 * 40.0, layer="structure")


def _dents_and_patches(cv: Canvas, xs: float, xe: float, y_roof: float, y_floor: float) -> None:
    """Dents lengthen the wall path locally; welded patches add a plate."""
    rng = cv.rng
    for _ in range(int(rng.integers(1, 5))):
        w, h = rng.uniform(150, 900) / cv.col_mm, rng.uniform(150, 900) / cv.row_mm
        x = rng.uniform(xs, max(xs + 1, xe - w))
        y = rng.uniform(y_roof, max(y_roof + 1, y_floor - h))
        cv.add_box(FE, x, x + w, y, y + h, thick=rng.uniform(1.0, 4.0), layer="structure")


def _reefer_unit(cv: Canvas, xs: float, y_roof: float, y_floor: float) -> float:
    """Machinery unit in the front wall: compressor, condenser coil, fans, controller.

    Returns the column where the insulated load space starts. The unit is a hiding place.
    """
    rng = cv.rng
    depth = rng.uniform(350, 450) / cv.col_mm
    height = y_floor - y_roof
    cv.add_box(AL, xs, xs + depth, y_roof, y_floor, thick=INNER_WIDTH_MM * 0.02, layer="structure")
    comp_w, comp_h = rng.uniform(250, 380), rng.uniform(300, 450)
    cx = xs + depth * rng.uniform(0.35, 0.65)
    cy = y_floor - height * rng.uniform(0.15, 0.3)
    cv.add_box(FE, cx - comp_w / 2 / cv.col_mm, cx + comp_w / 2 / cv.col_mm, cy - comp_h / cv.row_mm, cy,
               thick=rng.uniform(120, 220), layer="structure")
    coil_y = y_roof + height * rng.uniform(0.1, 0.3)
    cv.add_box(AL, xs + 0.1 * depth, xs + 0.9 * depth, coil_y, coil_y + height * 0.35, thick=rng.uniform(80, 200),
               layer="structure")
    for k in range(int(rng.integers(1, 3))):  # fan motors
        fy = y_roof + height * (0.55 + 0.15 * k)
        cv.add_disc(FE, xs + depth / 2, fy, rng.uniform(70, 110), rng.uniform(60, 120))
    cv.add_hiding_place("reefer", xs + 0.1 * depth, y_roof + 0.1 * height, xs + 0.9 * depth, y_floor - 0.05 * height)
    return xs + depth


def _tank(cv: Canvas, xs: float, xe: float, y_roof: float, y_floor: float) -> tuple[float, float]:
    """Tank container: a steel shell in a frame. Returns the shell's top and bottom rows."""
    rng = cv.rng
    diameter = rng.uniform(2100, 2350)
    cy = (y_roof + y_floor) / 2
    r_rows = diameter / 2 / cv.row_mm
    x0, x1 = xs + 250 / cv.col_mm, xe - 250 / cv.col_mm
    rows = np.arange(max(int(cy - r_rows) - 1, 0), min(math.ceil(cy + r_rows) + 1, cv.rows))
    dy = (rows + 0.5 - cy) * cv.row_mm
    half = diameter / 2
    chord = 2 * np.sqrt(np.clip(half ** 2 - dy ** 2, 0, None))
    chord_in = 2 * np.sqrt(np.clip((half - 6.0) ** 2 - dy ** 2, 0, None))
    shell = (chord - chord_in).astype(np.float32)
    c0, c1 = max(int(x0), 0), min(math.ceil(x1), cv.columns)
    if c1 > c0 and rows.size:
        cv.t[FE, rows[0]:rows[-1] + 1, c0:c1] += shell[:, None]
    for xe_ in (x0, x1 - 12 / cv.col_mm):  # dished ends, seen as dark vertical arcs
        cv.add_vertical_sheet(FE, xe_, cy - r_rows, cy + r_rows, 8.0, across_mm=diameter * 0.8)
    cv.add_box(ORG, x0, x1, cy - r_rows, cy + r_rows, thick=2 * 50.0 * 0.04, layer="structure")  # insulation
    # Frame: top and bottom rails, diagonal braces at the ends.
    for y in (y_roof, y_floor - 150 / cv.row_mm):
        cv.add_box(FE, xs, xe, y, y + 150 / cv.row_mm, thick=2 * 8.0, layer="structure")
    return cy - r_rows, cy + r_rows


def draw_container(cv: Canvas, kind: str, x_start: float, length_mm: float, bottom_mm: float, *,
                   dents: bool) -> Body:
    """Draw one container of type ``kind`` from column ``x_start`` with its bottom at ``bottom_mm``."""
    rng = cv.rng
    height = CONTAINER_HEIGHT_MM[kind]
    xs = x_start
    xe = x_start + length_mm / cv.col_mm
    y_roof = cv.row_of(bottom_mm + height)
    y_bottom = cv.row_of(bottom_mm)
    floor_mm = 160.0
    y_floor = cv.row_of(bottom_mm + floor_mm)
    y_top = cv.row_of(bottom_mm + height - 60.0)
    x_in0, x_in1 = xs + 60.0 / cv.col_mm, xe - 130.0 / cv.col_mm
    inner = INNER_WIDTH_MM
    if kind == "flat_rack":
        # Floor beams and end walls only; the load may stand out of the silhouette.
        cv.add_box(FE, xs, xe, y_floor, y_bottom, thick=2 * 25.0, layer="structure")
        cv.add_box(ORG, xs, xe, y_floor, y_floor + 40 / cv.row_mm, thick=INNER_WIDTH_MM * 0.6, layer="structure")
        for x in (xs, xe - 250 / cv.col_mm):
            cv.add_box(FE, x, x + 250 / cv.col_mm, y_roof, y_floor, thick=2 * 12.0 + 60.0, layer="structure")
        x_in0, x_in1 = xs + 260 / cv.col_mm, xe - 260 / cv.col_mm
        cv.add_hiding_place("floor", xs + 300 / cv.col_mm, y_floor + 40 / cv.row_mm, xe - 300 / cv.col_mm, y_bottom)
    elif kind == "tank":
        _floor(cv, xs, xe, y_floor, y_bottom)
        top, bottom = _tank(cv, xs, xe, y_roof, y_floor)
        _end_frames(cv, xs, xe, y_roof, y_bottom=y_bottom, y_floor=y_floor, doors=False)
        y_top, y_floor = top + 3, bottom - 1
        x_in0, x_in1 = xs + 300 / cv.col_mm, xe - 300 / cv.col_mm
        inner = 2100.0
    else:
        sheet = 1.6 if kind != "reefer" else 1.0
        _walls(cv, xs, xe, y_roof, y_bottom, sheet=sheet, pitch=float(rng.uniform(250, 300)),
               depth=float(rng.uniform(1.8, 2.6)) if kind != "reefer" else 1.0)
        if kind == "open_top":
            # Tarpaulin (PVC, organic) sagging between roof bows.
            _roof(cv, xs, xe, y_roof + 30 / cv.row_mm, material=ORG, sheet_mm=1.2)
            pitch = rng.uniform(900, 1300) / cv.col_mm
            x = xs + pitch
            while x < xe - 5:
                cv.add_box(FE, x, x + 40 / cv.col_mm, y_roof, y_roof + 60 / cv.row_mm, thick=INNER_WIDTH_MM * 0.01,
                           layer="structure")
                x += pitch
        else:
            _roof(cv, xs, xe, y_roof, material=FE if kind != "reefer" else AL, sheet_mm=2.0)
        cv.add_box(FE, xs, xe, y_roof, y_roof + 100.0 / cv.row_mm, thick=2 * 12.0, layer="structure")
        _floor(cv, xs, xe, y_floor, y_bottom)
        _end_frames(cv, xs, xe, y_roof, y_bottom=y_bottom, y_floor=y_floor)
        if kind == "reefer":
            # Insulation (polyurethane foam, ~100 mm each side) and aluminium T-floor.
            cv.add_box(ORG, xs, xe, y_roof, y_floor, thick=2 * 100.0 * 0.04, layer="structure")
            cv.add_box(AL, xs, xe, y_floor - 60 / cv.row_mm, y_floor, thick=INNER_WIDTH_MM * 0.08, layer="structure")
            x_in0 = _reefer_unit(cv, xs, y_roof, y_floor) + 100 / cv.col_mm
            y_top = cv.row_of(bottom_mm + height - 150.0)
            inner = 2290.0
        if dents:
            _dents_and_patches(cv, xs, xe, y_roof, y_floor)
    body = Body(kind=kind, x_start=xs, x_end=xe, y_roof=y_roof, y_bottom=y_bottom, y_floor=y_floor,
                y_top=y_top, x_in0=x_in0, x_in1=x_in1, inner_width_mm=inner)
    cv.bodies.append(body)
    return body
