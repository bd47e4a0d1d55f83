"""Scan -> model input: resampling, log attenuation, normalization, tiling, quantization.

Training and the runtime share this module, so what the model sees in the field is exactly what
it was trained on. Everything is whole-array numpy/OpenCV work: a 2400 x 256 x 2 scan is
prepared in a few milliseconds.

Resampling: columns are brought to the model's column pitch (``input.column_mm``) using the
scan's ``pixel_mm``, rows to the model's row count, both with area averaging (what a coarser
detector would have measured). That makes 20/40/45 ft scans, and scanners with another pulse
rate or detector pitch, look the same to the model.

Normalization: the air level of each channel is estimated from the scan itself (a high
percentile, floored at a fraction of full scale so a scan without any air cannot blow the
attenuation up), then ``a = ln(I_air / I)``; the model's channels are ``a_high / s0`` and, for
dual energy, ``(a_low - a_high) / s1``, the material-sensitive difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.errors import ScanFormatError
from inference.model_spec import InputSpec, NormalizationSpec, QuantizationSpec
from inference.scan import Scan

__all__ = [
    "MAX_MODEL_COLUMNS",
    "MIN_SCAN_COLUMNS",
    "MIN_SCAN_ROWS",
    "PreparedScan",
    "dequantize",
    "normalize_scan",
    "prepare_scan",
    "quantize",
    "tile_offsets",
]

MIN_SCAN_ROWS = 16
MIN_SCAN_COLUMNS = 16
MAX_MODEL_COLUMNS = 8192  # ~160 m at 20 mm: far beyond any vehicle, bounds the work per scan

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PreparedScan:
    """Normalized model-space image of one scan and the geometry to map results back.

    ``data`` is ``(rows, padded_width, channels)`` float32, padded with air to a multiple of the
    output stride and to at least one tile; ``width`` is the valid part. ``scale_x``/``scale_y``
    are scan pixels per model pixel.
    """

    data: FloatArray
    width: int
    scale_x: float
    scale_y: float
    offsets: tuple[int, ...]


def _feature_channels(names: tuple[str, ...], att: FloatArray, scale: tuple[float, ...]) -> FloatArray:
    out = np.empty((*att.shape[:2], len(names)), dtype=np.float32)
    for i, name in enumerate(names):
        if name == "high":
            feat = att[..., 0]
        elif name == "low":
            feat = att[..., 1]
        elif name == "low_minus_high":
            feat = att[..., 1] - att[..., 0]
        else:  # rejected at metadata validation time would be nicer, but names are open-ended
            raise ScanFormatError(f"unknown model input channel {name!r}")
        np.multiply(feat, np.float32(1.0 / scale[i]), out=out[..., i])
    return out


def normalize_scan(scan: Scan, inp: InputSpec, norm: NormalizationSpec) -> tuple[FloatArray, int]:
    """Resample and normalize a scan to ``(rows, width, channels)`` float32; returns (data, width)."""
    needs_low = any(name in ("low", "low_minus_high") for name in inp.channels)
    if needs_low and scan.channels < 2:
        raise ScanFormatError(
            f"scan {scan.scan_id}: the model needs dual-energy scans (2 channels), this one has {scan.channels}")
    if scan.rows < MIN_SCAN_ROWS or scan.columns < MIN_SCAN_COLUMNS:
        raise ScanFormatError(
            f"scan {scan.scan_id}: {scan.rows} rows x {scan.columns} columns is too small to review "
            f"(need at least {MIN_SCAN_ROWS} x {MIN_SCAN_COLUMNS})")
    width = round(scan.columns * scan.pixel_mm / inp.column_mm)
    if width < 1 or width > MAX_MODEL_COLUMNS:
        raise ScanFormatError(
            f"scan {scan.scan_id}: {scan.columns} columns at {scan.pixel_mm} mm is {width} model columns "
            f"(allowed 1..{MAX_MODEL_COLUMNS}); check pixel_mm")
    used = 2 if needs_low else 1
    # (channels, rows, cols) -> (rows, cols, channels): the layout cv2.resize expects.
    img = np.ascontiguousarray(scan.pixels[:used].transpose(1, 2, 0), dtype=np.float32)
    small = cv2.resize(img, (width, inp.rows), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = small[:, :, None]
    full = float(scan.max_value)
    air = np.percentile(small.reshape(-1, used), norm.air_percentile, axis=0)
    air = np.maximum(air, norm.air_floor_fraction * full).astype(np.float32)
    np.maximum(small, 1.0, out=small)
    att = np.log(air[None, None, :] / small)
    np.maximum(att, 0.0, out=att)
    return _feature_channels(inp.channels, att, norm.scale), width


def tile_offsets(width: int, tile: int, overlap: int, stride: int) -> tuple[int, ...]:
    """Tile x offsets covering ``width`` (a multiple of ``stride``, >= ``tile``), stride-aligned."""
    if width <= tile:
        return (0,)
    step = tile - overlap
    count = math.ceil((width - tile) / step) + 1
    last = width - tile
    offsets = {round(last * k / (count - 1) / stride) * stride for k in range(count)}
    return tuple(sorted(offsets))


def prepare_scan(scan: Scan, inp: InputSpec, norm: NormalizationSpec, overlap: int, stride: int) -> PreparedScan:
    data, width = normalize_scan(scan, inp, norm)
    padded = max(inp.width, -(-width // stride) * stride)
    if padded != width:
        # Pad with air (zero attenuation): the model was trained with air around containers.
        data = np.pad(data, ((0, 0), (0, padded - width), (0, 0)))
    return PreparedScan(
        data=data,
        width=width,
        scale_x=scan.columns / width,
        scale_y=scan.rows / inp.rows,
        offsets=tile_offsets(padded, inp.width, overlap, stride),
    )


def quantize(x: FloatArray, q: QuantizationSpec | None, dtype: str) -> npt.NDArray[Any]:
    """Float -> the model's input dtype (affine quantization, saturating)."""
    if dtype == "float32" or q is None:
        return x.astype(np.float32, copy=False)
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    out: FloatArray = np.asarray(np.rint(x * np.float32(1.0 / q.scale)), dtype=np.float32)
    out += np.float32(q.zero_point)
    np.clip(out, lo, hi, out=out)
    if dtype == "int8":
        return out.astype(np.int8)
    return out.astype(np.uint8)


def dequantize(x: npt.NDArray[Any], q: QuantizationSpec | None) -> FloatArray:
    if q is None:
        return x.astype(np.float32, copy=False)
    return (x.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)
