"""Cargo kinds drawn into the current body: how loads look from the side.

Each drawer fills the load space of ``cv.body`` between two columns. Kinds differ by material,
density, texture and shape: pallets of cartons (produce in a reefer), stacked bags, heaped
bulk, drums, crated machinery, passenger cars, mixed LCL, plus steel coils, timber and tyres,
which are dense or structured yet legitimate. A tank container holds a liquid whatever kind is
asked for; a body without container (bare chassis, empty trailer) holds nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from inference.synthetic.canvas import AL, FE, ORG, Canvas, blocky, ellipse, rect, rot

__all__ = ["CARGO_KINDS", "car", "draw_cargo", "pallet"]

CARGO_KINDS: tuple[str, ...] = (
    "empty", "cartons", "bags", "bulk", "machinery", "drums", "vehicles", "mixed", "coils", "timber", "tyres",
)

def pallet(cv: Canvas, x0: float, length_mm: float, height_mm: float, depth_mm: float, *,
            density: float) -> None:
    rng = cv.rng
    w = max(2, int(length_mm / cv.col_mm))
    base = 150.0
    cv.add_box(ORG, x0, x0 + w, cv.floor_row(base), cv.y_floor, thick=depth_mm * 0.6 * 0.45)
    for k in range(3):  # pallet blocks
        bx = x0 + k * (w - 100 / cv.col_mm) / 2
        cv.add_box(ORG, bx, bx + 100 / cv.col_mm, cv.floor_row(base), cv.y_floor, thick=depth_mm * 0.6 * 0.5)
    top = cv.floor_row(base + height_mm)
    y0 = int(top)
    h = max(1, int(cv.floor_row(base)) - y0)
    cell_w = int(rng.uniform(250, 600) / cv.col_mm)
    cell_h = int(rng.uniform(200, 500) / cv.row_mm)
    tex = blocky(rng, h, w, cell_h, cell_w, spread=0.35)
    patch = tex * np.float32(depth_mm * density)
    # Carton walls: slightly denser lines at the carton boundaries.
    patch[::max(cell_h, 1), :] *= 1.4
    patch[:, ::max(cell_w, 1)] *= 1.3
    cv.add(ORG, int(x0), y0, patch)
    if rng.random() < 0.25:  # appliances / electronics in the cartons: small benign metal
        for _ in range(int(rng.integers(2, 8))):
            cx = x0 + rng.uniform(0.1, 0.9) * w
            cy = rng.uniform(y0 + 2, y0 + h - 2)
            m = AL if rng.random() < 0.5 else FE
            pts = rect(rng.uniform(60, 300), rng.uniform(40, 250))
            cv.add_polygon(m, rot(pts, rng.uniform(0, math.pi)), rng.uniform(3, 12), cx, cy)


def _cargo_cartons(cv: Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    depth = rng.uniform(0.6, 1.0) * cv.inner_width
    density = rng.uniform(0.06, 0.3)
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 200
    x = x0 + rng.uniform(0, 200) / cv.col_mm
    length = rng.choice([1000.0, 1200.0])
    while x + length / cv.col_mm < x1:
        pallet(cv, x, length, rng.uniform(0.4, 1.0) * max_h, depth * rng.uniform(0.8, 1.0),
                density=density * rng.uniform(0.8, 1.2))
        x += (length + rng.uniform(0, 120)) / cv.col_mm


def _cargo_bags(cv: Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    depth = rng.uniform(0.5, 1.0) * cv.inner_width
    density = rng.uniform(0.25, 0.5)
    bag_l, bag_h = rng.uniform(550, 800), rng.uniform(120, 220)
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 150
    height = rng.uniform(0.4, 0.9) * max_h
    layers = int(height / bag_h)
    shape = ellipse(bag_l, bag_h, 16)
    for layer in range(layers):
        offset = (layer % 2) * bag_l / 2
        cy = cv.floor_row(layer * bag_h * 0.92 + bag_h / 2)
        n = int((x1 - x0) * cv.col_mm / bag_l)
        for i in range(n):
            cx = x0 + (i * bag_l + offset + bag_l / 2) / cv.col_mm
            if cx + bag_l / 2 / cv.col_mm >= x1:
                break
            cv.add_polygon(ORG, shape, depth * density * rng.uniform(0.85, 1.15), cx, cy)


def _cargo_bulk(cv: Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm
    level = rng.uniform(0.3, 0.7) * max_h
    density = rng.uniform(0.2, 0.4)
    material = ORG if rng.random() < 0.8 else AL
    if material == AL:
        density *= 0.4
    cols = np.arange(int(x0), int(x1))
    t = (cols - x0) / max(x1 - x0, 1)
    # Heaped surface: angle-of-repose slopes at both ends and a gently wavy top.
    slope = np.minimum(t, 1 - t) * (x1 - x0) * cv.col_mm * rng.uniform(0.4, 0.9)
    surface = np.minimum(level, slope) + np.sin(t * rng.uniform(4, 12)) * 60
    top_rows = cv.y_floor - np.maximum(surface, 0) / cv.row_mm
    rows = np.arange(cv.rows, dtype=np.float32)[:, None]
    fill = np.clip(rows - top_rows[None, :] + 0.5, 0, 1) * (rows <= cv.y_floor)
    grain = 1 + rng.normal(0, 0.04, size=fill.shape).astype(np.float32)
    patch = (fill * grain * np.float32(cv.inner_width * density)).astype(np.float32)
    cv.add(material, int(x0), 0, patch)


def _drum(cv: Canvas, cx: float, base_mm: float, per_depth: int, fill: float, *, liquid: float) -> None:
    """A row of upright 200 l steel drums seen from the side: walls dark at the tangents."""
    r_mm, h_mm = 292.0, 880.0
    w = int(2 * r_mm / cv.col_mm) + 1
    xs = (np.arange(w, dtype=np.float32) + 0.5) * cv.col_mm - r_mm
    chord = 2 * np.sqrt(np.clip(r_mm ** 2 - xs ** 2, 0, None))
    chord_in = 2 * np.sqrt(np.clip((r_mm - 1.2) ** 2 - xs ** 2, 0, None))
    wall = (chord - chord_in) * per_depth
    y0 = int(cv.floor_row(base_mm + h_mm))
    y1 = int(cv.floor_row(base_mm))
    h = max(1, y1 - y0)
    steel = np.broadcast_to(wall[None, :], (h, w)).astype(np.float32).copy()
    steel[:2, :] += 2 * r_mm * 1.2 * per_depth / max(cv.row_mm, 1) * 0.5  # lids edge-on
    steel[-2:, :] += 2 * r_mm * 1.2 * per_depth / max(cv.row_mm, 1) * 0.5
    cv.add(FE, int(cx - w / 2), y0, steel)
    fill_rows = int(h * (1 - fill))
    content = np.zeros((h, w), dtype=np.float32)
    content[fill_rows:, :] = chord_in[None, :] * per_depth * liquid
    cv.add(ORG, int(cx - w / 2), y0, content)


def _cargo_drums(cv: Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    per_depth = int(rng.integers(1, 4))
    stacked = rng.random() < 0.4
    liquid = rng.uniform(0.35, 0.9)
    x = x0 + 320 / cv.col_mm
    while x + 320 / cv.col_mm < x1:
        _drum(cv, x, 150.0, per_depth, rng.uniform(0.6, 0.95), liquid=liquid)
        if stacked:
            _drum(cv, x, 150.0 + 900.0, per_depth, rng.uniform(0.6, 0.95), liquid=liquid)
        x += (590 + rng.uniform(0, 40)) / cv.col_mm
    cv.add_box(ORG, x0, x, cv.floor_row(150), cv.y_floor, thick=cv.inner_width * 0.25)


def _machine(cv: Canvas, x0: float, length_mm: float) -> None:
    """A crated machine: steel/aluminium components, shafts, holes, a wooden skid and crate."""
    rng = cv.rng
    height_mm = rng.uniform(700, 1900)
    cx = x0 + length_mm / 2 / cv.col_mm
    base = 120.0
    cv.add_box(ORG, x0, x0 + length_mm / cv.col_mm, cv.floor_row(base), cv.y_floor, thick=cv.inner_width * 0.35)
    if rng.random() < 0.6:  # crate boards
        cv.add_box(ORG, x0, x0 + length_mm / cv.col_mm, cv.floor_row(base + height_mm + 60),
                   cv.floor_row(base), thick=2 * 25.0 * 0.5)
    for _ in range(int(rng.integers(3, 9))):
        w, h = rng.uniform(250, length_mm * 0.8), rng.uniform(150, height_mm * 0.7)
        pcx = cx + rng.uniform(-0.3, 0.3) * length_mm / cv.col_mm
        pcy = cv.floor_row(base + rng.uniform(h / 2, max(h / 2 + 1, height_mm - h / 2)))
        material = FE if rng.random() < 0.6 else AL
        kind = rng.random()
        if kind < 0.5:
            pts = rot(rect(w, h), rng.normal(0, 0.1))
            x_, y_, patch = cv.polygon_patch(pts, rng.uniform(15, 70), pcx, pcy)
            if rng.random() < 0.6:  # lightening holes / hollow housing
                hh, ww = patch.shape
                inner = np.zeros_like(patch)
                inner[hh // 4: hh - hh // 4, ww // 5: ww - ww // 5] = 1
                patch = patch * (1 - 0.7 * inner)
            cv.add(material, x_, y_, patch)
        elif kind < 0.8:  # motor / cylinder seen side on: chord profile
            r = min(w, h) / 2
            pts = ellipse(2 * r, 2 * r)
            cv.add_polygon(material, pts, rng.uniform(30, 90), pcx, pcy)
            cv.add_polygon(FE, rect(r * 2.6, rng.uniform(40, 80)), 60.0, pcx, pcy)
        else:  # frame of tubes
            for dy in (-h / 2, h / 2):
                cv.add_polygon(FE, rect(w, 60), 12.0, pcx, pcy + dy / cv.row_mm)
            for dx in (-w / 2, w / 2):
                cv.add_polygon(FE, rect(60, h), 12.0, pcx + dx / cv.col_mm, pcy)


def _cargo_machinery(cv: Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    x = x0 + rng.uniform(0, 300) / cv.col_mm
    while True:
        length = rng.uniform(900, 3000)
        if x + length / cv.col_mm >= x1:
            break
        _machine(cv, x, length)
        x += (length + rng.uniform(100, 900)) / cv.col_mm


def car(cv: Canvas, x0: float, base_mm: float, layer: str) -> tuple[float, float, float, float]:
    """A passenger car in side view (x0 = front bumper column); returns its box (x0, y0, x1, y1)."""
    rng = cv.rng
    length = rng.uniform(3600, 4800)
    height = rng.uniform(1400, 1650)
    width = rng.uniform(1650, 1850)
    clearance = 150.0
    flip = rng.random() < 0.5
    sill = clearance + 150
    belt = clearance + rng.uniform(700, 820)
    hood_l = length * rng.uniform(0.22, 0.3)
    trunk_l = length * rng.uniform(0.12, 0.22)
    prof = np.array([
        [0, sill], [0, belt - 80], [hood_l, belt], [hood_l + 500, height],
        [length - trunk_l - 400, height], [length - trunk_l, belt + 20], [length, belt - 40], [length, sill],
    ], dtype=np.float64)
    if flip:
        prof[:, 0] = length - prof[:, 0]
    # Convert to canvas mm coordinates (y up from base -> rows down).
    row_base = cv.floor_row(base_mm)

    def place(points: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float, float]:
        pts = points.copy()
        pts[:, 1] = -pts[:, 1]
        return pts, x0, row_base

    # Body shell: both side panels plus trim and interior.
    pts, cx, cy = place(prof)
    cv.add_polygon(FE, pts, 2 * 0.9 + 3.0, cx, cy, layer=layer)
    cv.add_polygon(ORG, pts, width * 0.08, cx, cy, layer=layer)  # seats, trim, dashboard
    # Roof and floor pan seen edge-on.
    roof = np.array([[hood_l + 520, height - 10], [length - trunk_l - 420, height - 10],
                     [length - trunk_l - 420, height - 40], [hood_l + 520, height - 40]], dtype=np.float64)
    floor = np.array([[200, sill - 60], [length - 200, sill - 60], [length - 200, sill - 100],
                      [200, sill - 100]], dtype=np.float64)
    for part in (roof, floor):
        if flip:
            part[:, 0] = length - part[:, 0]
        pts, cx, cy = place(part)
        cv.add_polygon(FE, pts, width * 0.8 * 0.9 / 30.0, cx, cy, layer=layer)
    # Engine block and gearbox.
    ex = hood_l * 0.5 if not flip else length - hood_l * 0.5
    eng = np.array([[ex - 300, clearance + 250], [ex + 300, clearance + 250],
                    [ex + 300, clearance + 700], [ex - 300, clearance + 700]], dtype=np.float64)
    pts, cx, cy = place(eng)
    cv.add_polygon(AL if rng.random() < 0.5 else FE, pts, rng.uniform(120, 220), cx, cy, layer=layer)
    # Wheels: tyre ring (rubber, both sides), rim, brake disc, axle.
    wheel_r = rng.uniform(290, 340)
    for wx in (length * 0.17, length * 0.8):
        center = np.array([[wx, wheel_r + 0.0]])
        c_pts, cx, cy = place(center)
        wcx, wcy = cx + c_pts[0, 0] / cv.col_mm, cy + c_pts[0, 1] / cv.row_mm
        cv.add_polygon(ORG, ellipse(2 * wheel_r, 2 * wheel_r), 2 * 200 * 1.1, wcx, wcy, layer=layer)
        cv.add_polygon(ORG, ellipse(1.3 * wheel_r, 1.3 * wheel_r), -2 * 200 * 1.1, wcx, wcy, layer=layer)
        cv.add_polygon(AL, ellipse(1.3 * wheel_r, 1.3 * wheel_r), 2 * 20.0, wcx, wcy, layer=layer)
        cv.add_polygon(FE, ellipse(0.9 * wheel_r, 0.9 * wheel_r), 2 * 25.0, wcx, wcy, layer=layer)
        cv.add_polygon(FE, rect(70, 70), width * 0.5, wcx, wcy, layer=layer)
    # Fuel tank, exhaust.
    tank = np.array([[length * 0.55, clearance + 20], [length * 0.7, clearance + 20],
                     [length * 0.7, clearance + 240], [length * 0.55, clearance + 240]], dtype=np.float64)
    pts, cx, cy = place(tank)
    cv.add_polygon(ORG, pts, 500 * 0.7, cx, cy, layer=layer)
    y_top = row_base - height / cv.row_mm
    return x0, y_top, x0 + length / cv.col_mm, row_base


def _cargo_vehicles(cv: Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    x = x0 + rng.uniform(100, 400) / cv.col_mm
    while x + 4800 / cv.col_mm < x1:
        _, _, xe, _ = car(cv, x, 0.0, "cargo")
        # Lashing: wheel chocks and chains (small steel parts).
        for dx in (-0.0, 0.0):
            cv.add_box(FE, x + dx, x + dx + 120 / cv.col_mm, cv.floor_row(120), cv.y_floor, thick=2 * 20.0)
        x = xe + rng.uniform(250, 700) / cv.col_mm


def _cargo_mixed(cv: Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    x = x0
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 200
    while x < x1:
        length = rng.uniform(800, 2500)
        end = min(x + length / cv.col_mm, x1)
        if end - x < 800 / cv.col_mm:
            break
        kind = rng.integers(0, 5)
        if kind == 0:
            pallet(cv, x, (end - x) * cv.col_mm, rng.uniform(0.3, 1.0) * max_h,
                    rng.uniform(0.3, 1.0) * cv.inner_width, density=rng.uniform(0.05, 0.35))
        elif kind == 1:
            _cargo_bags(cv, x, end)
        elif kind == 2:
            _cargo_drums(cv, x, end)
        elif kind == 3 and length > 900:
            _machine(cv, x, (end - x) * cv.col_mm)
        else:  # crate with furniture-like wood and some fittings
            h = rng.uniform(0.3, 1.0) * max_h
            cv.add_box(ORG, x, end, cv.floor_row(h), cv.y_floor, thick=rng.uniform(0.2, 0.8) * cv.inner_width * 0.12)
            for _ in range(int(rng.integers(0, 5))):
                cv.add_box(FE, x + rng.uniform(0, end - x), x + rng.uniform(0, end - x) + 3,
                           cv.floor_row(rng.uniform(0, h)), cv.floor_row(rng.uniform(0, h)) + 2, thick=8.0)
        x = end + rng.uniform(0, 600) / cv.col_mm


def _dunnage(cv: Canvas) -> None:
    """Loose planks or a strap left in an empty box: present in real empties, not cargo."""
    rng = cv.rng
    for _ in range(int(rng.integers(1, 4))):
        x = rng.uniform(cv.x_in0 + 10, cv.x_in1 - 200)
        cv.add_box(ORG, x, x + rng.uniform(300, 1500) / cv.col_mm, cv.floor_row(25), cv.y_floor,
                   thick=rng.uniform(60, 200) * 0.6, layer="structure")


def _cargo_coils(cv: Canvas, x0: float, x1: float) -> None:
    """Steel coils on cradles, eye to the side (seen as rings) or eye up: dense but legitimate."""
    rng = cv.rng
    x = x0 + rng.uniform(100, 600) / cv.col_mm
    while True:
        d = rng.uniform(900, 1800)
        if x + d / cv.col_mm >= x1:
            break
        cx, cy = x + d / 2 / cv.col_mm, cv.floor_row(d / 2 + 80)
        width = rng.uniform(600, 1500)
        if rng.random() < 0.6:  # eye horizontal, across the beam: a ring of steel
            cv.add_polygon(FE, ellipse(d, d), width, cx, cy)
            cv.add_polygon(FE, ellipse(d * 0.35, d * 0.35), -width, cx, cy)
        else:  # eye vertical: the beam crosses the coil through its diameter (a chord profile)
            hh = width
            cy = cv.floor_row(hh / 2 + 80)
            cols = int(d / cv.col_mm)
            xs = (np.arange(cols, dtype=np.float32) + 0.5) * cv.col_mm - d / 2
            chord = 2 * np.sqrt(np.clip((d / 2) ** 2 - xs ** 2, 0, None))
            chord -= 2 * np.sqrt(np.clip((d * 0.175) ** 2 - xs ** 2, 0, None))
            rows = max(1, int(hh / cv.row_mm))
            cv.add(FE, int(cx - cols / 2), int(cy - rows / 2), np.broadcast_to(chord[None, :], (rows, cols)).copy())
        cv.add_box(ORG, cx - d / 2 / cv.col_mm, cx + d / 2 / cv.col_mm, cv.floor_row(80), cv.y_floor,
                   thick=cv.inner_width * 0.3)
        x += (d + rng.uniform(300, 1500)) / cv.col_mm


def _cargo_timber(cv: Canvas, x0: float, x1: float) -> None:
    """Sawn timber packs: long layered stacks with stickers, grain along the vehicle."""
    rng = cv.rng
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 150
    density = rng.uniform(0.4, 0.75)
    depth = rng.uniform(0.7, 1.0) * cv.inner_width
    x = x0
    while x < x1 - 20:
        length = min(rng.uniform(2400, 6000) / cv.col_mm, x1 - x)
        height = rng.uniform(0.3, 0.9) * max_h
        y0 = int(cv.floor_row(height + 100))
        h = max(1, int(cv.floor_row(100)) - y0)
        w = max(2, int(length))
        board = max(1, int(rng.uniform(25, 60) / cv.row_mm))
        tex = np.ones((h, w), np.float32)
        tex[::board * 4, :] *= 0.4  # stickers / gaps between layers
        tex *= blocky(rng, h, w, board, max(2, w // 6), spread=0.06)
        cv.add(ORG, int(x), y0, tex * np.float32(depth * density))
        x += length + rng.uniform(50, 400) / cv.col_mm


def _cargo_tyres(cv: Canvas, x0: float, x1: float) -> None:
    """Stacked tyres (rubber with steel belts): rings side-on or flat stacks."""
    rng = cv.rng
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 150
    r = rng.uniform(300, 550)
    per_depth = int(rng.integers(3, 9))
    x = x0 + r / cv.col_mm
    while x + r / cv.col_mm < x1:
        levels = max(1, int(rng.uniform(0.4, 1.0) * max_h / (2 * r)))
        for k in range(levels):
            cy = cv.floor_row(r + 2 * r * k)
            cv.add_polygon(ORG, ellipse(2 * r, 2 * r), 220.0 * per_depth, x, cy)
            cv.add_polygon(ORG, ellipse(1.2 * r, 1.2 * r), -220.0 * per_depth, x, cy)
            cv.add_polygon(FE, ellipse(2 * r, 2 * r), 2.0 * per_depth, x, cy)
        x += 2 * r / cv.col_mm * rng.uniform(1.0, 1.1)


def _tank_liquid(cv: Canvas) -> None:
    """The liquid in a tank container: a chord profile up to a fill level."""
    rng = cv.rng
    top, bottom = cv.body.y_top, cv.body.y_floor
    r_rows = (bottom - top) / 2
    cy = (top + bottom) / 2
    level = bottom - (bottom - top) * rng.uniform(0.5, 0.97)
    rows = np.arange(max(int(level), 0), min(math.ceil(bottom), cv.rows))
    dy = (rows + 0.5 - cy) * cv.row_mm
    chord = 2 * np.sqrt(np.clip((r_rows * cv.row_mm) ** 2 - dy ** 2, 0, None)) * rng.uniform(0.7, 1.4)
    c0, c1 = max(int(cv.x_in0), 0), min(int(cv.x_in1), cv.columns)
    if rows.size and c1 > c0:
        patch = np.broadcast_to(chord.astype(np.float32)[:, None], (rows.size, c1 - c0)).copy()
        cv.add(ORG if rng.random() < 0.85 else AL, c0, int(rows[0]), patch)


_CARGO_DRAWERS: dict[str, Callable[[Canvas, float, float], None]] = {
    "cartons": _cargo_cartons,
    "bags": _cargo_bags,
    "bulk": _cargo_bulk,
    "machinery": _cargo_machinery,
    "drums": _cargo_drums,
    "vehicles": _cargo_vehicles,
    "mixed": _cargo_mixed,
    "coils": _cargo_coils,
    "timber": _cargo_timber,
    "tyres": _cargo_tyres,
}


def draw_cargo(cv: Canvas, kind: str) -> None:
    """Load the current body with ``kind`` (a tank gets a liquid, a body without box nothing)."""
    rng = cv.rng
    if cv.body.kind == "none":
        return
    if cv.body.kind == "tank":
        if kind != "empty":
            _tank_liquid(cv)
        return
    if kind == "empty":
        if rng.random() < 0.35:
            _dunnage(cv)
        return
    span = cv.x_in1 - cv.x_in0
    # Partial loads are common: the load sits against the front wall, or is spread.
    fill = 1.0 if rng.random() < 0.55 else rng.uniform(0.25, 1.0)
    x0 = cv.x_in0 + 5
    x1 = cv.x_in0 + span * fill - 5
    if kind == "vehicles":
        x1 = cv.x_in1 - 5
    _CARGO_DRAWERS[kind](cv, x0, x1)


