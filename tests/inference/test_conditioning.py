"""Scan conditioning: machine differences and detector defects are removed before the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference.conditioning import ConditioningReport, condition_channel
from inference.preprocess import prepare_scan
from inference.scan import Scan
from inference.synthetic import generate_scan, nominal_world
from inference.training.geometry import Geometry

G = Geometry()
INP = G.input_spec()
NORM = G.normalization()


def _prepare(scan: Scan) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
    p = prepare_scan(scan, INP, NORM, G.overlap, G.stride)
    return p.data[:, :p.width], p.report


def _with(scan: Scan, pixels: np.ndarray[Any, Any], **meta: Any) -> Scan:
    return Scan(pixels=np.ascontiguousarray(pixels), scan_id=scan.scan_id, bits=scan.bits, pixel_mm=scan.pixel_mm,
                meta={**scan.meta, **meta})


@pytest.fixture(scope="module")
def reference() -> tuple[Scan, np.ndarray[Any, Any], dict[str, Any]]:
    scan = generate_scan(5, cargo="mixed", anomalies=("weapon",)).scan
    data, report = _prepare(scan)
    return scan, data, report


def test_a_clean_scan_needs_no_repair(reference: tuple[Scan, Any, dict[str, Any]]) -> None:
    _, _, report = reference
    assert report["dead_rows"] == report["stuck_rows"] == report["noisy_rows"] == []
    assert report["flat_field"] == "per_row"
    assert report["air_fraction"][0] == pytest.approx(0.9, abs=0.03)
    assert 0 <= report["dark"][0] < 100
    assert 0 < report["noise"] < 0.02


@pytest.mark.parametrize("value", [0, 65535, 30000])
def test_dead_and_stuck_rows_are_found_and_repaired(reference: tuple[Scan, Any, Any], value: int) -> None:
    scan, clean, _ = reference
    rows = [40, 101, 180]
    pixels = scan.pixels.copy()
    pixels[:, rows, :] = value
    data, report = _prepare(_with(scan, pixels))
    found = report["dead_rows"] if value == 0 else report["stuck_rows"]
    assert found == rows
    # Interpolated from the neighbours: the model input is as good as the intact scan's.
    assert np.abs(data - clean).mean() < 1e-3
    assert np.percentile(np.abs(data - clean), 99.9) < 0.1


def test_noisy_rows_are_found_and_repaired(reference: tuple[Scan, Any, Any]) -> None:
    scan, clean, _ = reference
    rng = np.random.default_rng(1)
    pixels = scan.pixels.astype(np.float64)
    pixels[:, 77, :] += rng.normal(0, 3000, size=(2, scan.columns))
    data, report = _prepare(_with(scan, np.clip(pixels, 0, 65535).astype(np.uint16)))
    assert report["noisy_rows"] == [77]
    assert np.abs(data - clean).mean() < 1e-3


def test_gain_air_level_and_low_energy_scale_are_normalized_away(reference: tuple[Scan, Any, Any]) -> None:
    scan, clean, _ = reference
    rng = np.random.default_rng(2)
    px = scan.pixels.astype(np.float64)
    for pixels in (px * (1 + rng.normal(0, 0.04, size=(2, scan.rows, 1))),  # per-row gain, 4 %
                   px * 0.6,                                                  # dimmer source
                   px * np.array([1.0, 0.85])[:, None, None]):                # low channel x0.85
        data, report = _prepare(_with(scan, np.clip(pixels, 0, 65535).astype(np.uint16)))
        assert np.abs(data - clean).mean() < 2e-3
        assert report["noisy_rows"] == []


def test_dark_offset_from_metadata_or_estimated(reference: tuple[Scan, Any, Any]) -> None:
    scan, clean, _ = reference
    offset = scan.pixels.astype(np.float64) + 600.0
    shifted = _with(scan, np.clip(offset, 0, 65535).astype(np.uint16))
    estimated, report = _prepare(shifted)
    assert report["dark"][0] == pytest.approx(620, abs=40)
    told, report = _prepare(_with(shifted.__class__(
        pixels=shifted.pixels, scan_id="d", bits=16, pixel_mm=scan.pixel_mm), shifted.pixels, dark=[625.0, 625.0]))
    assert report["dark"] == [625.0, 625.0]
    for data in (estimated, told):
        assert np.abs(data - clean).mean() < 5e-3


def test_single_energy_scans_have_a_zero_material_channel(reference: tuple[Scan, Any, Any]) -> None:
    scan, clean, _ = reference
    data, report = _prepare(_with(scan, scan.pixels[:1]))
    assert report["channels"] == 1
    assert np.array_equal(data[..., 0], clean[..., 0])
    assert not data[..., 1].any()


def test_other_detectors_look_alike_on_the_model_grid() -> None:
    """The same load seen by 128, 256 and 1024 rows, 16 or 8 bits: close on the model grid."""
    base: dict[str, Any] = {"cargo": "drums", "clutter": False}
    ref, _ = _prepare(generate_scan(9, **base).scan)
    for world in (nominal_world(rows=128), nominal_world(rows=1024, col_mm=3.5), nominal_world(bits=8)):
        data, _ = _prepare(generate_scan(9, world=world, **base).scan)
        width = min(data.shape[1], ref.shape[1])
        assert np.median(np.abs(data[:, :width, 0] - ref[:, :width, 0])) < 0.02


def test_rows_covered_everywhere_take_their_neighbours_air() -> None:
    # Cropped to the box: no air before or after, the chassis beams' rows never see air. Their
    # flat field comes from the neighbouring rows, so the beams stay dark instead of becoming air.
    scan = generate_scan(10, cargo="cartons").scan
    cropped = Scan(pixels=np.ascontiguousarray(scan.pixels[:, :, 80:-80]), scan_id="c", bits=16,
                   pixel_mm=scan.pixel_mm)
    report = ConditioningReport()
    trans = condition_channel(cropped, 0, report)
    assert report.covered_rows > 0
    assert report.flat_field == "per_row"
    dark_rows = np.argsort(np.median(cropped.pixels[0], axis=1))[:6]  # the beams' flanges
    assert np.median(trans[dark_rows], axis=1).min() < 0.1
    assert np.median(trans[5]) == pytest.approx(1.0, abs=0.02)  # air above the box
