"""Threat image projection (TIP): generator threats multiplied into the site's own clean scans.

X-ray transmission is close to multiplicative: an object in the beam multiplies the intensity
behind it by its own transmission ``exp(-a)``. TIP (Rogers et al., ICCST 2016) cuts threats out of
scans and projects them into real cargo with exactly that rule; the projected scans are then as
good as real ones for calibrating and measuring detection on a site's real backgrounds.

The threats come from the synthetic generator (`inference.synthetic.generate_scan`, public API
only): each is generated in an empty container with its pixel mask, and its attenuation
``a = -ln I`` is cut out by subtracting the background inpainted from around the mask (the
usual threat-image extraction). Projection resamples the object to the site scan's pitch and
row count, flips it at random, places it inside the load area and multiplies it in, per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from inference.scan import Scan

__all__ = ["ThreatObject", "extract_threats", "project"]

FloatArray = npt.NDArray[np.float32]
_VISIBLE = 0.03
"""Attenuation (ln units) above which a projected object counts as part of its ground-truth box."""


@dataclass(frozen=True)
class ThreatObject:
    label: str
    attenuation: FloatArray
    """``(channels, h, w)`` object attenuation, ``-ln`` of its transmission."""
    col_mm: float
    rows: int
    """Detector rows of the scan it was cut from (for resampling to the site's detector)."""
    seed: int


def extract_threats(labels: tuple[str, ...], per_label: int, *, seed: int) -> list[ThreatObject]:
    from inference.synthetic import generate_scan

    out: list[ThreatObject] = []
    for li, label in enumerate(labels):
        made, k = 0, 0
        while made < per_label and k < per_label * 4:
            s = seed + 1000 * li + k
            k += 1
            syn = generate_scan(s, length_ft=20, cargo="empty", anomalies=(label,), with_masks=True, clutter=False)
            mask = syn.masks.get(label)
            if mask is None or mask.sum() < 20:
                continue
            obj = _cut(syn.scan, mask)
            if obj is None:
                continue
            out.append(ThreatObject(label=label, attenuation=obj, col_mm=syn.scan.pixel_mm, rows=syn.scan.rows,
                                    seed=s))
            made += 1
    return out


def _cut(scan: Scan, mask: npt.NDArray[np.bool_]) -> FloatArray | None:
    m8 = mask.astype(np.uint8)
    grown = cv2.dilate(m8, np.ones((5, 5), np.uint8), iterations=2)
    ys, xs = np.nonzero(grown)
    y0, y1 = max(int(ys.min()) - 4, 0), min(int(ys.max()) + 5, scan.rows)
    x0, x1 = max(int(xs.min()) - 4, 0), min(int(xs.max()) + 5, scan.columns)
    if y1 - y0 < 3 or x1 - x0 < 3:
        return None
    hole = grown[y0:y1, x0:x1]
    planes = []
    for c in range(scan.channels):
        a = -np.log(np.maximum(scan.pixels[c, y0:y1, x0:x1].astype(np.float32), 1.0))
        # Background across the object from its surroundings; the object is what exceeds it.
        bg = cv2.inpaint(a.astype(np.float32), hole, 3, cv2.INPAINT_TELEA)
        planes.append(np.clip(a - bg, 0.0, None) * hole)
    return np.stack(planes).astype(np.float32)


def project(scan: Scan, threat: ThreatObject, rng: np.random.Generator, *, scan_id: str | None = None,
            ) -> tuple[Scan, tuple[int, int, int, int]] | None:
    """``scan`` with ``threat`` multiplied in, and the object's box ``(x, y, w, h)``; None when it
    cannot fit."""
    fx = threat.col_mm / scan.pixel_mm
    fy = scan.rows / threat.rows
    _, h0, w0 = threat.attenuation.shape
    w, h = max(1, round(w0 * fx)), max(1, round(h0 * fy))
    top, bottom = int(0.12 * scan.rows), int(0.88 * scan.rows)
    left, right = int(0.08 * scan.columns), int(0.92 * scan.columns)
    if h >= bottom - top or w >= right - left:
        return None
    y = int(rng.integers(top, bottom - h))
    x = int(rng.integers(left, right - w))
    flip = bool(rng.random() < 0.5)
    pixels = scan.pixels.astype(np.float32)
    visible = np.zeros((h, w), dtype=bool)
    for c in range(scan.channels):
        plane = threat.attenuation[min(c, threat.attenuation.shape[0] - 1)]
        att = cv2.resize(plane, (w, h), interpolation=cv2.INTER_LINEAR)
        if flip:
            att = att[:, ::-1]
        visible |= att > _VISIBLE
        pixels[c, y:y + h, x:x + w] *= np.exp(-att)
    if not visible.any():
        return None
    vy, vx = np.nonzero(visible)
    box = (x + int(vx.min()), y + int(vy.min()), int(vx.max() - vx.min()) + 1, int(vy.max() - vy.min()) + 1)
    full = (1 << scan.bits) - 1
    out = np.clip(np.rint(pixels), 0, full).astype(scan.pixels.dtype)
    return Scan(pixels=out, scan_id=scan_id or f"{scan.scan_id}-tip", bits=scan.bits, pixel_mm=scan.pixel_mm,
                declared=scan.declared, meta={**scan.meta, "tip": {"label": threat.label, "seed": threat.seed,
                                                                   "box": list(box)}}), box
