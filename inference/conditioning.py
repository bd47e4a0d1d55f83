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

Resampling to the model grid and ``-log T`` follow in `inference.preprocess`. The
`ConditioningReport` says what was found and repaired; the review result carries it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.scan import Scan

__all__ = ["T_FLOOR", "ConditioningReport", "condition_channel"]

T_FLOOR = 1e-4  # attenuation at most ln(1e4) = 9.2: beyond that a MeV scanner sees only noise
_FULL = 65535.0
_STATS_COLUMNS = 1024
_DIM_RATIO = 0.5
_DEAD_CORRELATION = 0.3
_NOISY_RATIO = 4.0
_COVERED_RATIO = 0.8
_NOISE_FLOOR = 0.004  # about one 8-bit step at the air level, in ln units
_DARK_CAP = 0.015

FloatArray = npt.NDArray[np.float32]


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


def _to_16bit(scan: Scan, channel: int) -> FloatArray:
    plane = scan.pixels[channel].astype(np.float32)
    if scan.bits == 8:
        plane *= np.float32(256.0)
        plane += np.float32(128.0)
    return np.asarray(plane, dtype=np.float32)


def _neighbour_median(values: FloatArray, radius: int) -> FloatArray:
    """Median of each row's neighbours within ``radius`` (the row itself excluded, the window
    truncated at the edges)."""
    padded = np.pad(values.astype(np.float32), radius, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1).copy()
    windows[:, radius] = np.nan
    return np.asarray(np.nanmedian(windows, axis=1), dtype=np.float32)


def _defect_rows(stats: FloatArray) -> tuple[list[int], list[int], list[int]]:
    """(dead, stuck, noisy) rows of a column-subsampled plane."""
    span = stats.max(axis=1) - stats.min(axis=1)
    constant = span <= 1.0
    bright = np.percentile(stats, 99, axis=1).astype(np.float32)
    dim = bright < _DIM_RATIO * _neighbour_median(bright, 3)
    logs = np.log(np.maximum(stats, 1.0))
    for r in np.flatnonzero(dim & ~constant):
        above, below = logs[max(int(r) - 1, 0)], logs[min(int(r) + 1, len(logs) - 1)]
        ref = (above + below) / 2
        if np.std(ref) > 1e-3 and np.std(logs[r]) > 1e-3 and np.corrcoef(logs[r], ref)[0, 1] > _DEAD_CORRELATION:
            dim[r] = False  # structure seen by its neighbours too: covered, not dead
    # Noise is judged where the row sees air only: structure crossing a row (the roof line, the
    # floor) varies from pulse to pulse as well, but not in the air before and after the vehicle.
    diff = np.abs(np.diff(logs, axis=1))
    in_air = stats > 0.8 * np.float32(np.percentile(bright, 90))
    both = in_air[:, 1:] & in_air[:, :-1]
    diff[~both] = np.inf
    counts = both.sum(axis=1)
    k = np.maximum(counts // 2, 0)
    jitter = np.take_along_axis(np.sort(diff, axis=1), k[:, None], axis=1)[:, 0].astype(np.float32)
    jitter[counts < 16] = np.nan
    valid = np.isfinite(jitter)
    ref = _neighbour_median(np.where(valid, jitter, np.float32(np.nanmedian(jitter) if valid.any() else 0.0)), 4)
    noisy = valid & (jitter > _NOISY_RATIO * np.maximum(ref, _NOISE_FLOOR)) & ~constant & ~dim
    dead = [int(r) for r in np.flatnonzero((constant & (bright < 0.02 * _FULL)) | (dim & ~constant))]
    stuck = [int(r) for r in np.flatnonzero(constant & (bright >= 0.02 * _FULL))]
    return dead, stuck, [int(r) for r in np.flatnonzero(noisy)]


def _interpolate_rows(plane: FloatArray, bad: npt.NDArray[np.bool_]) -> None:
    """Replace the ``bad`` rows of ``plane`` in place by linear interpolation between the
    nearest good rows above and below (or the nearest one at the edges)."""
    good = np.flatnonzero(~bad)
    if good.size == 0:
        return
    for r in np.flatnonzero(bad):
        k = int(np.searchsorted(good, r))
        if k == 0:
            plane[r] = plane[good[0]]
        elif k == good.size:
            plane[r] = plane[good[-1]]
        else:
            a, b = good[k - 1], good[k]
            w = np.float32((r - a) / (b - a))
            plane[r] = plane[a] * (1 - w) + plane[b] * w


def _row_air(stats: FloatArray) -> FloatArray:
    """Per-row air level: the median of each row's brightest 0.25 % of pulses (at least 4), a few
    centimetres of air before or after the vehicle are enough; then, to remove the upward bias
    of picking the brightest noisy values, the mean of every pulse of the row within 10 % of it."""
    cols = stats.shape[1]
    k = max(4, cols // 400)
    top = np.partition(stats, cols - k, axis=1)[:, cols - k:]
    first = np.median(top, axis=1).astype(np.float32)
    near = stats > 0.9 * first[:, None]
    mean = (stats * near).sum(axis=1) / np.maximum(near.sum(axis=1), 1)
    return np.asarray(mean, dtype=np.float32)


def condition_channel(scan: Scan, channel: int, report: ConditioningReport) -> FloatArray:
    """Transmission ``T`` of one channel at the scan's own resolution, rows repaired."""
    plane = _to_16bit(scan, channel)
    rows, cols = plane.shape
    report.rows = rows
    step = max(1, cols // _STATS_COLUMNS)
    stats = np.ascontiguousarray(plane[:, ::step])
    dead, stuck, noisy = _defect_rows(stats) if rows >= 8 else ([], [], [])
    report.dead_rows += dead
    report.stuck_rows += stuck
    report.noisy_rows += noisy
    bad = np.zeros(rows, dtype=bool)
    bad[dead + stuck + noisy] = True
    if bad.any():
        _interpolate_rows(plane, bad)
        stats = np.ascontiguousarray(plane[:, ::step])
    air = _row_air(stats)
    level = float(np.percentile(air, 90))
    dark_meta = scan.meta.get("dark")
    if isinstance(dark_meta, list) and len(dark_meta) > channel and isinstance(dark_meta[channel], (int, float)):
        dark = float(dark_meta[channel]) * (256.0 if scan.bits == 8 else 1.0)
    else:
        dark = min(float(np.percentile(stats, 0.1)), _DARK_CAP * level)
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
    plane -= np.float32(dark)
    plane *= scale[:, None]
    np.maximum(plane, np.float32(T_FLOOR), out=plane)
    return plane
