"""Scan -> model input: conditioning, resampling, log attenuation, normalization, tiling.

Training and the runtime share this module, so what the model sees in the field is exactly what
it was trained on.

1. Conditioning (`inference.conditioning`): bit depth, dead/stuck/noisy row repair, dark offset,
   per-row flat field from the scan's own air; the result is transmission ``T`` per channel.
2. Resampling: ``T`` is brought to the model's column pitch (``input.column_mm``) using the
   scan's ``pixel_mm``, and to the model's row count, with area averaging (what a coarser
   detector would have measured). 20/40/45 ft scans and scanners with another pulse rate,
   detector pitch or row count look the same to the model.
3. ``a = -ln T`` per channel. The model's channels are ``a_high / s0`` and
   ``(a_low - a_high) / s1``, the material-sensitive difference. A single-energy scan has no
   low channel: its difference channel is zero, which the model was trained to read as "no
   material information" (single-energy scans are part of its training world).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.conditioning import T_FLOOR, ConditioningReport, RowCorrection, row_correction
from inference.errors import ScanFormatError
from inference.model_spec import InputSpec, NormalizationSpec, QuantizationSpec
from inference.scan import Scan

__all__ = [
    "INVERTED_BAND",
    "MAX_MODEL_COLUMNS",
    "MIN_SCAN_COLUMNS",
    "MIN_SCAN_ROWS",
    "PreparedScan",
    "dequantize",
    "inverted_share",
    "normalize_scan",
    "padded_width",
    "prepare_quantized",
    "prepare_scan",
    "quantize",
    "tile_offsets",
]

MIN_SCAN_ROWS = 16
MIN_SCAN_COLUMNS = 16
MAX_MODEL_COLUMNS = 8192  # ~160 m at 20 mm: far beyond any vehicle, bounds the work per scan
INVERTED_BAND = (0.5, 4.0)
"""High-energy attenuations for which a pixel counts for `inverted_share`: from about 60 mm of
steel (below, the difference channel is mostly noise) to a transmission of 2 % (above, both
channels near the floor are dominated by noise and clipping)."""
_INVERTED_MIN_PIXELS = 50  # fewer counted pixels (an empty box's frame): no evidence either way
_INVERTED_STEP = 4  # every 4th model column, as the input statistics
_BAND_PIXELS = 1 << 17  # 512 KB of float32 per band: stays in L2 through conversion and halving

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PreparedScan:
    """Model-space image of one scan and the geometry to map results back.

    ``data`` is NHWC without the batch axis, ``(rows, padded_width, channels)``: float32 from
    `prepare_scan`, the model's input dtype from `prepare_quantized`; padded with air to a
    multiple of the output stride and to at least one tile. ``width`` is the valid part.
    ``scale_x``/``scale_y`` are scan pixels per model pixel. ``report`` is the conditioning
    report plus ``noise``, the robust noise level of the high channel in air (model units).
    """

    data: npt.NDArray[Any]
    width: int
    scale_x: float
    scale_y: float
    offsets: tuple[int, ...]
    report: dict[str, Any] = field(default_factory=dict)


def _halvings(w: int, h: int, out_w: int, out_h: int) -> list[tuple[bool, bool]]:
    """The 2x reductions, (x, y) per step, while the remaining factor is >= 2 (see `_resampled`)."""
    steps: list[tuple[bool, bool]] = []
    while True:
        halve_x, halve_y = w / out_w >= 2.0, h / out_h >= 2.0
        if not (halve_x or halve_y):
            return steps
        steps.append((halve_x, halve_y))
        w, h = (w // 2 if halve_x else w), (h // 2 if halve_y else h)


def _halve(x: FloatArray, steps: list[tuple[bool, bool]]) -> FloatArray:
    for halve_x, halve_y in steps:
        w = x.shape[1] // 2 if halve_x else x.shape[1]
        h = x.shape[0] // 2 if halve_y else x.shape[0]
        src = x[: h * (2 if halve_y else 1), : w * (2 if halve_x else 1)]
        x = np.asarray(cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.float32)
    return x


def _resampled(correction: RowCorrection, raw: npt.NDArray[Any], out_w: int, out_h: int) -> FloatArray:
    """The channel's transmission on the model grid: pairs of pixels averaged while the
    remaining factor is >= 2, then a linear interpolation.

    A linear resize by exactly 1/2 samples halfway between two pixels, i.e. it is the 2-pixel
    box average (area resampling) at the speed of OpenCV's linear path; OpenCV's own area
    resize is several times slower on non-square factors. The last linear step changes the size
    by less than 2x, so every output pixel still averages the noise of the pixels it covers.

    The 2x steps average disjoint pairs of rows, so a band of ``2**k`` rows (k the number of
    row halvings) reduces on its own to exactly its share of the result: each band is
    converted, corrected and halved while it is in cache, and no float plane of the whole scan
    is made. Rows beyond the last whole group, which the halving would crop, are not converted.
    """
    rows, cols = raw.shape
    steps = _halvings(cols, rows, out_w, out_h)
    if not steps:
        x = correction.transmission(raw, 0, rows)
    else:
        group = 1 << sum(halve_y for _, halve_y in steps)
        used = rows // group * group
        groups = used // group
        bands = -(-groups // max(1, _BAND_PIXELS // (cols * group)))
        band = group * -(-groups // bands)  # even bands: no sliver of a row or two at the end
        buffer = np.empty((min(band, used), cols), dtype=np.float32)
        parts = [_halve(correction.transmission(raw, r0, min(r0 + band, used), out=buffer[:min(band, used - r0)]),
                        steps) for r0 in range(0, used, band)]
        x = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if x.shape == (out_h, out_w):
        return x
    return np.asarray(cv2.resize(x, (out_w, out_h), interpolation=cv2.INTER_LINEAR), dtype=np.float32)


def _check(scan: Scan, inp: InputSpec) -> int:
    if "low" in inp.channels and scan.channels < 2:
        raise ScanFormatError(
            f"scan {scan.scan_id}: the model needs the low-energy channel, this scan has {scan.channels} channel(s)")
    if scan.rows < MIN_SCAN_ROWS or scan.columns < MIN_SCAN_COLUMNS:
        raise ScanFormatError(
            f"scan {scan.scan_id}: {scan.rows} rows x {scan.columns} columns is too small to review "
            f"(need at least {MIN_SCAN_ROWS} x {MIN_SCAN_COLUMNS})")
    width = round(scan.columns * scan.pixel_mm / inp.column_mm)
    if width < 1 or width > MAX_MODEL_COLUMNS:
        raise ScanFormatError(
            f"scan {scan.scan_id}: {scan.columns} columns at {scan.pixel_mm} mm is {width} model columns "
            f"(allowed 1..{MAX_MODEL_COLUMNS}); check pixel_mm")
    return width


def _air_noise(a: FloatArray) -> float:
    """Robust pulse-to-pulse noise of the attenuation where the beam crossed air (a < 0.15)."""
    d = np.abs(np.diff(a, axis=1))
    sel = (a[:, 1:] < 0.15) & (a[:, :-1] < 0.15)
    if sel.sum() < 64:
        return float("nan")
    return float(np.median(d[sel]) * 1.4826 / math.sqrt(2.0))


def _attenuations(scan: Scan, width: int, rows: int) -> tuple[list[FloatArray], dict[str, Any]]:
    """``-ln T`` per channel on the model grid, and the conditioning report."""
    report = ConditioningReport()
    planes = []
    for c in range(scan.channels):
        correction = row_correction(scan, c, report)
        small = _resampled(correction, scan.pixels[c], width, rows)
        np.maximum(small, np.float32(T_FLOOR), out=small)
        att = np.asarray(cv2.log(small), dtype=np.float32)
        np.negative(att, out=att)
        np.maximum(att, 0.0, out=att)
        planes.append(att)
    out = report.as_dict()
    out["noise"] = round(_air_noise(planes[0]), 5)
    out["channels"] = scan.channels
    return planes, out


def _features(scan: Scan, inp: InputSpec, norm: NormalizationSpec, padded_width: int | None,
              ) -> tuple[FloatArray, int, dict[str, Any]]:
    width = _check(scan, inp)
    att, report = _attenuations(scan, width, inp.rows)
    feats = np.zeros((len(inp.channels), inp.rows, max(width, padded_width or 0)), dtype=np.float32)
    for i, name in enumerate(inp.channels):
        dst = feats[i, :, :width]
        if name == "high":
            np.multiply(att[0], np.float32(1.0 / norm.scale[i]), out=dst)
        elif name == "low":
            np.multiply(att[1], np.float32(1.0 / norm.scale[i]), out=dst)
        elif name == "low_minus_high":
            if len(att) > 1:
                np.subtract(att[1], att[0], out=dst)
                dst *= np.float32(1.0 / norm.scale[i])
        else:
            raise ScanFormatError(f"unknown model input channel {name!r}")
    return feats, width, report


def normalize_scan(scan: Scan, inp: InputSpec, norm: NormalizationSpec, padded_width: int | None = None,
                   ) -> tuple[FloatArray, int]:
    """Condition, resample and normalize a scan to planar ``(channels, rows, width)`` float32.

    Returns (data, valid width). With ``padded_width`` the array is that wide, the extra columns
    air (zero attenuation), so no second copy is needed for padding.
    """
    feats, width, _ = _features(scan, inp, norm, padded_width)
    return feats, width


def tile_offsets(width: int, tile: int, overlap: int, stride: int) -> tuple[int, ...]:
    """Tile x offsets covering ``width`` (a multiple of ``stride``, >= ``tile``), stride-aligned."""
    if width <= tile:
        return (0,)
    step = tile - overlap
    count = math.ceil((width - tile) / step) + 1
    last = width - tile
    offsets = {round(last * k / (count - 1) / stride) * stride for k in range(count)}
    return tuple(sorted(offsets))


def padded_width(width: int, tile: int, stride: int) -> int:
    """The columns a scan of ``width`` model columns is padded to: whole cells, at least one tile."""
    return max(tile, -(-width // stride) * stride)


def prepare_scan(scan: Scan, inp: InputSpec, norm: NormalizationSpec, overlap: int, stride: int) -> PreparedScan:
    """`normalize_scan` padded to whole tiles, as float NHWC ``(rows, padded, channels)``."""
    width = _check(scan, inp)
    padded = padded_width(width, inp.width, stride)
    data, width, report = _features(scan, inp, norm, padded)
    return PreparedScan(data=np.ascontiguousarray(data.transpose(1, 2, 0)), width=width,
                        scale_x=scan.columns / width, scale_y=scan.rows / inp.rows,
                        offsets=tile_offsets(padded, inp.width, overlap, stride), report=report)


def prepare_quantized(scan: Scan, inp: InputSpec, norm: NormalizationSpec, overlap: int, stride: int,
                      ) -> PreparedScan:
    """The runtime path: ``(rows, padded, channels)`` in the model's input dtype, NHWC."""
    prepared = prepare_scan(scan, inp, norm, overlap, stride)
    if inp.dtype == "float32" or inp.quantization is None:
        return prepared
    return PreparedScan(data=quantize(prepared.data, inp.quantization, inp.dtype), width=prepared.width,
                        scale_x=prepared.scale_x, scale_y=prepared.scale_y, offsets=prepared.offsets,
                        report=prepared.report)


def quantize(x: FloatArray, q: QuantizationSpec | None, dtype: str) -> npt.NDArray[Any]:
    """Float -> the model's input dtype (affine quantization, saturating)."""
    if dtype == "float32" or q is None:
        return x.astype(np.float32, copy=False)
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    out: FloatArray = x * np.float32(1.0 / q.scale)
    out += np.float32(q.zero_point)
    np.clip(out, lo, hi, out=out)
    np.rint(out, out=out)
    if dtype == "int8":
        return out.astype(np.int8)
    return out.astype(np.uint8)


def dequantize(x: npt.NDArray[Any], q: QuantizationSpec | None) -> FloatArray:
    if q is None:
        return x.astype(np.float32, copy=False)
    return (x.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


def inverted_share(data: npt.NDArray[Any], width: int, inp: InputSpec, norm: NormalizationSpec) -> float:
    """Share of the prepared scan's attenuating pixels (high-energy attenuation within
    `INVERTED_BAND`) whose low-energy attenuation is below the high-energy one.

    Through the materials cargo is made of, the lower energy of a MeV pair is attenuated more
    (Compton scattering falls with energy); only high-Z metals turn over, where pair production
    takes over, and they are a small part of any load. A scan where most of the load reads the
    other way was not made the way the model's scans were: most often a firmware that sends its
    channels in the other order (GFP/1: channel 0 is the high energy) or a low channel that is
    not the lower energy. 0 for a single-energy model input or scan (no difference channel, or a
    zero one) and for a scan with fewer than 50 such pixels (every 4th model column)."""
    names = inp.channels
    if "high" not in names or "low_minus_high" not in names or width <= 0:
        return 0.0
    hi_c, diff_c = names.index("high"), names.index("low_minus_high")
    view = dequantize(data[:, :width:_INVERTED_STEP, :], inp.quantization)
    high = view[..., hi_c] * np.float32(norm.scale[hi_c])
    lo, hi = INVERTED_BAND
    counted = (high >= np.float32(lo)) & (high <= np.float32(hi))
    count = int(np.count_nonzero(counted))
    if count < _INVERTED_MIN_PIXELS:
        return 0.0
    return round(float(np.count_nonzero(view[..., diff_c][counted] < 0)) / count, 4)
