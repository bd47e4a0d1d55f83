"""Threat projection for training: objects rendered alone and added to training tiles.

Transmission is multiplicative, so in the model's input space (``-ln T`` scaled per channel) an
object is *added* to whatever lies in the beam. Threat image projection (TIP) uses that to put
threats into real cargo; here it multiplies the variety of the generated training set. The set
holds a few thousand objects, each drawn once into one scan; the same objects projected into
other tiles at other places show the network every object against many loads (machinery,
tyres, drums, cartons: the backgrounds where objects are missed), so it must learn the object
and cannot learn the scan.

The objects are drawn by the generator's own anomaly drawers (`inference.synthetic.anomaly`)
on an empty canvas at twice the model pitch, converted to attenuation with a randomly drawn
dual-energy response (`inference.synthetic.physics`, jittered per object as the world does),
blurred like a detector, and averaged down to the model grid, with their pixel coverage for
the cell targets. A projected object gets targets exactly like a generated one
(`inference.training.dataset`): cells covered to `POS_FRACTION` are positive, its border cells
are ignored, and its cells hold cargo for ``not_empty``. Single-energy tiles (a zero material
channel) get the object's high-energy plane only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from inference.conditioning import T_FLOOR
from inference.synthetic.anomaly import ANOMALY_DRAWERS
from inference.synthetic.canvas import ANOMALY_VISIBLE, Body, Canvas
from inference.synthetic.physics import ENERGIES, attenuation, response
from inference.synthetic.world import MU_JITTER, RATIO_JITTER, World
from inference.training.dataset import POS_FRACTION, X_QUANT, _dense_channel
from inference.training.geometry import Geometry

__all__ = ["PROJECTED_LABELS", "PROJECT_ANYWHERE", "ObjectBank", "ProjectedObject", "render_object"]

FloatArray = npt.NDArray[np.float32]

PROJECTED_LABELS: dict[str, float] = {"dense_object": 0.35, "weapon": 0.35, "organic_mass": 0.30}
"""Classes projected, with their share. Concealed cars are not projected: they fill a box, are
found 99 % of the time, and a car needs the cargo loaded around it."""

PROJECT_ANYWHERE = 0.3
"""Default share of projected objects put anywhere in the band boxes occupy rather than into the
tile's load (walls, chassis, empty boxes)."""

_OVERSAMPLE = 2
_LOAD_WIDTH_MM = 3000.0
_LOAD_HEIGHT_MM = 2500.0
_MARGIN = 4  # canvas pixels around the load space
_X_MAX = 255 / X_QUANT  # the largest input the uint8 training cache holds


@dataclass(frozen=True)
class ProjectedObject:
    """One object on the model grid."""

    label: str
    x: FloatArray
    """``(h, w, channels)`` model input units (what the object adds to a tile)."""
    coverage: FloatArray
    """``(h, w)`` share of each model pixel covered by the object's visible footprint."""


def render_object(label: str, rng: np.random.Generator, g: Geometry, *,
                  energies: tuple[str, ...] = tuple(ENERGIES)) -> ProjectedObject | None:
    """Draw one object of ``label`` alone; None if it came out invisible."""
    col_mm = g.column_mm / _OVERSAMPLE
    row_mm = float(rng.uniform(11.5, 17.5)) / _OVERSAMPLE  # 256 model rows over a 2.9-4.5 m span
    cols = int(_LOAD_WIDTH_MM / col_mm) + 2 * _MARGIN
    rows = int(_LOAD_HEIGHT_MM / row_mm) + 2 * _MARGIN
    cv = Canvas(rows, cols, col_mm, row_mm, _LOAD_HEIGHT_MM, rng=rng, with_masks=False)
    body = Body(kind="dry", x_start=0.0, x_end=float(cols), y_roof=0.0, y_bottom=float(rows),
                y_floor=float(rows - _MARGIN), y_top=float(_MARGIN), x_in0=float(_MARGIN),
                x_in1=float(cols - _MARGIN))
    cv.use(body)
    cv.current = np.zeros((rows, cols), dtype=np.float32)
    ANOMALY_DRAWERS[label](cv, label)
    visible = cv.current > ANOMALY_VISIBLE
    if not visible.any():
        return None
    world = World(energy=str(rng.choice(list(energies))),
                  mu_jitter=tuple(float(v) for v in rng.uniform(*MU_JITTER, size=4)),
                  ratio_jitter=float(rng.uniform(*RATIO_JITTER)))
    mu = response(world).mu
    blur = float(rng.uniform(0.05, 1.3)) * _OVERSAMPLE
    planes = []
    for m in mu:
        att = attenuation(cv.t, m)
        planes.append(np.asarray(cv2.GaussianBlur(att, (0, 0), sigmaX=blur), dtype=np.float32))
    ys, xs = np.nonzero(planes[0] > 0.01)
    y0, y1 = max(int(ys.min()) - 2, 0), min(int(ys.max()) + 3, rows)
    x0, x1 = max(int(xs.min()) - 2, 0), min(int(xs.max()) + 3, cols)
    # Crop to whole model pixels, then average down like preprocessing's pair averaging.
    y1 = y0 + max(_OVERSAMPLE, (y1 - y0) // _OVERSAMPLE * _OVERSAMPLE)
    x1 = x0 + max(_OVERSAMPLE, (x1 - x0) // _OVERSAMPLE * _OVERSAMPLE)
    size = ((x1 - x0) // _OVERSAMPLE, (y1 - y0) // _OVERSAMPLE)

    def down(a: FloatArray) -> FloatArray:
        return np.asarray(cv2.resize(np.ascontiguousarray(a[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA),
                          dtype=np.float32)

    high, low = down(planes[0]), down(planes[1])
    features = {"high": high, "low": low, "low_minus_high": low - high}
    x = np.stack([features[name] / np.float32(scale) for name, scale in zip(g.channels, g.scale, strict=True)],
                 axis=-1)
    coverage = down(visible.astype(np.float32))
    return ProjectedObject(label=label, x=np.asarray(x, dtype=np.float32), coverage=coverage)


class ObjectBank:
    """A fixed set of rendered objects per class, drawn from ``seed`` (training stays reproducible)."""

    def __init__(self, g: Geometry, *, per_label: int, seed: int,
                 exclude: Mapping[str, tuple[str, ...]] | None = None) -> None:
        energies = tuple(e for e in ENERGIES if e not in (exclude or {}).get("energy", ()))
        if not energies:
            raise ValueError("every dual-energy pair is excluded: no response to render objects with")
        rng = np.random.default_rng([seed, 0x7199])
        self.g = g
        # High-energy input at the gate's transmission floor, less the cache's rounding.
        self._x_spent = np.float32(-np.log(T_FLOOR) / g.scale[0] - 1.5 / X_QUANT)
        self.labels = tuple(PROJECTED_LABELS)
        self.shares = np.array([PROJECTED_LABELS[k] for k in self.labels]) / sum(PROJECTED_LABELS.values())
        self.objects: dict[str, list[ProjectedObject]] = {}
        for label in self.labels:
            made: list[ProjectedObject] = []
            while len(made) < per_label:
                obj = render_object(label, rng, g, energies=energies)
                if obj is not None:
                    made.append(obj)
            self.objects[label] = made

    def __len__(self) -> int:
        return sum(len(v) for v in self.objects.values())

    def project(self, xs: FloatArray, ts: FloatArray, ws: FloatArray, rng: np.random.Generator, *,
                anywhere: float = PROJECT_ANYWHERE) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Add one random object to a tile ``xs (rows, cols, ch)`` with its cell targets/weights.

        The object goes into the tile's load, or with probability ``anywhere`` (always, when the
        tile holds no load) anywhere in the height band containers occupy: onto walls, the
        chassis, an empty box. With ``anywhere`` 0 a tile without load is returned unchanged.
        """
        g = self.g
        cargo = np.argwhere(ts[..., 0] > 0)
        if not cargo.size and anywhere <= 0:
            return xs, ts, ws
        label = self.labels[int(rng.choice(len(self.labels), p=self.shares))]
        obj = self.objects[label][int(rng.integers(0, len(self.objects[label])))]
        ox, cover = obj.x, obj.coverage
        if rng.random() < 0.5:
            ox, cover = ox[:, ::-1], cover[:, ::-1]
        if rng.random() < 0.5:
            ox, cover = ox[::-1], cover[::-1]
        rows, cols = xs.shape[:2]
        h, w = min(ox.shape[0], rows), min(ox.shape[1], cols)
        ox, cover = ox[:h, :w], cover[:h, :w]
        if cargo.size and rng.random() < 1 - anywhere:  # into the load, where objects are missed
            cy, cx = cargo[int(rng.integers(0, len(cargo)))] * g.stride + g.stride // 2
        else:  # anywhere in the height band containers occupy
            cy, cx = int(rng.uniform(0.15, 0.8) * rows), int(rng.integers(0, cols))
        y0 = int(np.clip(cy - h // 2, 0, rows - h))
        x0 = int(np.clip(cx - w // 2, 0, cols - w))
        xs = xs.copy()
        # Where the tile's beam is spent (high-energy attenuation at the gate's floor) the scanner
        # records nothing of an object: it adds no signal there and no target (as in the
        # generator's ground truth, `inference.synthetic.visibility`).
        through = xs[y0:y0 + h, x0:x0 + w, 0] < self._x_spent
        ox = ox * through[..., None]
        cover = cover * through
        # A single-energy tile (zero material channel) gets the high-energy plane only.
        channels = 1 if xs.shape[2] > 1 and float(np.abs(xs[..., 1]).max()) < 1e-3 else xs.shape[2]
        xs[y0:y0 + h, x0:x0 + w, :channels] += ox[..., :channels]
        np.minimum(xs, np.float32(_X_MAX), out=xs)  # the cached set saturates there too
        frac = np.zeros((rows, cols), np.float32)
        frac[y0:y0 + h, x0:x0 + w] = cover
        cells = frac.reshape(rows // g.stride, g.stride, cols // g.stride, g.stride).max(axis=(1, 3))
        ts, ws = ts.copy(), ws.copy()
        for k, name in ((0, "not_empty"), (g.outputs.index(label), label)):
            pos, weight = _dense_channel(cells, POS_FRACTION.get(name, POS_FRACTION["default"]))
            # Cells the tile already holds as positive stay positive and weighted.
            ignore = (weight == 0) & (ts[..., k] == 0)
            ts[..., k] = np.where(pos > 0, 1.0, ts[..., k])
            ws[..., k] = np.where(pos > 0, 1.0, np.where(ignore, 0.0, ws[..., k]))
        return xs, ts, ws
