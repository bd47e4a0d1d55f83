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
    "prepare_quantized",
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
    """Model-space image of one scan and the geometry to map results back.

    ``data`` is NHWC without the batch axis, ``(rows, padded_width, channels)``: float32 from
    `prepare_scan`, the model's input dtype from `prepare_quantized`; padded with air to a
    multiple of the output stride and to at least one tile. ``width`` is the valid part.
    ``scale_x``/``scale_y`` are scan pixels per model pixel.
    """

    data: npt.NDArray[Any]
    width: int
    scale_x: float
    scale_y: float
    offsets: tuple[int, ...]


def _log_lut() -> FloatArray:
    """``ln(max(i, 1))`` for every 16-bit value: the log of a resampled plane is one gather."""
    global _LOG_LUT  # noqa: PLW0603 - built once per process on first use
    if _LOG_LUT is None:
        _LOG_LUT = np.log(np.maximum(np.arange(65536, dtype=np.float32), 1.0)).astype(np.float32)
    return _LOG_LUT


_LOG_LUT: FloatArray | None = None


def _downscale(plane: npt.NDArray[np.uint16], out_w: int, out_h: int) -> npt.NDArray[np.uint16]:
    """Average pairs of pixels while the remaining factor is >= 2, then interpolate linearly.

    A linear resize by exactly 1/2 samples halfway between two pixels, i.e. it is the 2-pixel
    box average (area resampling) at the speed of OpenCV's linear path; OpenCV's own area
    resize is several times slower on non-square factors. The last linear step changes the size
    by less than 2x, so every output pixel still averages the noise of the pixels it covers.
    """
    x: npt.NDArray[Any] = plane
    while True:
        halve_x = x.shape[1] / out_w >= 2.0
        halve_y = x.shape[0] / out_h >= 2.0
        if not (halve_x or halve_y):
            break
        w = x.shape[1] // 2 if halve_x else x.shape[1]
        h = x.shape[0] // 2 if halve_y else x.shape[0]
        src = x[: h * (2 if halve_y else 1), : w * (2 if halve_x else 1)]
        x = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
    if x.shape != (out_h, out_w):
        x = cv2.resize(x, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(x, dtype=np.uint16)


def _air_level(small: npt.NDArray[np.uint16], norm: NormalizationSpec) -> float:
    """Air intensity of a resampled plane: nearest-rank percentile of every 4th pixel each way,
    floored so that a scan without air (or an inverted one) cannot inflate the attenuation."""
    sample = small[::4, ::4].ravel()
    k = min(sample.size - 1, round(norm.air_percentile / 100.0 * (sample.size - 1)))
    return max(float(np.partition(sample, k)[k]), norm.air_floor_fraction * 65535.0)


def _resampled(scan: Scan, channel: int, width: int, rows: int) -> npt.NDArray[np.uint16]:
    """One channel on the 16-bit scale, resampled to ``rows x width``: an array of its own, which
    callers may modify in place (never the scan's pixels, even when no resampling is needed)."""
    plane: npt.NDArray[Any] = scan.pixels[channel]
    if scan.bits == 8:  # one path for both depths: widen to the 16-bit scale
        plane = plane.astype(np.uint16) * np.uint16(257)
    small = _downscale(np.ascontiguousarray(plane, dtype=np.uint16), width, rows)
    return small.copy() if np.may_share_memory(small, scan.pixels) else small


def _attenuation(scan: Scan, channel: int, width: int, rows: int, norm: NormalizationSpec, *,
                 out: FloatArray) -> None:
    """``out[:, :width] = max(ln(I_air) - ln(I), 0)`` of one channel, resampled."""
    small = _resampled(scan, channel, width, rows)
    air = _air_level(small, norm)
    dst = out[:, :width]
    np.subtract(np.float32(np.log(air)), np.take(_log_lut(), small), out=dst)
    np.maximum(dst, 0.0, out=dst)


def _check(scan: Scan, inp: InputSpec) -> int:
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
    return width


def normalize_scan(scan: Scan, inp: InputSpec, norm: NormalizationSpec, padded_width: int | None = None,
                   ) -> tuple[FloatArray, int]:
    """Resample and normalize a scan to planar ``(channels, rows, width)`` float32.

    Returns (data, valid width). With ``padded_width`` the array is that wide, the extra columns
    air (zero attenuation), so no second copy is needed for padding.
    """
    width = _check(scan, inp)
    used = 2 if any(name in ("low", "low_minus_high") for name in inp.channels) else 1
    att = np.zeros((used, inp.rows, max(width, padded_width or 0)), dtype=np.float32)
    for c in range(used):
        _attenuation(scan, c, width, inp.rows, norm, out=att[c])
    feats = np.empty((len(inp.channels), *att.shape[1:]), dtype=np.float32)
    for i, name in enumerate(inp.channels):
        if name == "high":
            np.multiply(att[0], np.float32(1.0 / norm.scale[i]), out=feats[i])
        elif name == "low":
            np.multiply(att[1], np.float32(1.0 / norm.scale[i]), out=feats[i])
        elif name == "low_minus_high":
            np.subtract(att[1], att[0], out=feats[i])
            feats[i] *= np.float32(1.0 / norm.scale[i])
        else:
            raise ScanFormatError(f"unknown model input channel {name!r}")
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


def prepare_scan(scan: Scan, inp: InputSpec, norm: NormalizationSpec, overlap: int, stride: int) -> PreparedScan:
    """`normalize_scan` padded to whole tiles, as float NHWC ``(rows, padded, channels)``."""
    width = _check(scan, inp)
    padded = max(inp.width, -(-width // stride) * stride)
    data, width = normalize_scan(scan, inp, norm, padded_width=padded)
    return PreparedScan(data=np.ascontiguousarray(data.transpose(1, 2, 0)), width=width,
                        scale_x=scan.columns / width, scale_y=scan.rows / inp.rows,
                        offsets=tile_offsets(padded, inp.width, overlap, stride))


def _log_clipped(scan: Scan, channel: int, width: int, padded: int, rows: int, *, norm: NormalizationSpec,
                 ) -> tuple[float, FloatArray]:
    """``(ln(I_air), ln(min(I, I_air)))`` of one resampled channel, padded with air.

    Clipping the intensity at the air level before the log is the same as clipping the
    attenuation at zero afterwards, and saves a pass.
    """
    small = _resampled(scan, channel, width, rows)
    air = _air_level(small, norm)
    clipped = np.empty((rows, padded), dtype=np.float32)
    clipped[:, width:] = air  # padding is air
    # Clip in uint16 (in place), convert while copying into the padded plane.
    np.clip(small, 1, int(min(air, 65535.0)), out=small)
    clipped[:, :width] = small
    return float(np.log(air)), np.asarray(cv2.log(clipped), dtype=np.float32)


def prepare_quantized(scan: Scan, inp: InputSpec, norm: NormalizationSpec, overlap: int, stride: int,
                      ) -> PreparedScan:
    """The runtime path: ``(rows, padded, channels)`` in the model's input dtype, NHWC.

    Normalization and quantization are fused into one OpenCV pass per channel
    (``q = round(a * k + zero_point)`` saturated, with ``a`` written in terms of the logs), and
    the channels are interleaved once; the values equal ``quantize(prepare_scan(...))`` up to one
    step on exact rounding ties and the air percentile (nearest rank here, interpolated there).
    """
    if inp.dtype == "float32" or inp.quantization is None:
        return prepare_scan(scan, inp, norm, overlap, stride)
    width = _check(scan, inp)
    padded = max(inp.width, -(-width // stride) * stride)
    used = 2 if any(name in ("low", "low_minus_high") for name in inp.channels) else 1
    logs = [_log_clipped(scan, c, width, padded, inp.rows, norm=norm) for c in range(used)]
    q = inp.quantization
    depth = cv2.CV_8S if inp.dtype == "int8" else cv2.CV_8U
    planes = []
    for i, name in enumerate(inp.channels):
        k = 1.0 / (norm.scale[i] * q.scale)
        if name in ("high", "low"):
            la, ln = logs[0 if name == "high" else 1]
            # a * k + zp = (la - ln) * k + zp
            planes.append(cv2.addWeighted(ln, -k, ln, 0.0, la * k + q.zero_point, dtype=depth))
        elif name == "low_minus_high":
            (la0, ln0), (la1, ln1) = logs[0], logs[1]
            # (a1 - a0) * k + zp = (ln0 - ln1) * k + (la1 - la0) * k + zp
            planes.append(cv2.addWeighted(ln0, k, ln1, -k, (la1 - la0) * k + q.zero_point, dtype=depth))
        else:
            raise ScanFormatError(f"unknown model input channel {name!r}")
    data = cv2.merge(planes) if len(planes) > 1 else planes[0][:, :, None]
    return PreparedScan(data=np.asarray(data), width=width, scale_x=scan.columns / width,
                        scale_y=scan.rows / inp.rows, offsets=tile_offsets(padded, inp.width, overlap, stride))


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
