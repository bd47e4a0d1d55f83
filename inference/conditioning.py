"""Scan conditioning: what differs between machines is removed before the model sees a scan.

Per channel, on the scan's own pixels (no calibration file is needed):

1. bit depth: 8-bit values are put on the 16-bit scale (the middle of each 8-bit step);
2. defective detector rows are found and repaired from their neighbours: *constant* rows (dead
   at zero or stuck at any level: a live row always carries noise), *dim* rows (their bright end
   far below the neighbouring rows' *and* their profile along the scan unrelated to the
   neighbours': dead but noisy; a row that never sees air because a chassis beam covers it
   all along follows its neighbours and is kept) and *noisy* rows (pulse-to-pulse variation in
   air several times the neighbours');
3. the dark offset: ``meta["dark"]`` (one value per channel) when the scanner sends it,
   otherwise a low percentile of the scan capped at 1.5 % of the air level (the darkest pixels
   of a scan lie behind the chassis beams, axles or cargo, close to the dark level);
4. flat field: the air level of every row, from the brightest pixels of that row (the air
   before and after the vehicle and above it). Rows whose estimate is far below the others saw
   no air (covered the whole scan long) and take their neighbours' value; with too few rows
   seeing air, one global level is used;
5. transmission ``T = (I - dark) / (air_row - dark)``, floored at `T_FLOOR`.

Steps 2-4 need only statistics of a copy subsampled to at most 1024 pulses per row; they yield a
`RowCorrection`, which step 5 applies to any band of rows of the raw pixels, so the caller can
convert and resample a large scan band by band while the band is in cache instead of holding
(and walking several times over) a float plane of the whole scan. Resampling to the model grid
and ``-log T`` follow in `inference.preprocess`. The `ConditioningReport` says what was found and
repaired; the review result carries it.

Order statistics (percentiles, medians) are taken with `np.partition` on the integer pixels
along each row and interpolated the way `np.percentile` does, instead of `np.percentile` over
float copies: the values are the same, for a fraction of the time on a 1024-row detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from inference.scan import Scan

__all__ = ["T_FLOOR", "ConditioningReport", "RowCorrection", "condition_channel", "row_correction"]

T_FLOOR = 1e-4  # attenuation at most ln(1e4) = 9.2: beyond that a MeV scanner sees only noise
_FULL = 65535.0
_STATS_COLUMNS = 1024
_DIM_RATIO = 0.5
_DEAD_CORRELATION = 0.3
_NOISY_RATIO = 4.0
_COVERED_RATIO = 0.8
_NOISE_FLOOR = 0.004  # about one 8-bit step at the air level, in ln units
_DARK_CAP = 0.015
_BRIGHT_PERCENTILE = 99.0
_DARK_PERCENTILE = 0.1

FloatArray = npt.NDArray[np.float32]
RawArray = npt.NDArray[np.unsignedinteger[Any]]


@dataclass
class ConditioningReport:
    """What conditioning found in one scan (all channels)."""

    dead_rows: list[int] = field(default_factory=list)
    stuck_rows: list[int] = field(default_factory=list)
    noisy_rows: list[int] = field(default_factory=list)
    flat_field: str = "per_row"
    air_fraction: list[float] = field(default_factory=list)
    dark: list[float] = field(default_factory=list)
    covered_rows: int = 0
    rows: int = 0

    @property
    def repaired_rows(self) -> int:
        return len(set(self.dead_rows) | set(self.stuck_rows) | set(self.noisy_rows))

    def as_dict(self) -> dict[str, Any]:
        return {
            "dead_rows": sorted(set(self.dead_rows)),
            "stuck_rows": sorted(set(self.stuck_rows)),
            "noisy_rows": sorted(set(self.noisy_rows)),
            "flat_field": self.flat_field,
            "air_fraction": [round(v, 4) for v in self.air_fraction],
            "dark": [round(v, 1) for v in self.dark],
            "covered_rows": self.covered_rows,
        }


def _to_16bit(raw: RawArray, bits: int) -> FloatArray:
    plane = raw.astype(np.float32)
    if bits == 8:
        plane *= np.float32(256.0)
        plane += np.float32(128.0)
    return plane


def _lerp(low: FloatArray, high: FloatArray, gamma: float) -> FloatArray:
    """`np.percentile`'s linear interpolation between neighbouring order statistics, bit for bit."""
    diff = high - low
    if gamma >= 0.5:
        return np.asarray(high - diff * (1 - gamma), dtype=np.float32)
    return np.asarray(low + diff * gamma, dtype=np.float32)


def _ranks(n: int, q: float) -> tuple[int, int, float]:
    """The two order statistics (0-based ranks) that ``np.percentile(x, q)`` interpolates over
    ``n`` values, and the weight of the upper one."""
    virtual = (n - 1) * (q / 100)
    low = math.floor(virtual)
    if low >= n - 1:
        return n - 1, n - 1, 0.0
    return low, low + 1, virtual - low


class _RowTops:
    """The largest values of every row, sorted (16-bit scale): the row's bright end."""

    def __init__(self, ints: RawArray, bits: int) -> None:
        n = ints.shape[1]
        self.n = n
        low, _, _ = _ranks(n, _BRIGHT_PERCENTILE)
        self.count = min(n, max(n - low, _air_top_count(n)))
        top = np.partition(ints, n - self.count, axis=1)[:, n - self.count:]
        top.sort(axis=1)
        self.values = _to_16bit(top, bits)

    def replace(self, rows: npt.NDArray[np.intp], stats: FloatArray) -> None:
        """New bright ends for ``rows`` of ``stats`` (after they were repaired)."""
        if rows.size:
            self.values[rows] = np.sort(stats[rows], axis=1)[:, self.n - self.count:]

    def percentile(self, q: float) -> FloatArray:
        low, high, gamma = _ranks(self.n, q)
        base = self.n - self.count
        return _lerp(self.values[:, low - base], self.values[:, high - base], gamma)


def _air_top_count(n: int) -> int:
    return max(4, n // 400)


def _neighbour_median(values: npt.NDArray[np.floating[Any]], radius: int) -> FloatArray:
    """Median of each row's neighbours within ``radius`` (the row itself excluded, the window
    truncated at the edges): what ``np.nanmedian`` gives over NaN-padded windows, from one sort
    of the small window array."""
    padded = np.pad(values.astype(np.float32), radius, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1).copy()
    windows[:, radius] = np.nan
    windows.sort(axis=1)  # NaN last
    counts = np.count_nonzero(~np.isnan(windows), axis=1)
    half = counts // 2
    low = np.take_along_axis(windows, np.where(counts % 2 == 1, half, np.maximum(half - 1, 0))[:, None], axis=1)
    high = np.take_along_axis(windows, half[:, None], axis=1)
    out: FloatArray = np.add(low[:, 0], high[:, 0])
    out /= np.float32(2.0)
    out[counts == 0] = np.nan
    return out


def _logs(stats: FloatArray) -> FloatArray:
    return np.asarray(np.log(np.maximum(stats, np.float32(1.0))), dtype=np.float32)


def _defect_rows(ints: RawArray, stats: FloatArray, tops: _RowTops, bits: int,
                 ) -> tuple[list[int], list[int], list[int]]:
    """(dead, stuck, noisy) rows of a column-subsampled plane (``ints`` raw, ``stats`` the same
    on the 16-bit scale)."""
    span = (ints.max(axis=1).astype(np.float32) - ints.min(axis=1)) * np.float32(256.0 if bits == 8 else 1.0)
    constant = span <= 1.0
    bright = tops.percentile(_BRIGHT_PERCENTILE)
    dim = bright < _DIM_RATIO * _neighbour_median(bright, 3)
    last = len(stats) - 1
    for r in np.flatnonzero(dim & ~constant):
        row = _logs(stats[r])
        around = (_logs(stats[max(int(r) - 1, 0)]) + _logs(stats[min(int(r) + 1, last)])) / 2
        if np.std(around) > 1e-3 and np.std(row) > 1e-3 and np.corrcoef(row, around)[0, 1] > _DEAD_CORRELATION:
            dim[r] = False  # structure seen by its neighbours too: covered, not dead
    # Noise is judged where the row sees air only: structure crossing a row (the roof line, the
    # floor) varies from pulse to pulse as well, but not in the air before and after the vehicle.
    # Pulses out of air get NaN, so every step touching one is NaN, then +inf: it sorts after the
    # rest (and numpy sorts +inf faster than NaN).
    in_air = stats > 0.8 * np.float32(np.percentile(bright, 90))
    logs = np.full(stats.shape, np.nan, dtype=np.float32)
    np.log(stats, out=logs, where=in_air)
    diff = np.subtract(logs[:, 1:], logs[:, :-1])
    np.abs(diff, out=diff)
    np.fmin(diff, np.float32(np.inf), out=diff)
    diff.sort(axis=1)
    counts = np.count_nonzero(in_air[:, 1:] & in_air[:, :-1], axis=1)
    jitter = np.take_along_axis(diff, (counts // 2)[:, None], axis=1)[:, 0]
    jitter[counts < 16] = np.nan
    valid = np.isfinite(jitter)
    ref = _neighbour_median(np.where(valid, jitter, np.float32(np.nanmedian(jitter) if valid.any() else 0.0)), 4)
    noisy = valid & (jitter > _NOISY_RATIO * np.maximum(ref, _NOISE_FLOOR)) & ~constant & ~dim
    dead = [int(r) for r in np.flatnonzero((constant & (bright < 0.02 * _FULL)) | (dim & ~constant))]
    stuck = [int(r) for r in np.flatnonzero(constant & (bright >= 0.02 * _FULL))]
    return dead, stuck, [int(r) for r in np.flatnonzero(noisy)]


Repair = tuple[int, int, int, np.float32]
"""A repaired row: ``(row, above, below, w)``, the row becomes ``above * (1 - w) + below * w``."""


def _repairs(bad: npt.NDArray[np.bool_]) -> list[Repair]:
    """Linear interpolation of every ``bad`` row between the nearest good rows above and below
    (or a copy of the nearest one at the edges)."""
    good = np.flatnonzero(~bad)
    out: list[Repair] = []
    if good.size == 0:
        return out
    for r in np.flatnonzero(bad):
        k = int(np.searchsorted(good, r))
        if k in (0, good.size):
            nearest = int(good[0] if k == 0 else good[-1])
            out.append((int(r), nearest, nearest, np.float32(0.0)))
        else:
            a, b = int(good[k - 1]), int(good[k])
            out.append((int(r), a, b, np.float32((r - a) / (b - a))))
    return out


def _interpolated(above: FloatArray, below: FloatArray, w: np.float32) -> FloatArray:
    return np.asarray(above * (1 - w) + below * w, dtype=np.float32)


def _interpolate_rows(plane: FloatArray, bad: npt.NDArray[np.bool_]) -> None:
    """Replace the ``bad`` rows of ``plane`` in place (see `_repairs`)."""
    for r, a, b, w in _repairs(bad):
        plane[r] = plane[a] if a == b else _interpolated(plane[a], plane[b], w)


def _row_air(stats: FloatArray, tops: _RowTops) -> FloatArray:
    """Per-row air level: the median of each row's brightest 0.25 % of pulses (at least 4), a few
    centimetres of air before or after the vehicle are enough; then, to remove the upward bias
    of picking the brightest noisy values, the mean of every pulse of the row within 10 % of it."""
    k = _air_top_count(tops.n)
    top = tops.values[:, tops.count - k:]
    half = k // 2
    first = top[:, half] if k % 2 else (top[:, half - 1] + top[:, half]) / np.float32(2.0)
    near = stats > 0.9 * first[:, None]
    mean = np.multiply(stats, near).sum(axis=1) / np.maximum(np.count_nonzero(near, axis=1), 1)
    return np.asarray(mean, dtype=np.float32)


def _dark_estimate(stats: FloatArray, cap: float) -> float:
    """``min(np.percentile(stats, 0.1), cap)``. Only the values below the cap can matter, and
    they are few (the darkest pixels of the scan): they are partitioned, not the whole plane."""
    n = stats.size
    low, high, gamma = _ranks(n, _DARK_PERCENTILE)
    # The smallest float32 at or above the cap: a float32 pixel is below it iff it is below the cap.
    cap32 = np.float32(cap)
    if float(cap32) < cap:
        cap32 = np.nextafter(cap32, np.float32(np.inf))
    below = stats[stats < cap32]
    if below.size <= low:
        return cap  # the percentile is at or above the cap
    if below.size > high:
        part = np.partition(below, (low, high))
        lo_v, hi_v = part[low:low + 1], part[high:high + 1]
    else:  # the upper neighbour is the smallest value at or above the cap
        lo_v = np.asarray([below.max()], dtype=np.float32)
        hi_v = np.asarray([stats[stats >= cap32].min()], dtype=np.float32)
    return min(float(_lerp(lo_v, hi_v, gamma)[0]), cap)


@dataclass(frozen=True)
class RowCorrection:
    """How one channel's raw pixels become transmission: bit depth, repaired rows, dark offset
    and per-row flat field, found from the channel's own statistics (`row_correction`)."""

    bits: int
    dark: float
    scale: FloatArray
    """``1 / (air_row - dark)`` per detector row."""
    repairs: tuple[Repair, ...] = ()

    def _row(self, raw: RawArray, r: int) -> FloatArray:
        return _to_16bit(raw[r], self.bits)

    def transmission(self, raw: RawArray, r0: int, r1: int, out: FloatArray | None = None) -> FloatArray:
        """``T`` of rows ``r0:r1`` of the raw plane ``raw``, floored at `T_FLOOR` (into ``out``,
        ``(r1 - r0, columns)`` float32, when given)."""
        block = out if out is not None else np.empty((r1 - r0, raw.shape[1]), dtype=np.float32)
        dark = np.float32(self.dark)
        if self.bits == 8:
            np.copyto(block, raw[r0:r1], casting="unsafe")
            block *= np.float32(256.0)
            block += np.float32(128.0)
            block -= dark
        else:  # converted and offset in one pass, in float32 (the values numpy gives; a 1-element
            # float64 array is OpenCV's scalar operand)
            cv2.subtract(raw[r0:r1], np.array([dark], dtype=np.float64), dst=block, dtype=cv2.CV_32F)
        for r, a, b, w in self.repairs:
            if r0 <= r < r1:
                row = self._row(raw, a) if a == b else _interpolated(self._row(raw, a), self._row(raw, b), w)
                np.subtract(row, dark, out=block[r - r0])
        block *= self.scale[r0:r1, None]
        np.maximum(block, np.float32(T_FLOOR), out=block)
        return block


def row_correction(scan: Scan, channel: int, report: ConditioningReport) -> RowCorrection:
    """Find the defective rows, the dark offset and the flat field of one channel (into
    ``report``) and return the correction that turns its pixels into transmission."""
    raw = scan.pixels[channel]
    rows, cols = raw.shape
    report.rows = rows
    step = max(1, cols // _STATS_COLUMNS)
    ints = np.ascontiguousarray(raw[:, ::step])
    stats = _to_16bit(ints, scan.bits)
    tops = _RowTops(ints, scan.bits)
    dead, stuck, noisy = _defect_rows(ints, stats, tops, scan.bits) if rows >= 8 else ([], [], [])
    report.dead_rows += dead
    report.stuck_rows += stuck
    report.noisy_rows += noisy
    bad = np.zeros(rows, dtype=bool)
    bad[dead + stuck + noisy] = True
    repairs = _repairs(bad) if bad.any() else []
    if repairs:
        for r, a, b, w in repairs:
            stats[r] = stats[a] if a == b else _interpolated(stats[a], stats[b], w)
        tops.replace(np.flatnonzero(bad), stats)
    air = _row_air(stats, tops)
    level = float(np.percentile(air, 90))
    dark_meta = scan.meta.get("dark")
    if isinstance(dark_meta, list) and len(dark_meta) > channel and isinstance(dark_meta[channel], (int, float)):
        dark = float(dark_meta[channel]) * (256.0 if scan.bits == 8 else 1.0)
    else:
        dark = _dark_estimate(stats, _DARK_CAP * level)
    dark = max(dark, 0.0)
    covered = air < _COVERED_RATIO * level
    report.covered_rows = max(report.covered_rows, int(covered.sum()))
    if covered.mean() > 0.5:
        report.flat_field = "global"
        air = np.full(rows, level, dtype=np.float32)
    elif covered.any():
        _interpolate_rows(air[:, None], covered)
    report.air_fraction.append(level / _FULL)
    report.dark.append(dark)
    scale = (1.0 / np.maximum(air - dark, 1.0)).astype(np.float32)
    return RowCorrection(bits=scan.bits, dark=dark, scale=scale, repairs=tuple(repairs))


def condition_channel(scan: Scan, channel: int, report: ConditioningReport) -> FloatArray:
    """Transmission ``T`` of one channel at the scan's own resolution, rows repaired."""
    raw = scan.pixels[channel]
    return row_correction(scan, channel, report).transmission(raw, 0, raw.shape[0])
