"""The drawing surface of the generator: per-material path lengths on the canvas grid.

Everything in a scan is drawn as path length (mm) of one of four materials (organic, light
metal, steel, lead-like) crossed by the beam; the physics (`inference.synthetic.physics`) turns
the sum into transmitted intensity afterwards. Rows are heights (row 0 is the top of the
detector column), columns are positions along the vehicle.

A canvas holds one or more container bodies (`Body`); cargo and anomaly drawers work on the
*current* body (`Canvas.use`), so a 2 x 20 ft combination is drawn as two bodies in turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.scan import Scan

__all__ = [
    "ANOMALY_CLASSES",
    "INNER_WIDTH_MM",
    "LOW_HIGH_RATIO",
    "MATERIALS",
    "MU_HIGH",
    "Body",
    "Canvas",
    "Region",
    "SyntheticScan",
    "ellipse",
    "rect",
    "rot",
]

ANOMALY_CLASSES: tuple[str, ...] = ("dense_object", "weapon", "vehicle", "organic_mass")
MATERIALS: tuple[str, ...] = ("organic", "aluminium", "steel", "lead")
ORG, AL, FE, PB = range(4)

# Effective linear attenuation (1/mm, material at its nominal density; organic = water-equivalent)
# at the high energy of the reference 4/6 MeV linac, and the low/high ratio per material. Steel and
# lead are close to tabulated mass attenuation near 2 MeV; other sources scale them
# (`physics.ENERGIES`).
MU_HIGH = np.array([0.0045, 0.0118, 0.0335, 0.052], dtype=np.float32)
LOW_HIGH_RATIO = np.array([1.42, 1.28, 1.16, 1.05], dtype=np.float32)

INNER_WIDTH_MM = 2352.0  # path of the beam across a container
ANOMALY_VISIBLE = 0.25  # high-energy mu*t above which an injected object counts as its region
CARGO_VISIBLE = 0.05

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Region:
    """Ground truth of one injected object, in output scan pixels (x = column, y = row)."""

    x: int
    y: int
    w: int
    h: int
    label: str
    place: str = "load"  # where it was hidden: `anomaly.HIDING_PLACES`

    def as_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "label": self.label, "place": self.place}


@dataclass(frozen=True)
class SyntheticScan:
    """A generated scan with its ground truth.

    ``labels`` are the scan-level labels in the vocabulary of field inspection results (anomaly
    classes, plus ``"not_empty"`` or ``"empty"``), ``finding`` is ``clean``/``contraband``/
    ``misdeclared`` as a customs inspection would record it. ``masks`` (only with
    ``with_masks=True``) hold per-pixel ground truth: ``"cargo"`` and each anomaly class present.
    ``world`` is the sampled scanner/vehicle description (`World.as_dict`).
    """

    scan: Scan
    regions: tuple[Region, ...]
    labels: tuple[str, ...]
    cargo: str
    finding: str
    not_empty: bool
    masks: dict[str, npt.NDArray[np.bool_]] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class Body:
    """One container body (or the load bed of a trailer without container), in canvas units.

    ``kind`` is a container type (`container.CONTAINER_TYPES`) or ``"none"``. ``x_in0``/``x_in1``
    bound the load space along the vehicle, ``y_floor`` is the load floor, ``y_top`` the highest
    row cargo may reach.
    """

    kind: str
    x_start: float
    x_end: float
    y_roof: float
    y_bottom: float
    y_floor: float
    y_top: float
    x_in0: float
    x_in1: float
    inner_width_mm: float = INNER_WIDTH_MM


class Canvas:
    """Per-material path lengths (mm) on the canvas grid, plus what is needed for ground truth."""

    def __init__(self, rows: int, columns: int, col_mm: float, row_mm: float, span_top_mm: float, *,
                 rng: np.random.Generator, with_masks: bool) -> None:
        self.rows = rows
        self.columns = columns
        self.col_mm = col_mm
        self.row_mm = row_mm
        self.span_top_mm = span_top_mm
        self.rng = rng
        self.t = np.zeros((4, rows, columns), dtype=np.float32)
        self.cargo_att = np.zeros((rows, columns), dtype=np.float32) if with_masks else None
        self.class_masks: dict[str, npt.NDArray[np.bool_]] = {}
        self.current: FloatArray | None = None  # attenuation of the anomaly being drawn
        self.with_masks = with_masks
        self.bodies: list[Body] = []
        self.hiding: dict[str, list[tuple[float, float, float, float]]] = {}  # place -> boxes (x0, y0, x1, y1)
        self.last_place = "load"  # where the last anomaly drawn was hidden
        self._body: Body | None = None

    # --- geometry -----------------------------------------------------------------------------

    def row_of(self, height_mm: float) -> float:
        """Row (float) of a height above ground; row 0 is the top of the detector column."""
        return (self.span_top_mm - height_mm) / self.row_mm

    def col_of(self, x_mm: float) -> float:
        return x_mm / self.col_mm

    def use(self, body: Body) -> None:
        """Make ``body`` the one cargo and anomalies are drawn into."""
        self._body = body

    @property
    def body(self) -> Body:
        if self._body is None:
            raise RuntimeError("no current body")
        return self._body

    @property
    def x_in0(self) -> float:
        return self.body.x_in0

    @property
    def x_in1(self) -> float:
        return self.body.x_in1

    @property
    def y_floor(self) -> float:
        return self.body.y_floor

    @property
    def y_roof_inner(self) -> float:
        return self.body.y_top

    @property
    def inner_width(self) -> float:
        return self.body.inner_width_mm

    def floor_row(self, above_floor_mm: float) -> float:
        return self.y_floor - above_floor_mm / self.row_mm

    def add_hiding_place(self, place: str, x0: float, y0: float, x1: float, y1: float) -> None:
        """Record a box (canvas units) where an anomaly may be concealed (chassis, floor, ...)."""
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            self.hiding.setdefault(place, []).append((x0, y0, x1, y1))

    # --- drawing primitives -------------------------------------------------------------------

    def add(self, material: int, x0: int, y0: int, patch: FloatArray, layer: str = "cargo") -> None:
        """Add a patch of path lengths (mm) with its top-left corner at column x0, row y0.

        ``layer``: ``cargo``, ``structure`` (the vehicle, the box itself, dunnage, benign clutter:
        never cargo for declared-empty verification) or an anomaly class (ground truth).
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

    def add_disc(self, material: int, cx: float, cy: float, radius_mm: float, thick: float, *,
                 layer: str = "structure") -> None:
        """A disc of constant path length (wheel rims, tank ends seen face-on)."""
        self.add_polygon(material, ellipse(2 * radius_mm, 2 * radius_mm), thick, cx, cy, layer=layer)


def rot(points: npt.NDArray[np.float64], angle: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(angle), math.sin(angle)
    return np.asarray(points @ np.array([[c, s], [-s, c]]), dtype=np.float64)


def rect(w: float, h: float) -> npt.NDArray[np.float64]:
    return np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]], dtype=np.float64)


def ellipse(w: float, h: float, n: int = 24) -> npt.NDArray[np.float64]:
    a = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(a) * w / 2, np.sin(a) * h / 2], axis=1)


def blocky(rng: np.random.Generator, h: int, w: int, cell_h: int, cell_w: int, *, spread: float) -> FloatArray:
    """Piecewise-constant multiplicative texture: one value per carton/bag/crate."""
    gh, gw = max(1, -(-h // max(cell_h, 1))), max(1, -(-w // max(cell_w, 1)))
    grid = rng.uniform(1 - spread, 1 + spread, size=(gh, gw)).astype(np.float32)
    return np.repeat(np.repeat(grid, max(cell_h, 1), axis=0), max(cell_w, 1), axis=1)[:h, :w]
