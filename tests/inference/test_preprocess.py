"""Preprocessing: the fused runtime path equals the training path; geometry and tiling."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from inference.model_spec import InputSpec, QuantizationSpec
from inference.preprocess import (
    PreparedScan,
    normalize_scan,
    prepare_quantized,
    prepare_scan,
    quantize,
    tile_offsets,
)
from inference.scan import Scan
from inference.synthetic import generate_scan
from inference.training.geometry import Geometry

G = Geometry()
Q = QuantizationSpec(scale=0.0042, zero_point=-128)
INP = InputSpec(name="x", shape=(1, G.rows, G.tile_width, 2), dtype="int8", quantization=Q,
                column_mm=G.column_mm, channels=G.channels)


@pytest.mark.parametrize("length", [20, 40, 45])
def test_quantized_path_geometry(length: int) -> None:
    scan = generate_scan(71, length_ft=length, cargo="mixed", anomalies=("weapon",)).scan
    prepared = prepare_quantized(scan, INP, G.normalization(), G.overlap, G.stride)
    reference = prepare_scan(scan, INP, G.normalization(), G.overlap, G.stride)
    assert prepared.data.dtype == np.int8
    assert np.array_equal(prepared.data, quantize(reference.data, Q, "int8"))
    assert prepared.offsets == reference.offsets
    assert prepared.width == round(scan.columns * scan.pixel_mm / G.column_mm)
    assert prepared.report["channels"] == 2


def test_air_is_zero_attenuation_and_dense_is_high() -> None:
    scan = generate_scan(72, cargo="empty", anomalies=("dense_object",), clutter=False).scan
    data, width = normalize_scan(scan, INP, G.normalization())
    assert data.shape == (2, G.rows, width)
    assert np.median(data[0, :8]) < 0.02  # air above the roof
    assert data[0].max() > 0.5  # the lead/steel block
    assert (data >= -1e-6).all() or (data[1] < 0).any()  # difference channel may be negative


def test_8_bit_scans_follow_the_same_path() -> None:
    scan = generate_scan(73, cargo="bags").scan
    eight = type(scan)(pixels=(scan.pixels >> 8).astype(np.uint8), scan_id="e", bits=8, pixel_mm=scan.pixel_mm)
    a, _ = normalize_scan(scan, INP, G.normalization())
    b, _ = normalize_scan(eight, INP, G.normalization())
    assert np.abs(a[0] - b[0]).mean() < 0.02


def test_tile_offsets_cover_and_align() -> None:
    assert tile_offsets(256, 256, 32, 8) == (0,)
    for width in (264, 512, 1008, 1104, 4096):
        offsets = tile_offsets(width, 256, 32, 8)
        assert offsets[0] == 0
        assert offsets[-1] == width - 256
        assert all(o % 8 == 0 for o in offsets)
        assert all(b - a <= 256 - 32 + 8 for a, b in itertools.pairwise(offsets))


@pytest.mark.parametrize("prepare", [prepare_quantized, prepare_scan])
def test_a_scan_already_at_the_model_pitch_is_left_untouched(prepare: Callable[..., PreparedScan]) -> None:
    # 256 rows at 12.5 mm per column: nothing to resample, so the resampled plane would be the
    # scan's own pixels; preparing must still never write into them.
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 65535, size=(2, G.rows, 600), dtype=np.uint16)
    scan = Scan(pixels=pixels.copy(), scan_id="AT-PITCH", bits=16, pixel_mm=G.column_mm)
    prepared = prepare(scan, INP, G.normalization(), G.overlap, G.stride)
    assert prepared.width == 600
    assert np.array_equal(scan.pixels, pixels)
