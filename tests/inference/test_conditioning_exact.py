"""The fast conditioning computes what its plain formulation computes, bit for bit.

`inference.conditioning` takes its order statistics by partitioning integer pixels and converts,
corrects and resamples a scan band by band. The reference here is the plain formulation
(`np.percentile` and `np.nanmedian` over float copies, the whole float plane corrected, then
resampled): the model input must not differ by a single bit, so the shipped model's scores are
the same as with the plain formulation.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from inference import conditioning as cond
from inference.conditioning import ConditioningReport
from inference.preprocess import prepare_scan
from inference.scan import Scan
from inference.synthetic import generate_scan, nominal_world, sample_world
from inference.training.geometry import Geometry

G = Geometry()
INP = G.input_spec()
NORM = G.normalization()
F32 = npt.NDArray[np.float32]


def _nb_median(values: F32, radius: int) -> F32:
    padded = np.pad(values.astype(np.float32), radius, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1).copy()
    windows[:, radius] = np.nan
    return np.asarray(np.nanmedian(windows, axis=1), dtype=np.float32)


def _defects(stats: F32) -> tuple[list[int], list[int], list[int]]:
    span = stats.max(axis=1) - stats.min(axis=1)
    constant = span <= 1.0
    bright = np.percentile(stats, 99, axis=1).astype(np.float32)
    dim = bright < 0.5 * _nb_median(bright, 3)
    logs = np.log(np.maximum(stats, 1.0))
    for r in (int(v) for v in np.flatnonzero(dim & ~constant)):
        ref = (logs[max(r - 1, 0)] + logs[min(r + 1, len(logs) - 1)]) / 2
        if np.std(ref) > 1e-3 and np.std(logs[r]) > 1e-3 and np.corrcoef(logs[r], ref)[0, 1] > 0.3:
            dim[r] = False
    diff = np.abs(np.diff(logs, axis=1))
    in_air = stats > 0.8 * np.float32(np.percentile(bright, 90))
    both = in_air[:, 1:] & in_air[:, :-1]
    diff[~both] = np.inf
    counts = both.sum(axis=1)
    jitter = np.take_along_axis(np.sort(diff, axis=1), (counts // 2)[:, None], axis=1)[:, 0].astype(np.float32)
    jitter[counts < 16] = np.nan
    valid = np.isfinite(jitter)
    ref = _nb_median(np.where(valid, jitter, np.float32(np.nanmedian(jitter) if valid.any() else 0.0)), 4)
    noisy = valid & (jitter > 4.0 * np.maximum(ref, 0.004)) & ~constant & ~dim
    dead = np.flatnonzero((constant & (bright < 0.02 * 65535.0)) | (dim & ~constant))
    stuck = np.flatnonzero(constant & (bright >= 0.02 * 65535.0))
    return [int(r) for r in dead], [int(r) for r in stuck], [int(r) for r in np.flatnonzero(noisy)]


def _interpolate(plane: F32, bad: npt.NDArray[np.bool_]) -> None:
    good = np.flatnonzero(~bad)
    for r in np.flatnonzero(bad):
        k = int(np.searchsorted(good, r))
        if k in (0, good.size):
            plane[r] = plane[good[0] if k == 0 else good[-1]]
        else:
            a, b = good[k - 1], good[k]
            w = np.float32((r - a) / (b - a))
            plane[r] = plane[a] * (1 - w) + plane[b] * w


def _transmission(scan: Scan, channel: int) -> tuple[F32, dict[str, Any]]:
    plane = scan.pixels[channel].astype(np.float32)
    if scan.bits == 8:
        plane *= np.float32(256.0)
        plane += np.float32(128.0)
    rows, cols = plane.shape
    step = max(1, cols // 1024)
    dead, stuck, noisy = _defects(np.ascontiguousarray(plane[:, ::step]))
    bad = np.zeros(rows, dtype=bool)
    bad[dead + stuck + noisy] = True
    _interpolate(plane, bad)
    stats = np.ascontiguousarray(plane[:, ::step])
    k = max(4, stats.shape[1] // 400)
    first = np.median(np.partition(stats, stats.shape[1] - k, axis=1)[:, stats.shape[1] - k:], axis=1)
    near = stats > 0.9 * first.astype(np.float32)[:, None]
    air = np.asarray((stats * near).sum(axis=1) / np.maximum(near.sum(axis=1), 1), dtype=np.float32)
    level = float(np.percentile(air, 90))
    meta = scan.meta.get("dark")
    if isinstance(meta, list):
        dark = float(meta[channel]) * (256.0 if scan.bits == 8 else 1.0)
    else:
        dark = min(float(np.percentile(stats, 0.1)), 0.015 * level)
    covered = air < 0.8 * level
    if covered.mean() > 0.5:
        air = np.full(rows, level, dtype=np.float32)
    elif covered.any():
        _interpolate(air[:, None], covered)
    plane -= np.float32(dark)
    plane *= (1.0 / np.maximum(air - dark, 1.0)).astype(np.float32)[:, None]
    np.maximum(plane, np.float32(cond.T_FLOOR), out=plane)
    return plane, {"dead": dead, "stuck": stuck, "noisy": noisy, "dark": dark, "covered": int(covered.sum())}


def _downscale(plane: F32, out_w: int, out_h: int) -> F32:
    x: npt.NDArray[Any] = plane
    while x.shape[1] / out_w >= 2.0 or x.shape[0] / out_h >= 2.0:
        hx, hy = x.shape[1] / out_w >= 2.0, x.shape[0] / out_h >= 2.0
        w, h = x.shape[1] // (2 if hx else 1), x.shape[0] // (2 if hy else 1)
        x = cv2.resize(x[: h * (2 if hy else 1), : w * (2 if hx else 1)], (w, h), interpolation=cv2.INTER_LINEAR)
    if x.shape != (out_h, out_w):
        x = cv2.resize(x, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(x, dtype=np.float32)


def _with(scan: Scan, pixels: npt.NDArray[Any], bits: int | None = None, **meta: Any) -> Scan:
    return Scan(pixels=np.ascontiguousarray(pixels), scan_id="x", bits=bits or scan.bits, pixel_mm=scan.pixel_mm,
                meta={**scan.meta, **meta})


def _scans() -> list[tuple[str, Scan]]:
    big = generate_scan(4242, cargo="mixed", anomalies=("weapon",), world=nominal_world(rows=1024, col_mm=3.5)).scan
    ref = generate_scan(5, cargo="mixed", anomalies=("weapon",)).scan
    rng = np.random.default_rng(3)
    noisy = big.pixels.astype(np.float64)
    noisy[:, 77] += rng.normal(0, 3000, size=(2, big.columns))
    dead8 = (big.pixels >> 8).astype(np.uint8)
    dead8[:, [0, 300, 301, 1023]] = 0
    stuck = ref.pixels.copy()
    stuck[:, [40, 101]] = 65535
    out = [
        ("1024 rows, 3.5 mm", big),
        ("8 bit, dead rows at both edges", _with(big, dead8, bits=8)),
        ("noisy row", _with(big, np.clip(noisy, 0, 65535).astype(np.uint16))),
        ("stuck rows, dark told", _with(ref, stuck, dark=[30.0, 30.0])),
        ("cropped: rows covered all along", _with(ref, ref.pixels[:, :, 80:-80])),
        ("odd rows", _with(ref, ref.pixels[:, :201])),
        ("128 rows", generate_scan(6, world=nominal_world(rows=128)).scan),
    ]
    rng = np.random.default_rng(11)
    out += [(f"randomized world {i}", generate_scan(60 + i, world=sample_world(rng)).scan) for i in range(6)]
    return out


@pytest.mark.parametrize(("name", "scan"), _scans(), ids=lambda v: v if isinstance(v, str) else "")
def test_prepared_scan_is_the_plain_formulation_bit_for_bit(name: str, scan: Scan) -> None:
    prepared = prepare_scan(scan, INP, NORM, G.overlap, G.stride)
    width = prepared.width
    att = []
    found: dict[str, set[int]] = {"dead": set(), "stuck": set(), "noisy": set()}
    covered = 0
    for c in range(scan.channels):
        trans, report = _transmission(scan, c)
        small = _downscale(trans, width, INP.rows)
        np.maximum(small, np.float32(cond.T_FLOOR), out=small)
        a = np.asarray(cv2.log(small), dtype=np.float32)
        att.append(np.maximum(-a, 0.0))
        assert round(report["dark"], 1) == prepared.report["dark"][c]
        for kind in found:
            found[kind] |= set(report[kind])
        covered = max(covered, report["covered"])
    for kind, rows in found.items():
        assert sorted(rows) == prepared.report[f"{kind}_rows"], (name, kind)
    assert covered == prepared.report["covered_rows"]
    expected = np.zeros_like(prepared.data[:, :width])
    expected[..., 0] = att[0] / np.float32(NORM.scale[0])
    if scan.channels > 1:
        expected[..., 1] = (att[1] - att[0]) * np.float32(1.0 / NORM.scale[1])
    assert np.array_equal(prepared.data[:, :width], expected), (name, np.abs(prepared.data[:, :width] - expected).max())
    assert not prepared.data[:, width:].any()


def test_the_correction_is_the_same_band_by_band() -> None:
    scan = generate_scan(8, world=nominal_world(rows=384, bits=8, dead_rows=2, noisy_rows=1)).scan
    correction = cond.row_correction(scan, 0, ConditioningReport())
    raw = scan.pixels[0]
    whole = correction.transmission(raw, 0, scan.rows)
    bands = np.concatenate([correction.transmission(raw, r0, min(r0 + 37, scan.rows))
                            for r0 in range(0, scan.rows, 37)])
    assert correction.repairs
    assert np.array_equal(whole, bands)
    assert np.array_equal(whole, cond.condition_channel(scan, 0, ConditioningReport()))


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("cols", [16, 17, 400, 1196])
def test_row_order_statistics_are_numpys(bits: int, cols: int) -> None:
    rng = np.random.default_rng(cols + bits)
    ints: npt.NDArray[np.unsignedinteger[Any]] = rng.integers(0, 1 << bits, size=(64, cols)).astype(
        np.uint8 if bits == 8 else np.uint16)
    ints[5] = ints[5, 0]  # a constant row
    ints[6, : cols // 2] = 7  # many ties
    stats = cond._to_16bit(ints, bits)
    tops = cond._RowTops(ints, bits)
    assert np.array_equal(tops.percentile(99), np.percentile(stats, 99, axis=1).astype(np.float32))
    for level in np.unique(stats)[::max(1, stats.size // 50)]:
        for cap in (float(level), float(level) - 0.5, float(level) + 1e-3):
            expected = min(float(np.percentile(stats, 0.1)), cap)
            assert cond._dark_estimate(stats, cap) == expected, (cap, expected)

