"""Images for human reviewers: the false-colour preview (JPEG) and the full image (PNG).

False colour follows the convention of cargo scanners: brightness from the high-energy
transmission (air white, dense material dark), hue from the material class read off dual
energy, i.e. the ratio ``R = a_low / a_high`` of the two attenuations: organic (high R) orange,
mixed / light metal green, metal (low R) blue. A single-energy scan is rendered grey.
The class bounds match the effective attenuation of the scanner model in
`inference.synthetic`; a site with another source sets its own via ``material_bounds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.errors import InferenceError
from inference.result import ReviewRegion
from inference.scan import Scan

__all__ = ["MATERIAL_BOUNDS", "render_image_png", "render_preview"]

# R above the first bound: organic; between: mixed / light metal; below the second: metal.
MATERIAL_BOUNDS: tuple[float, float] = (1.345, 1.22)

_ORANGE = np.array([40, 140, 255], dtype=np.float32)  # BGR
_GREEN = np.array([70, 200, 60], dtype=np.float32)
_BLUE = np.array([230, 120, 40], dtype=np.float32)
_REGION = (40, 40, 230)  # red outline, readable on all three hues


def _region_value(region: ReviewRegion | dict[str, Any], key: str) -> Any:
    return region[key] if isinstance(region, dict) else getattr(region, key)


def render_preview(
    scan: Scan,
    regions: Sequence[ReviewRegion | dict[str, Any]] = (),
    max_width: int = 1200,
    *,
    quality: int = 85,
    material_bounds: tuple[float, float] = MATERIAL_BOUNDS,
) -> bytes:
    """Downscaled false-colour JPEG with ``regions`` (scan pixel coordinates) outlined and labelled.

    The height keeps the physical aspect when the scan's meta carries ``row_mm`` (the detector
    pitch), otherwise the pixel aspect.
    """
    if max_width < 64:
        raise ValueError(f"max_width must be >= 64 (got {max_width})")
    width = min(max_width, scan.columns)
    fx = width / scan.columns
    row_mm = scan.meta.get("row_mm")
    aspect = float(row_mm) / scan.pixel_mm if isinstance(row_mm, int | float) and row_mm > 0 else 1.0
    height = max(32, round(scan.rows * fx * aspect))
    img = np.ascontiguousarray(scan.pixels.transpose(1, 2, 0), dtype=np.float32)
    small = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = small[:, :, None]
    air = np.maximum(np.percentile(small.reshape(-1, small.shape[2]), 99.5, axis=0), 0.5 * scan.max_value)
    trans = np.clip(small / air.astype(np.float32), 1e-4, 1.0)
    att_h = -np.log(trans[..., 0])
    shade = np.sqrt(trans[..., 0])[..., None]  # gamma brightens dense areas a little
    if scan.channels >= 2:
        ratio = -np.log(trans[..., 1]) / np.maximum(att_h, 1e-3)
        colour = np.where((ratio >= material_bounds[0])[..., None], _ORANGE,
                          np.where((ratio >= material_bounds[1])[..., None], _GREEN, _BLUE))
        saturation = np.clip(att_h / 0.35, 0.0, 1.0)[..., None]
        rgb = shade * (saturation * colour + (1.0 - saturation) * 255.0)
    else:
        rgb = np.repeat(shade * 255.0, 3, axis=2)
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    fy = height / scan.rows
    for region in regions:
        x, y = _region_value(region, "x"), _region_value(region, "y")
        w, h = _region_value(region, "w"), _region_value(region, "h")
        p0 = (int(x * fx), int(y * fy))
        p1 = (int((x + w) * fx), int((y + h) * fy))
        cv2.rectangle(out, p0, p1, _REGION, 2, lineType=cv2.LINE_AA)
        text = f"{_region_value(region, 'label')} {float(_region_value(region, 'score')):.2f}"
        ty = p0[1] - 4 if p0[1] > 14 else p1[1] + 12
        cv2.putText(out, text, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InferenceError(f"scan {scan.scan_id}: JPEG encoding failed")
    return bytes(buf)


def render_image_png(scan: Scan) -> bytes:
    """Channel 0 (high energy) at full resolution as a 16-bit greyscale PNG (contract: scan.fetch).

    8-bit scans are widened to 16 bits (x 257) so the format is always the same.
    """
    pixels: npt.NDArray[Any] = scan.pixels[0]
    if scan.bits == 8:
        pixels = pixels.astype(np.uint16) * np.uint16(257)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels, dtype=np.uint16))
    if not ok:
        raise InferenceError(f"scan {scan.scan_id}: PNG encoding failed")
    return bytes(buf)
