"""Seeded, physics-minded synthetic X-ray scans of containers, with ground truth.

No public cargo X-ray data can be had for this project, so the whole review loop (firmware
simulator, training, evaluation, tests) runs on scans made here. The generator models what shapes
a real drive-through scan:

* Beer-Lambert attenuation ``I = I0 * exp(-sum(mu_m * t_m))`` summed over four materials (organic,
  light metal, steel, lead-like), with a different effective coefficient per material for the two
  energies, so the low/high attenuation ratio carries the material (what dual energy is for);
* the container body seen from the side: corrugated side walls crossed by the beam, the roof and
  the plywood floor seen edge-on (dark lines), floor cross members, corner posts, door frame and
  corner castings, the trailer chassis below;
* cargo kinds (pallets of cartons, bags, bulk, machinery, drums, vehicles, mixed LCL) or nothing;
* anomalies with random pose, size and the cargo around them as clutter, each with its region;
* detector noise (photon + read noise), pulse-to-pulse gain drift, per-element gain residue, and
  column stretching from the truck's speed changes.

Everything is drawn with numpy/OpenCV on a canvas of per-material path lengths, so a 40 ft scan
(2400 x 256 x 2) takes a few tens of milliseconds. The same seed always yields the same scan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.scan import Scan

__all__ = [
    "ANOMALY_CLASSES",
    "CARGO_KINDS",
    "MATERIALS",
    "SCENARIOS",
    "Region",
    "SyntheticScan",
    "generate_scan",
    "generate_scenario",
]

CARGO_KINDS: tuple[str, ...] = (
    "empty", "cartons", "bags", "bulk", "machinery", "drums", "vehicles", "mixed",
)
ANOMALY_CLASSES: tuple[str, ...] = ("dense_object", "weapon", "vehicle", "organic_mass")
MATERIALS: tuple[str, ...] = ("organic", "aluminium", "steel", "lead")

# Effective linear attenuation (1/mm, material at its nominal density; organic = water-equivalent)
# at the high energy of a dual-energy linac, and the low/high ratio per material. Steel and lead
# are close to tabulated mass attenuation near 2 MeV; the ratios are deliberately a little wider
# than a 6/4 MV source gives so that material discrimination is learnable, as it is on scanners
# with their own spectral calibration.
MU_HIGH = np.array([0.0045, 0.0118, 0.0335, 0.052], dtype=np.float32)
LOW_HIGH_RATIO = np.array([1.42, 1.28, 1.16, 1.05], dtype=np.float32)
MU_LOW = MU_HIGH * LOW_HIGH_RATIO
_ORG, _AL, _FE, _PB = range(4)

# Geometry. The detector column spans 3.2 m of height (from 1.1 m above ground, below the
# container floor, to 4.3 m, above a high-cube roof); columns are scanner pulses.
_SPAN_BOTTOM_MM = 1100.0
_SPAN_TOP_MM = 4300.0
_CONTAINER_BOTTOM_MM = 1250.0
_INNER_WIDTH_MM = 2352.0  # path of the beam across the container
_LENGTHS_MM = {20: 6058.0, 40: 12192.0, 45: 13716.0}
_DEFAULT_COLUMNS = {20: 1200, 40: 2400, 45: 2700}
_MARGIN_MM = 180.0  # air scanned before and after the box
_ANOMALY_VISIBLE = 0.25  # high-energy mu*t above which an injected object counts as its region
_CARGO_VISIBLE = 0.05

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Region:
    """Ground truth of one injected object, in output scan pixels (x = column, y = row)."""

    x: int
    y: int
    w: int
    h: int
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "label": self.label}


@dataclass(frozen=True)
class SyntheticScan:
    """A generated scan with its ground truth.

    ``labels`` are the scan-level labels in the vocabulary of field inspection results (anomaly
    classes, plus ``"not_empty"`` or ``"empty"``), ``finding`` is ``clean``/``contraband``/
    ``misdeclared`` as a customs inspection would record it. ``masks`` (only with
    ``with_masks=True``) hold per-pixel ground truth: ``"cargo"`` and each anomaly class present.
    """

    scan: Scan
    regions: tuple[Region, ...]
    labels: tuple[str, ...]
    cargo: str
    finding: str
    not_empty: bool
    masks: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)

    def label_record(self) -> dict[str, Any]:
        """The JSON label record stored next to a scan (same format as field samples)."""
        return {
            "scan_id": self.scan.scan_id,
            "finding": self.finding,
            "labels": list(self.labels),
            "declared": self.scan.declared,
            "cargo": self.cargo,
            "regions": [r.as_dict() for r in self.regions],
        }


class _Canvas:
    """Per-material path lengths (mm) on the nominal pulse grid, plus what is needed for truth."""

    def __init__(self, rows: int, columns: int, col_mm: float, length_mm: float, *,
                 rng: np.random.Generator, with_masks: bool) -> None:
        self.rows = rows
        self.columns = columns
        self.col_mm = col_mm
        self.row_mm = (_SPAN_TOP_MM - _SPAN_BOTTOM_MM) / rows
        self.rng = rng
        self.t = np.zeros((4, rows, columns), dtype=np.float32)
        self.cargo_att = np.zeros((rows, columns), dtype=np.float32) if with_masks else None
        self.class_masks: dict[str, npt.NDArray[np.bool_]] = {}
        self.current: FloatArray | None = None  # attenuation of the anomaly being drawn
        self.with_masks = with_masks
        self.x_start = _MARGIN_MM / col_mm
        self.x_end = (_MARGIN_MM + length_mm) / col_mm
        self.high_cube = bool(rng.random() < 0.4)
        height = 2896.0 if self.high_cube else 2591.0
        self.y_roof = self.row_of(_CONTAINER_BOTTOM_MM + height)
        self.y_bottom = self.row_of(_CONTAINER_BOTTOM_MM)
        self.y_floor = self.row_of(_CONTAINER_BOTTOM_MM + 160.0)  # inner floor surface
        self.y_roof_inner = self.row_of(_CONTAINER_BOTTOM_MM + height - 60.0)
        self.x_in0 = self.x_start + 60.0 / col_mm   # inside the front wall
        self.x_in1 = self.x_end - 130.0 / col_mm    # inside the doors

    def row_of(self, height_mm: float) -> float:
        """Row (float) of a height above ground; row 0 is the top of the detector column."""
        return (_SPAN_TOP_MM - height_mm) / self.row_mm

    def floor_row(self, above_floor_mm: float) -> float:
        return self.y_floor - above_floor_mm / self.row_mm

    # --- drawing primitives -------------------------------------------------------------------

    def add(self, material: int, x0: int, y0: int, patch: FloatArray, layer: str = "cargo") -> None:
        """Add a patch of path lengths (mm) with its top-left corner at column x0, row y0.

        ``layer``: ``cargo``, ``structure`` (the box itself, dunnage, benign clutter: never cargo
        for declared-empty verification) or an anomaly class (ground truth of that object).
        """
        h, w = patch.shape
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + w, self.columns), min(y0 + h, self.rows)
        if xa >= xb or ya >= yb:
            return
        sub = patch[ya - y0:yb - y0, xa - x0:xb - x0]
        self.t[material, ya:yb, xa:xb] += sub
        if layer != "structure" and self.cargo_att is not None:
            self.cargo_att[ya:yb, xa:xb] += sub * MU_HIGH[material]
        if layer in ANOMALY_CLASSES and self.current is not None:
            self.current[ya:yb, xa:xb] += sub * MU_HIGH[material]

    def polygon_patch(self, points_mm: npt.NDArray[np.float64], thickness_mm: float, cx: float, cy: float,
                      ) -> tuple[int, int, FloatArray]:
        """Rasterize a polygon given in mm around (0, 0) at canvas position (cx col, cy row)."""
        px = points_mm[:, 0] / self.col_mm + cx
        py = points_mm[:, 1] / self.row_mm + cy
        x0, y0 = math.floor(px.min()) - 1, math.floor(py.min()) - 1
        w, h = math.ceil(px.max()) - x0 + 2, math.ceil(py.max()) - y0 + 2
        img = np.zeros((h, w), dtype=np.uint8)
        pts = np.round(np.stack([px - x0, py - y0], axis=1) * 16).astype(np.int32)
        cv2.fillPoly(img, [pts], 255, lineType=cv2.LINE_AA, shift=4)
        return x0, y0, img.astype(np.float32) * (thickness_mm / 255.0)

    def add_polygon(self, material: int, points_mm: npt.NDArray[np.float64], thickness_mm: float,
                    cx: float, cy: float, *, layer: str = "cargo") -> tuple[int, int, int, int]:
        x0, y0, patch = self.polygon_patch(points_mm, thickness_mm, cx, cy)
        self.add(material, x0, y0, patch, layer)
        return x0, y0, patch.shape[1], patch.shape[0]

    def add_box(self, material: int, x0: float, x1: float, y0: float, y1: float, *, thick: float,
                layer: str = "cargo") -> None:
        """Axis-aligned box with fractional edges (coverage-weighted, so thin things stay visible)."""
        xa, xb = max(x0, 0.0), min(x1, float(self.columns))
        ya, yb = max(y0, 0.0), min(y1, float(self.rows))
        if xb <= xa or yb <= ya:
            return
        ix0, ix1 = math.floor(xa), math.ceil(xb)
        iy0, iy1 = math.floor(ya), math.ceil(yb)
        cols = np.clip(np.minimum(np.arange(ix0, ix1) + 1, xb) - np.maximum(np.arange(ix0, ix1), xa), 0, 1)
        rows = np.clip(np.minimum(np.arange(iy0, iy1) + 1, yb) - np.maximum(np.arange(iy0, iy1), ya), 0, 1)
        patch = (np.outer(rows, cols) * thick).astype(np.float32)
        self.add(material, ix0, iy0, patch, layer)

    def add_edge_sheet(self, material: int, x0: float, x1: float, y_row: float, sheet_mm: float, *,
                       across_mm: float, layer: str = "structure") -> None:
        """A horizontal sheet crossed edge-on by the beam: path = across, averaged over >= 1 row."""
        h = max(sheet_mm / self.row_mm, 1.0)
        self.add_box(material, x0, x1, y_row, y_row + h, thick=across_mm * sheet_mm / (h * self.row_mm), layer=layer)

    def add_vertical_sheet(self, material: int, x: float, y0: float, y1: float, sheet_mm: float, *,
                           across_mm: float, layer: str = "structure") -> None:
        """A vertical sheet across the beam path seen edge-on (end walls, cross member webs)."""
        w = max(sheet_mm / self.col_mm, 1.0)
        self.add_box(material, x, x + w, y0, y1, thick=across_mm * sheet_mm / (w * self.col_mm), layer=layer)


def _rot(points: npt.NDArray[np.float64], angle: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(points @ np.array([[c, s], [-s, c]]), dtype=np.float64)


def _rect(w: float, h: float) -> npt.NDArray[np.float64]:
    return np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]], dtype=np.float64)


def _ellipse(w: float, h: float, n: int = 24) -> npt.NDArray[np.float64]:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(a) * w / 2, np.sin(a) * h / 2], axis=1)


# --- container body ---------------------------------------------------------------------------


def _draw_container(cv: _Canvas) -> None:
    rng = cv.rng
    xs, xe = cv.x_start, cv.x_end
    # Corrugated side walls (1.6 mm, both sides): the flanks of the trapezoid corrugation are
    # inclined, so the beam's path through the sheet varies with a 278 mm period.
    cols = np.arange(cv.columns, dtype=np.float32)
    phase = ((cols - xs) * cv.col_mm / 278.0) % 1.0
    flank = ((phase > 0.2) & (phase < 0.35)) | ((phase > 0.7) & (phase < 0.85))
    wall = np.where(flank, 2 * 1.6 * 2.2, 2 * 1.6).astype(np.float32)
    wall[(cols < xs) | (cols >= xe)] = 0
    y0, y1 = int(cv.y_roof), math.ceil(cv.y_bottom)
    cv.t[_FE, y0:y1, :] += wall[None, :]
    # Roof (2 mm, corrugated: a wavy edge-on line) and top side rails.
    wave = (np.sin((cols - xs) * cv.col_mm / 460.0 * 2 * math.pi) * 18.0 / cv.row_mm).astype(np.float32)
    c = np.arange(max(int(xs), 0), min(int(xe), cv.columns))
    r = cv.y_roof + 0.4 + wave[c]
    ri = np.clip(r.astype(np.int64), 0, cv.rows - 2)
    frac = (r - ri).astype(np.float32)
    roof = np.float32(_INNER_WIDTH_MM * 2.0 / cv.row_mm)
    cv.t[_FE, ri, c] += roof * (1 - frac)
    cv.t[_FE, ri + 1, c] += roof * frac
    cv.add_box(_FE, xs, xe, cv.y_roof, cv.y_roof + 100.0 / cv.row_mm, thick=2 * 12.0, layer="structure")
    # Floor: 28 mm plywood edge-on across the width, cross members every ~300 mm, bottom rails.
    ply_rows = 28.0 / cv.row_mm
    cv.add_box(_ORG, xs, xe, cv.y_floor, cv.y_floor + ply_rows, thick=_INNER_WIDTH_MM * 0.7, layer="structure")
    pitch = float(rng.uniform(290, 310)) / cv.col_mm
    x = xs + float(rng.uniform(0.5, 1.0)) * pitch
    while x < xe - 5:
        cv.add_vertical_sheet(_FE, x, cv.y_floor + ply_rows, cv.y_bottom, 4.5, across_mm=_INNER_WIDTH_MM)
        cv.add_edge_sheet(_FE, x - 22 / cv.col_mm, x + 22 / cv.col_mm, cv.y_bottom - 0.6, 4.5,
                          across_mm=_INNER_WIDTH_MM)
        x += pitch
    cv.add_box(_FE, xs, xe, cv.y_floor, cv.y_bottom, thick=2 * 6.0, layer="structure")
    # End frames: front wall and corner posts, door end with doors, locking bars, header/sill.
    cv.add_box(_FE, xs, xs + 60 / cv.col_mm, cv.y_roof, cv.y_bottom, thick=2 * 9.0 + 40.0, layer="structure")
    cv.add_vertical_sheet(_FE, xs + 30 / cv.col_mm, cv.y_roof, cv.y_floor, 2.0, across_mm=_INNER_WIDTH_MM * 0.9)
    cv.add_box(_FE, xe - 130 / cv.col_mm, xe, cv.y_roof, cv.y_bottom, thick=2 * 11.0 + 30.0, layer="structure")
    for k in range(4):
        cv.add_box(_FE, xe - (40 + 20 * k) / cv.col_mm, xe - (20 + 20 * k) / cv.col_mm,
                   cv.y_roof, cv.y_bottom, thick=2 * 15.0, layer="structure")
    cv.add_vertical_sheet(_FE, xe - 60 / cv.col_mm, cv.y_roof, cv.y_floor, 2.0, across_mm=_INNER_WIDTH_MM * 0.8)
    for xc in (xs, xe - 178 / cv.col_mm):
        for yc in (cv.y_roof, cv.y_bottom - 118 / cv.row_mm):
            cv.add_box(_FE, xc, xc + 178 / cv.col_mm, yc, yc + 118 / cv.row_mm, thick=2 * 40.0, layer="structure")
    # Trailer chassis below the container: two main beams' flanges and a web band.
    top = cv.y_bottom + 20 / cv.row_mm
    cv.add_box(_FE, xs - 10, xe + 10, top, top + 15 / cv.row_mm, thick=2 * 150.0, layer="structure")
    cv.add_box(_FE, xs - 10, xe + 10, top, cv.rows, thick=2 * 10.0, layer="structure")


# --- cargo --------------------------------------------------------------------------------------


def _blocky(rng: np.random.Generator, h: int, w: int, cell_h: int, cell_w: int, *, spread: float) -> FloatArray:
    """Piecewise-constant multiplicative texture: one value per carton/bag/crate."""
    gh, gw = max(1, -(-h // max(cell_h, 1))), max(1, -(-w // max(cell_w, 1)))
    grid = rng.uniform(1 - spread, 1 + spread, size=(gh, gw)).astype(np.float32)
    return np.repeat(np.repeat(grid, max(cell_h, 1), axis=0), max(cell_w, 1), axis=1)[:h, :w]


def _pallet(cv: _Canvas, x0: float, length_mm: float, height_mm: float, depth_mm: float, *,
            density: float) -> None:
    rng = cv.rng
    w = max(2, int(length_mm / cv.col_mm))
    base = 150.0
    cv.add_box(_ORG, x0, x0 + w, cv.floor_row(base), cv.y_floor, thick=depth_mm * 0.6 * 0.45)
    for k in range(3):  # pallet blocks
        bx = x0 + k * (w - 100 / cv.col_mm) / 2
        cv.add_box(_ORG, bx, bx + 100 / cv.col_mm, cv.floor_row(base), cv.y_floor, thick=depth_mm * 0.6 * 0.5)
    top = cv.floor_row(base + height_mm)
    y0 = int(top)
    h = max(1, int(cv.floor_row(base)) - y0)
    cell_w = int(rng.uniform(250, 600) / cv.col_mm)
    cell_h = int(rng.uniform(200, 500) / cv.row_mm)
    tex = _blocky(rng, h, w, cell_h, cell_w, spread=0.35)
    patch = tex * np.float32(depth_mm * density)
    # Carton walls: slightly denser lines at the carton boundaries.
    patch[::max(cell_h, 1), :] *= 1.4
    patch[:, ::max(cell_w, 1)] *= 1.3
    cv.add(_ORG, int(x0), y0, patch)
    if rng.random() < 0.25:  # appliances / electronics in the cartons: small benign metal
        for _ in range(int(rng.integers(2, 8))):
            cx = x0 + rng.uniform(0.1, 0.9) * w
            cy = rng.uniform(y0 + 2, y0 + h - 2)
            m = _AL if rng.random() < 0.5 else _FE
            pts = _rect(rng.uniform(60, 300), rng.uniform(40, 250))
            cv.add_polygon(m, _rot(pts, rng.uniform(0, math.pi)), rng.uniform(3, 12), cx, cy)


def _cargo_cartons(cv: _Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    depth = rng.uniform(0.6, 1.0) * _INNER_WIDTH_MM
    density = rng.uniform(0.06, 0.3)
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 200
    x = x0 + rng.uniform(0, 200) / cv.col_mm
    length = rng.choice([1000.0, 1200.0])
    while x + length / cv.col_mm < x1:
        _pallet(cv, x, length, rng.uniform(0.4, 1.0) * max_h, depth * rng.uniform(0.8, 1.0),
                density=density * rng.uniform(0.8, 1.2))
        x += (length + rng.uniform(0, 120)) / cv.col_mm


def _cargo_bags(cv: _Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    depth = rng.uniform(0.5, 1.0) * _INNER_WIDTH_MM
    density = rng.uniform(0.25, 0.5)
    bag_l, bag_h = rng.uniform(550, 800), rng.uniform(120, 220)
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 150
    height = rng.uniform(0.4, 0.9) * max_h
    layers = int(height / bag_h)
    shape = _ellipse(bag_l, bag_h, 16)
    for layer in range(layers):
        offset = (layer % 2) * bag_l / 2
        cy = cv.floor_row(layer * bag_h * 0.92 + bag_h / 2)
        n = int((x1 - x0) * cv.col_mm / bag_l)
        for i in range(n):
            cx = x0 + (i * bag_l + offset + bag_l / 2) / cv.col_mm
            if cx + bag_l / 2 / cv.col_mm >= x1:
                break
            cv.add_polygon(_ORG, shape, depth * density * rng.uniform(0.85, 1.15), cx, cy)


def _cargo_bulk(cv: _Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm
    level = rng.uniform(0.3, 0.7) * max_h
    density = rng.uniform(0.2, 0.4)
    material = _ORG if rng.random() < 0.8 else _AL
    if material == _AL:
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
    patch = (fill * grain * np.float32(_INNER_WIDTH_MM * density)).astype(np.float32)
    cv.add(material, int(x0), 0, patch)


def _drum(cv: _Canvas, cx: float, base_mm: float, per_depth: int, fill: float, *, liquid: float) -> None:
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
    cv.add(_FE, int(cx - w / 2), y0, steel)
    fill_rows = int(h * (1 - fill))
    content = np.zeros((h, w), dtype=np.float32)
    content[fill_rows:, :] = chord_in[None, :] * per_depth * liquid
    cv.add(_ORG, int(cx - w / 2), y0, content)


def _cargo_drums(cv: _Canvas, x0: float, x1: float) -> None:
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
    cv.add_box(_ORG, x0, x, cv.floor_row(150), cv.y_floor, thick=_INNER_WIDTH_MM * 0.25)


def _machine(cv: _Canvas, x0: float, length_mm: float) -> None:
    """A crated machine: steel/aluminium components, shafts, holes, a wooden skid and crate."""
    rng = cv.rng
    height_mm = rng.uniform(700, 1900)
    cx = x0 + length_mm / 2 / cv.col_mm
    base = 120.0
    cv.add_box(_ORG, x0, x0 + length_mm / cv.col_mm, cv.floor_row(base), cv.y_floor, thick=_INNER_WIDTH_MM * 0.35)
    if rng.random() < 0.6:  # crate boards
        cv.add_box(_ORG, x0, x0 + length_mm / cv.col_mm, cv.floor_row(base + height_mm + 60),
                   cv.floor_row(base), thick=2 * 25.0 * 0.5)
    for _ in range(int(rng.integers(3, 9))):
        w, h = rng.uniform(250, length_mm * 0.8), rng.uniform(150, height_mm * 0.7)
        pcx = cx + rng.uniform(-0.3, 0.3) * length_mm / cv.col_mm
        pcy = cv.floor_row(base + rng.uniform(h / 2, max(h / 2 + 1, height_mm - h / 2)))
        material = _FE if rng.random() < 0.6 else _AL
        kind = rng.random()
        if kind < 0.5:
            pts = _rot(_rect(w, h), rng.normal(0, 0.1))
            x_, y_, patch = cv.polygon_patch(pts, rng.uniform(15, 70), pcx, pcy)
            if rng.random() < 0.6:  # lightening holes / hollow housing
                hh, ww = patch.shape
                inner = np.zeros_like(patch)
                inner[hh // 4: hh - hh // 4, ww // 5: ww - ww // 5] = 1
                patch = patch * (1 - 0.7 * inner)
            cv.add(material, x_, y_, patch)
        elif kind < 0.8:  # motor / cylinder seen side on: chord profile
            r = min(w, h) / 2
            pts = _ellipse(2 * r, 2 * r)
            cv.add_polygon(material, pts, rng.uniform(30, 90), pcx, pcy)
            cv.add_polygon(_FE, _rect(r * 2.6, rng.uniform(40, 80)), 60.0, pcx, pcy)
        else:  # frame of tubes
            for dy in (-h / 2, h / 2):
                cv.add_polygon(_FE, _rect(w, 60), 12.0, pcx, pcy + dy / cv.row_mm)
            for dx in (-w / 2, w / 2):
                cv.add_polygon(_FE, _rect(60, h), 12.0, pcx + dx / cv.col_mm, pcy)


def _cargo_machinery(cv: _Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    x = x0 + rng.uniform(0, 300) / cv.col_mm
    while True:
        length = rng.uniform(900, 3000)
        if x + length / cv.col_mm >= x1:
            break
        _machine(cv, x, length)
        x += (length + rng.uniform(100, 900)) / cv.col_mm


def _car(cv: _Canvas, x0: float, base_mm: float, layer: str) -> tuple[float, float, float, float]:
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
    cv.add_polygon(_FE, pts, 2 * 0.9 + 3.0, cx, cy, layer=layer)
    cv.add_polygon(_ORG, pts, width * 0.08, cx, cy, layer=layer)  # seats, trim, dashboard
    # Roof and floor pan seen edge-on.
    roof = np.array([[hood_l + 520, height - 10], [length - trunk_l - 420, height - 10],
                     [length - trunk_l - 420, height - 40], [hood_l + 520, height - 40]], dtype=np.float64)
    floor = np.array([[200, sill - 60], [length - 200, sill - 60], [length - 200, sill - 100],
                      [200, sill - 100]], dtype=np.float64)
    for part in (roof, floor):
        if flip:
            part[:, 0] = length - part[:, 0]
        pts, cx, cy = place(part)
        cv.add_polygon(_FE, pts, width * 0.8 * 0.9 / 30.0, cx, cy, layer=layer)
    # Engine block and gearbox.
    ex = hood_l * 0.5 if not flip else length - hood_l * 0.5
    eng = np.array([[ex - 300, clearance + 250], [ex + 300, clearance + 250],
                    [ex + 300, clearance + 700], [ex - 300, clearance + 700]], dtype=np.float64)
    pts, cx, cy = place(eng)
    cv.add_polygon(_AL if rng.random() < 0.5 else _FE, pts, rng.uniform(120, 220), cx, cy, layer=layer)
    # Wheels: tyre ring (rubber, both sides), rim, brake disc, axle.
    wheel_r = rng.uniform(290, 340)
    for wx in (length * 0.17, length * 0.8):
        center = np.array([[wx, wheel_r + 0.0]])
        c_pts, cx, cy = place(center)
        wcx, wcy = cx + c_pts[0, 0] / cv.col_mm, cy + c_pts[0, 1] / cv.row_mm
        cv.add_polygon(_ORG, _ellipse(2 * wheel_r, 2 * wheel_r), 2 * 200 * 1.1, wcx, wcy, layer=layer)
        cv.add_polygon(_ORG, _ellipse(1.3 * wheel_r, 1.3 * wheel_r), -2 * 200 * 1.1, wcx, wcy, layer=layer)
        cv.add_polygon(_AL, _ellipse(1.3 * wheel_r, 1.3 * wheel_r), 2 * 20.0, wcx, wcy, layer=layer)
        cv.add_polygon(_FE, _ellipse(0.9 * wheel_r, 0.9 * wheel_r), 2 * 25.0, wcx, wcy, layer=layer)
        cv.add_polygon(_FE, _rect(70, 70), width * 0.5, wcx, wcy, layer=layer)
    # Fuel tank, exhaust.
    tank = np.array([[length * 0.55, clearance + 20], [length * 0.7, clearance + 20],
                     [length * 0.7, clearance + 240], [length * 0.55, clearance + 240]], dtype=np.float64)
    pts, cx, cy = place(tank)
    cv.add_polygon(_ORG, pts, 500 * 0.7, cx, cy, layer=layer)
    y_top = row_base - height / cv.row_mm
    return x0, y_top, x0 + length / cv.col_mm, row_base


def _cargo_vehicles(cv: _Canvas, x0: float, x1: float) -> None:
    rng = cv.rng
    x = x0 + rng.uniform(100, 400) / cv.col_mm
    while x + 4800 / cv.col_mm < x1:
        _, _, xe, _ = _car(cv, x, 0.0, "cargo")
        # Lashing: wheel chocks and chains (small steel parts).
        for dx in (-0.0, 0.0):
            cv.add_box(_FE, x + dx, x + dx + 120 / cv.col_mm, cv.floor_row(120), cv.y_floor, thick=2 * 20.0)
        x = xe + rng.uniform(250, 700) / cv.col_mm


def _cargo_mixed(cv: _Canvas, x0: float, x1: float) -> None:
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
            _pallet(cv, x, (end - x) * cv.col_mm, rng.uniform(0.3, 1.0) * max_h,
                    rng.uniform(0.3, 1.0) * _INNER_WIDTH_MM, density=rng.uniform(0.05, 0.35))
        elif kind == 1:
            _cargo_bags(cv, x, end)
        elif kind == 2:
            _cargo_drums(cv, x, end)
        elif kind == 3 and length > 900:
            _machine(cv, x, (end - x) * cv.col_mm)
        else:  # crate with furniture-like wood and some fittings
            h = rng.uniform(0.3, 1.0) * max_h
            cv.add_box(_ORG, x, end, cv.floor_row(h), cv.y_floor, thick=rng.uniform(0.2, 0.8) * _INNER_WIDTH_MM * 0.12)
            for _ in range(int(rng.integers(0, 5))):
                cv.add_box(_FE, x + rng.uniform(0, end - x), x + rng.uniform(0, end - x) + 3,
                           cv.floor_row(rng.uniform(0, h)), cv.floor_row(rng.uniform(0, h)) + 2, thick=8.0)
        x = end + rng.uniform(0, 600) / cv.col_mm


def _dunnage(cv: _Canvas) -> None:
    """Loose planks or a strap left in an empty box: present in real empties, not cargo."""
    rng = cv.rng
    for _ in range(int(rng.integers(1, 4))):
        x = rng.uniform(cv.x_in0 + 10, cv.x_in1 - 200)
        cv.add_box(_ORG, x, x + rng.uniform(300, 1500) / cv.col_mm, cv.floor_row(25), cv.y_floor,
                   thick=rng.uniform(60, 200) * 0.6, layer="structure")


_CARGO_DRAWERS: dict[str, Callable[[_Canvas, float, float], None]] = {
    "cartons": _cargo_cartons,
    "bags": _cargo_bags,
    "bulk": _cargo_bulk,
    "machinery": _cargo_machinery,
    "drums": _cargo_drums,
    "vehicles": _cargo_vehicles,
    "mixed": _cargo_mixed,
}


def _draw_cargo(cv: _Canvas, kind: str) -> None:
    rng = cv.rng
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


# --- anomalies ----------------------------------------------------------------------------------


def _inside_point(cv: _Canvas, w_mm: float, h_mm: float, on_floor: bool) -> tuple[float, float]:
    rng = cv.rng
    half_w = w_mm / 2 / cv.col_mm
    cx = rng.uniform(cv.x_in0 + half_w + 10, max(cv.x_in0 + half_w + 11, cv.x_in1 - half_w - 10))
    inner_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm
    if on_floor:
        above = h_mm / 2 + rng.uniform(0, 150)
    else:
        above = rng.uniform(h_mm / 2 + 20, max(h_mm / 2 + 21, inner_h * 0.85 - h_mm / 2))
    return cx, cv.floor_row(above)


def _bbox_of(visible: npt.NDArray[np.bool_]) -> tuple[int, int, int, int] | None:
    ys = np.flatnonzero(visible.any(axis=1))
    xs = np.flatnonzero(visible.any(axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def _anomaly_dense(cv: _Canvas, layer: str) -> tuple[float, float]:
    """A compact dense mass: a steel or lead-like block, ingot, or shielded container."""
    rng = cv.rng
    w, h = rng.uniform(90, 420), rng.uniform(80, 320)
    lead = rng.random() < 0.45
    material = _PB if lead else _FE
    thickness = rng.uniform(45, 120) if lead else rng.uniform(70, 170)
    cx, cy = _inside_point(cv, w, h, on_floor=rng.random() < 0.3)
    shape = _rect(w, h) if rng.random() < 0.6 else _ellipse(w, h)
    cv.add_polygon(material, _rot(shape, rng.uniform(0, math.pi)), thickness, cx, cy, layer=layer)
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


def _anomaly_weapon(cv: _Canvas, layer: str) -> tuple[float, float]:
    """Firearms: a pistol, a few pistols, or rifles in a bundle, at any angle."""
    rng = cv.rng
    rifle = rng.random() < 0.45
    count = int(rng.integers(1, 4)) if rifle else int(rng.integers(1, 5))
    size = rng.uniform(800, 1000) if rifle else rng.uniform(170, 230)
    cx, cy = _inside_point(cv, size, size * 0.6, on_floor=rng.random() < 0.25)
    base_angle = rng.uniform(0, 2 * math.pi)
    for k in range(count):
        parts = _rifle(size) if rifle else _pistol(size)
        angle = base_angle + rng.normal(0, 0.15)
        ox = (k * rng.uniform(40, 120) if rifle else rng.uniform(-200, 200)) / cv.col_mm
        oy = (k * rng.uniform(30, 60) if rifle else rng.uniform(-150, 150)) / cv.row_mm
        for pts, thickness in parts:
            if thickness < 0:  # polymer / wooden stock
                cv.add_polygon(_ORG, _rot(pts, angle), 45.0, cx + ox, cy + oy, layer=layer)
            else:
                cv.add_polygon(_FE, _rot(pts, angle), thickness * rng.uniform(0.9, 1.15), cx + ox, cy + oy,
                               layer=layer)
    return cx, cy


def _anomaly_vehicle(cv: _Canvas, layer: str) -> tuple[float, float]:
    """A car concealed in a box: cargo is loaded beside it, so it is superposed on the car."""
    rng = cv.rng
    span = cv.x_in1 - cv.x_in0
    x0 = cv.x_in0 + rng.uniform(0.02, max(0.03, 1 - 4900 / cv.col_mm / span)) * span
    bx0, by0, bx1, by1 = _car(cv, x0, 0.0, layer)
    # Concealment cargo beside the car (same columns, other depth): cartons or bags.
    depth = rng.uniform(0.2, 0.45) * _INNER_WIDTH_MM
    max_h = (cv.y_floor - cv.y_roof_inner) * cv.row_mm - 200
    x = bx0 - rng.uniform(0, 600) / cv.col_mm
    while x < bx1 + 300 / cv.col_mm:
        _pallet(cv, x, 1200.0, rng.uniform(0.6, 1.0) * max_h, depth, density=rng.uniform(0.1, 0.3))
        x += 1250 / cv.col_mm
    return (bx0 + bx1) / 2, (by0 + by1) / 2


def _anomaly_organic(cv: _Canvas, layer: str) -> tuple[float, float]:
    """A compact organic mass: stacked bricks of a dense organic substance (dual energy shows it)."""
    rng = cv.rng
    w, h = rng.uniform(300, 1000), rng.uniform(200, 700)
    density = rng.uniform(0.9, 1.3)
    depth = rng.uniform(250, 700)
    cx, cy = _inside_point(cv, w, h, on_floor=rng.random() < 0.4)
    brick_w, brick_h = rng.uniform(150, 300), rng.uniform(60, 120)
    x_, y_, patch = cv.polygon_patch(_rot(_rect(w, h), rng.normal(0, 0.25)), depth * density, cx, cy)
    tex = _blocky(rng, patch.shape[0], patch.shape[1], max(1, int(brick_h / cv.row_mm)),
                  max(1, int(brick_w / cv.col_mm)), spread=0.08)
    cv.add(_ORG, x_, y_, patch * tex, layer)
    return cx, cy


_ANOMALY_DRAWERS: dict[str, Callable[[_Canvas, str], tuple[float, float]]] = {
    "dense_object": _anomaly_dense,
    "weapon": _anomaly_weapon,
    "vehicle": _anomaly_vehicle,
    "organic_mass": _anomaly_organic,
}


def _benign_clutter(cv: _Canvas) -> None:
    """Small metal things that are neither contraband nor cargo: tools, chains, fittings.

    They are drawn as part of the box (not cargo), so an empty box with a forgotten toolbox is
    still empty for declared-empty verification, and never an anomaly.
    """
    rng = cv.rng
    for _ in range(int(rng.integers(1, 5))):
        w, h = rng.uniform(80, 600), rng.uniform(20, 200)
        cx, cy = _inside_point(cv, w, h, on_floor=rng.random() < 0.5)
        cv.add_polygon(_FE if rng.random() < 0.5 else _AL, _rot(_rect(w, h), rng.uniform(0, math.pi)),
                       rng.uniform(4, 18), cx, cy, layer="structure")


# --- detector -----------------------------------------------------------------------------------


def _speed_profile(rng: np.random.Generator, columns: int) -> npt.NDArray[np.float64]:
    """Canvas column sampled by each output pulse. Slower truck -> objects stretched."""
    knots = max(3, columns // 300)
    amp = rng.uniform(0.0, 0.18)
    v = 1 + amp * rng.uniform(-1, 1, size=knots + 1)
    speed = np.interp(np.linspace(0, knots, columns), np.arange(knots + 1), v)
    if rng.random() < 0.2:  # a brief slowdown (driver braking in the tunnel)
        c = int(rng.integers(0, columns))
        width = int(rng.integers(20, 150))
        speed[max(0, c - width):c + width] *= rng.uniform(0.5, 0.8)
    pos = np.concatenate([[0.0], np.cumsum(speed)[:-1]])
    pos *= (columns - 1) / max(pos[-1], 1e-9)
    return pos


def _render(cv: _Canvas, channels: int, bits: int, rng: np.random.Generator,
            src_x: npt.NDArray[np.float64]) -> npt.NDArray[np.unsignedinteger[Any]]:
    rows, cols = cv.rows, cv.columns
    full = float((1 << bits) - 1)
    i0 = 0.9 * full
    # Speed stretching: resample along columns (linear), the same map for every channel.
    map_x = np.ascontiguousarray(np.broadcast_to(src_x.astype(np.float32)[None, :], (rows, cols)))
    map_y = np.ascontiguousarray(np.broadcast_to(np.arange(rows, dtype=np.float32)[:, None], (rows, cols)))
    # Gain: slow drift (random walk), pulse-to-pulse jitter, per-element calibration residue.
    drift = np.cumsum(rng.normal(0, 0.0006, size=cols))
    drift -= drift.mean()
    col_gain = (i0 * (1 + drift + rng.normal(0, 0.002, size=cols))).astype(np.float32)
    row_gain = (1 + rng.normal(0, 0.003, size=(channels, rows, 1))).astype(np.float32)
    photon = np.float32(full / 65535.0)
    read2 = np.float32(max(2.5 * full / 65535.0, 0.35) ** 2)
    dark = np.float32(25.0 * full / 65535.0)
    dtype = np.uint16 if bits == 16 else np.uint8
    out = np.empty((channels, rows, cols), dtype=dtype)
    for c, mu in enumerate((MU_HIGH, MU_LOW)[:channels]):
        att = cv.t[0] * mu[0]
        for m in range(1, 4):
            att += cv.t[m] * mu[m]
        att = cv2.remap(att, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        signal = np.asarray(cv2.exp(-att), dtype=np.float32) * col_gain[None, :] * row_gain[c]
        # Photon noise (scaled Poisson, Gaussian approximation) and read noise, then the dark offset.
        sigma = cv2.sqrt(signal * photon + read2)
        noise = rng.standard_normal(size=(rows, cols), dtype=np.float32)
        noise *= sigma
        noise += signal
        noise += dark
        np.clip(np.rint(noise, out=noise), 0, full, out=noise)
        out[c] = noise
    return out


# --- public API ---------------------------------------------------------------------------------


def generate_scan(
    seed: int,
    *,
    length_ft: int = 40,
    cargo: str | None = None,
    anomalies: Sequence[str] = (),
    declared: str | None = None,
    rows: int = 256,
    channels: int = 2,
    bits: int = 16,
    scan_id: str | None = None,
    columns: int | None = None,
    with_masks: bool = False,
    clutter: bool | None = None,
) -> SyntheticScan:
    """Generate one scan of a container driven through the scanner.

    ``cargo`` None picks a cargo kind at random (``"empty"`` when ``declared == "empty"``);
    ``declared="empty"`` with a non-empty cargo is the misdeclared-empty case. ``columns`` None
    uses the nominal pulse count for the length (1200 / 2400 / 2700 for 20 / 40 / 45 ft).
    ``clutter`` adds benign small metal objects (None: at random).
    """
    if length_ft not in _LENGTHS_MM:
        raise ValueError(f"length_ft must be one of {sorted(_LENGTHS_MM)} (got {length_ft})")
    if cargo is not None and cargo not in CARGO_KINDS:
        raise ValueError(f"unknown cargo kind {cargo!r}; known: {', '.join(CARGO_KINDS)}")
    for a in anomalies:
        if a not in ANOMALY_CLASSES:
            raise ValueError(f"unknown anomaly class {a!r}; known: {', '.join(ANOMALY_CLASSES)}")
    if channels not in (1, 2) or bits not in (8, 16):
        raise ValueError("channels must be 1 or 2 and bits 8 or 16")
    if rows < 32:
        raise ValueError(f"rows must be >= 32 (got {rows})")
    rng = np.random.default_rng(seed)
    if cargo is None:
        cargo = "empty" if declared == "empty" else str(rng.choice(CARGO_KINDS[1:]))
    n_cols = columns if columns is not None else _DEFAULT_COLUMNS[length_ft]
    if n_cols < 200:
        raise ValueError(f"columns must be >= 200 (got {n_cols})")
    length_mm = _LENGTHS_MM[length_ft]
    col_mm = (length_mm + 2 * _MARGIN_MM) / n_cols
    cv = _Canvas(rows, n_cols, col_mm, length_mm, rng=rng, with_masks=with_masks)
    _draw_container(cv)
    _draw_cargo(cv, cargo)
    if clutter if clutter is not None else rng.random() < 0.3:
        _benign_clutter(cv)
    raw_regions: list[tuple[int, int, int, int, str]] = []
    for label in anomalies:
        cv.current = np.zeros((rows, n_cols), dtype=np.float32)
        _ANOMALY_DRAWERS[label](cv, label)
        visible = cv.current > _ANOMALY_VISIBLE
        cv.current = None
        box = _bbox_of(visible)
        if box is not None:
            raw_regions.append((*box, label))
            if with_masks:
                cv.class_masks[label] = cv.class_masks.get(label, np.zeros_like(visible)) | visible
    src_x = _speed_profile(rng, n_cols)
    pixels = _render(cv, channels, bits, rng, src_x)
    # Map canvas columns to output columns through the (monotonic) sampling positions.
    regions: list[Region] = []
    for x, y, w, h, label in raw_regions:
        # Output columns that sample (linearly) any canvas column of the object.
        ox0 = int(np.searchsorted(src_x, x - 1, side="right"))
        ox1 = min(int(np.searchsorted(src_x, x + w, side="left")), n_cols)
        regions.append(Region(x=ox0, y=y, w=max(1, ox1 - ox0), h=h, label=label))
    masks: dict[str, npt.NDArray[np.bool_]] = {}
    if with_masks:
        map_x = np.broadcast_to(src_x.astype(np.float32)[None, :], (rows, n_cols))
        map_y = np.broadcast_to(np.arange(rows, dtype=np.float32)[:, None], (rows, n_cols))

        def warp(mask: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
            m = cv2.remap(mask.astype(np.uint8), map_x, map_y, cv2.INTER_NEAREST)
            return np.asarray(m > 0)

        assert cv.cargo_att is not None
        masks["cargo"] = warp(cv.cargo_att > _CARGO_VISIBLE)
        for label, m in cv.class_masks.items():
            masks[label] = warp(m)
    not_empty = cargo != "empty" or bool(anomalies)
    labels = sorted(set(anomalies))
    labels.append("not_empty" if not_empty else "empty")
    if anomalies:
        finding = "contraband"
    elif declared == "empty" and not_empty:
        finding = "misdeclared"
    else:
        finding = "clean"
    sid = scan_id if scan_id is not None else f"SYN-{seed & 0xFFFFFFFF:08X}"
    meta: dict[str, Any] = {
        "row_mm": round(cv.row_mm, 4),
        "synthetic": {
            "seed": int(seed), "length_ft": length_ft, "cargo": cargo, "anomalies": list(anomalies),
            "finding": finding, "labels": labels, "regions": [r.as_dict() for r in regions],
        },
    }
    scan = Scan(pixels=pixels, scan_id=sid, bits=bits, pixel_mm=round(col_mm, 4), declared=declared,
                meta=meta)
    return SyntheticScan(scan=scan, regions=tuple(regions), labels=tuple(labels), cargo=cargo,
                         finding=finding, not_empty=not_empty, masks=masks)


# --- scenarios: named mixtures used by `smartgate synth`, the simulator and training ---------


def _pick_length(rng: np.random.Generator) -> int:
    return int(rng.choice([20, 40, 40, 45]))


def _scenario_kwargs(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    loaded = [k for k in CARGO_KINDS if k != "empty"]
    kw: dict[str, Any] = {"length_ft": _pick_length(rng)}
    if kind == "random":
        r = rng.random()
        if r < 0.35:
            kind = "clean"
        elif r < 0.5:
            kind = "empty"
        elif r < 0.58:
            kind = "misdeclared_empty"
        else:
            kind = str(rng.choice(ANOMALY_CLASSES))
    if kind == "clean":
        kw["cargo"] = str(rng.choice(loaded))
    elif kind == "empty":
        kw.update(cargo="empty", declared="empty")
    elif kind == "misdeclared_empty":
        kw.update(cargo=str(rng.choice(["cartons", "bags", "machinery", "drums", "mixed", "bulk"])),
                  declared="empty")
    elif kind in CARGO_KINDS:
        kw["cargo"] = kind
        if kind == "empty":
            kw["declared"] = "empty"
    elif kind in ANOMALY_CLASSES:
        hosts = [k for k in loaded if k != "vehicles"] + ["empty"]
        kw["cargo"] = str(rng.choice(hosts)) if kind != "vehicle" else str(rng.choice(["empty", "cartons"]))
        extra = [kind]
        if rng.random() < 0.1:
            extra.append(str(rng.choice(ANOMALY_CLASSES)))
        kw["anomalies"] = tuple(extra)
    else:
        raise ValueError(f"unknown scenario {kind!r}; known: {', '.join(SCENARIOS)}")
    return kw


SCENARIOS: tuple[str, ...] = ("random", "clean", "empty", "misdeclared_empty", *CARGO_KINDS[1:],
                              *ANOMALY_CLASSES)


def generate_scenario(seed: int, kind: str = "random", **overrides: Any) -> SyntheticScan:
    """Generate a scan of a named scenario (see ``SCENARIOS``); the seed fixes everything.

    ``random`` is the mixture used for training and evaluation: 35 % clean loaded, 15 % empty,
    8 % declared empty but loaded, 42 % with an anomaly (evenly over the classes).
    """
    rng = np.random.default_rng([seed, 0x5CA1AB1E])
    kw = _scenario_kwargs(kind, rng)
    kw.update(overrides)
    return generate_scan(seed, **kw)
