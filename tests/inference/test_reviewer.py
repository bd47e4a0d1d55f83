"""In-process review with the shipped model: verdicts on known scans, contract, errors, preview."""

from __future__ import annotations

from typing import Any, cast

import cv2
import numpy as np
import pytest

from inference.errors import ScanFormatError
from inference.preview import render_image_png, render_preview
from inference.result import ReviewResult
from inference.reviewer import Reviewer
from inference.scan import Scan
from inference.synthetic import ANOMALY_CLASSES, generate_scenario
from tests.support.inference import overlaps, reviewer, scan_with, shipped_model, synthetic, to_8bit

__all__ = ["reviewer", "shipped_model"]

# Known scans: objects clearly visible to a human reviewer (empty box, or concealed in cartons or
# drums), which the model must flag on the object itself.
KNOWN_ANOMALIES = [(301, "empty"), (302, "cartons"), (303, "drums"), (304, "cartons")]
KNOWN_CLEAN = [(311, "cartons"), (312, "bags"), (313, "bulk"), (314, "machinery"), (315, "drums"),
               (316, "vehicles"), (317, "mixed")]


@pytest.mark.parametrize("label", ANOMALY_CLASSES)
def test_known_anomalies_are_suspect_with_a_region_on_them(reviewer: Reviewer, label: str) -> None:
    right_label = 0
    for seed, host in KNOWN_ANOMALIES:
        # Concealed vehicles are generated in empty boxes or among cartons only.
        cargo = "cartons" if label == "vehicle" and host not in ("cartons", "empty") else host
        syn = synthetic(seed, cargo=cargo, anomalies=(label,))
        result = reviewer.review(syn.scan)
        assert result.verdict == "suspect", (label, seed, cargo, result.score)
        truth = syn.regions[0]
        hits = [r for r in result.regions if overlaps((r.x, r.y, r.w, r.h), (truth.x, truth.y, truth.w, truth.h))]
        assert hits, (label, seed, cargo, result.regions, truth)
        right_label += hits[0].label == label
    # The class label is secondary to the detection (about 97 % right on the test set).
    assert right_label >= len(KNOWN_ANOMALIES) - 1


def test_random_scans_statistics(reviewer: Reviewer) -> None:
    """A small sample of the evaluation mixture: catches a broken model or pipeline, not a 1 % drift."""
    detected = dict.fromkeys(ANOMALY_CLASSES, 0)
    for label in ANOMALY_CLASSES:
        for seed in range(400, 416):
            syn = generate_scenario(seed, label)
            result = reviewer.review(syn.scan)
            truth = next(r for r in syn.regions if r.label == label)
            if result.verdict == "suspect" and any(
                    overlaps((r.x, r.y, r.w, r.h), (truth.x, truth.y, truth.w, truth.h)) for r in result.regions):
                detected[label] += 1
    assert all(n >= 12 for n in detected.values()), detected  # >= 75 % of 16 each
    false_alarms = sum(reviewer.review(generate_scenario(seed, "clean").scan).verdict == "suspect"
                       for seed in range(500, 540))
    assert false_alarms <= 3, false_alarms


@pytest.mark.parametrize(("seed", "cargo"), KNOWN_CLEAN)
def test_known_clean_cargo_is_clear(reviewer: Reviewer, seed: int, cargo: str) -> None:
    result = reviewer.review(synthetic(seed, cargo=cargo, clutter=False).scan)
    assert result.verdict == "clear", (seed, cargo, result.score, result.regions)
    assert result.regions == ()
    assert result.not_empty is True


def test_declared_empty_verification(reviewer: Reviewer) -> None:
    for seed in (321, 322, 323):
        empty = reviewer.review(synthetic(seed, cargo="empty", declared="empty").scan)
        assert empty.verdict == "clear", empty
        assert empty.not_empty is False, empty
        assert not empty.declared_empty_violation
    for seed, cargo in ((324, "cartons"), (325, "drums"), (326, "machinery")):
        loaded = reviewer.review(synthetic(seed, cargo=cargo, declared="empty").scan)
        assert loaded.verdict == "suspect", loaded
        assert loaded.declared_empty_violation, loaded
        assert loaded.score == pytest.approx(max(loaded.anomaly_score or 0, loaded.not_empty_score or 0))
        assert any(r.label == "not_empty" for r in loaded.regions)
        # The same scan declared as general cargo is fine.
        general = reviewer.review(synthetic(seed, cargo=cargo, declared="empty").scan, declared="general")
        assert general.verdict == "clear"
        assert not general.declared_empty_violation


def test_result_fields_and_contract(reviewer: Reviewer) -> None:
    syn = synthetic(331, cargo="cartons", anomalies=("weapon",))
    result = reviewer.review(syn.scan)
    contract = result.to_contract()
    assert set(contract) == {"model", "version", "score", "verdict", "regions", "latency_ms"}
    assert contract["model"] == reviewer.model_info.name
    assert contract["version"] == reviewer.model_info.version
    assert contract["verdict"] in ("clear", "suspect")
    assert 0.0 <= contract["score"] <= 1.0
    assert contract["latency_ms"] > 0
    for region in contract["regions"]:
        assert set(region) == {"x", "y", "w", "h", "score", "label"}
        assert all(isinstance(region[k], int) for k in ("x", "y", "w", "h"))
        assert region["x"] >= 0
        assert region["x"] + region["w"] <= syn.scan.columns
        assert region["y"] >= 0
        assert region["y"] + region["h"] <= syn.scan.rows
        assert region["label"] in ANOMALY_CLASSES
    assert ReviewResult.from_dict(result.as_dict()).to_contract() == contract
    assert result.error is None
    assert result.scan_id == syn.scan.scan_id
    unavailable = ReviewResult.unavailable("boom", model="m", version="1").to_contract()
    assert unavailable == {"model": "m", "version": "1", "score": 0.0, "verdict": "unavailable", "regions": [],
                           "latency_ms": 0.0}


def test_threshold_overrides(shipped_model: object) -> None:
    syn = synthetic(301, cargo="cartons", anomalies=("dense_object",))
    strict = Reviewer(suspect_threshold=0.999, not_empty_threshold=0.999)
    result = strict.review(syn.scan)
    assert result.verdict == "clear" or (result.anomaly_score or 0) >= 0.999
    lenient = Reviewer(suspect_threshold=0.01)
    assert lenient.review(synthetic(311, cargo="cartons").scan).verdict == "suspect"
    with pytest.raises(ValueError):
        Reviewer(suspect_threshold=1.0)


def test_other_lengths_bit_depths_and_resolutions(reviewer: Reviewer) -> None:
    for kwargs in ({"length_ft": 20}, {"length_ft": 45}, {"rows": 512}, {"columns": 3000}):
        syn = synthetic(341, cargo="cartons", anomalies=("dense_object",), **kwargs)
        result = reviewer.review(syn.scan)
        assert result.verdict == "suspect", kwargs
    # 8-bit scans go through the same path (the model was trained on 16-bit scans only).
    eight = reviewer.review(to_8bit(synthetic(346, cargo="cartons", anomalies=("dense_object",)).scan))
    assert eight.verdict == "suspect"
    assert eight.regions[0].label == "dense_object"


def test_mis_shaped_scans_raise_clear_errors(reviewer: Reviewer) -> None:
    scan = synthetic(351, cargo="cartons").scan
    with pytest.raises(ScanFormatError, match="dual-energy"):
        reviewer.review(scan_with(scan, pixels=np.ascontiguousarray(scan.pixels[:1])))
    with pytest.raises(ScanFormatError, match="too small"):
        reviewer.review(scan_with(scan, pixels=np.ascontiguousarray(scan.pixels[:, :8, :])))
    with pytest.raises(ScanFormatError, match="pixel_mm"):
        reviewer.review(scan_with(scan, pixel_mm=1000.0))
    with pytest.raises(ScanFormatError):
        Scan(pixels=cast(Any, scan.pixels.astype(np.float32)), scan_id="x", bits=16, pixel_mm=5.0)
    with pytest.raises(ScanFormatError):
        Scan(pixels=scan.pixels[0], scan_id="x", bits=16, pixel_mm=5.0)


def test_saturated_and_black_scans_do_not_crash(reviewer: Reviewer) -> None:
    scan = synthetic(352, cargo="empty").scan
    for fill in (0, 65535):
        result = reviewer.review(scan_with(scan, pixels=np.full_like(scan.pixels, fill)))
        assert result.verdict in ("clear", "suspect")
        assert 0.0 <= (result.score or 0.0) <= 1.0


def test_preview_jpeg(reviewer: Reviewer) -> None:
    syn = synthetic(361, cargo="mixed", anomalies=("organic_mass", "dense_object"))
    result = reviewer.review(syn.scan)
    data = render_preview(syn.scan, result.regions, max_width=800)
    assert data[:2] == b"\xff\xd8"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] == 800
    assert img.shape[0] > 64
    # False colour: organic orange (red > blue) and metal blue (blue > red) both appear.
    b, r = img[..., 0].astype(int), img[..., 2].astype(int)
    assert ((r - b) > 60).mean() > 0.01
    assert ((b - r) > 60).mean() > 0.01
    # Regions given as contract dicts work as well, and a single-energy scan renders grey.
    grey = render_preview(scan_with(syn.scan, pixels=np.ascontiguousarray(syn.scan.pixels[:1])),
                          [r.as_dict() for r in result.regions])
    assert cv2.imdecode(np.frombuffer(grey, np.uint8), cv2.IMREAD_COLOR) is not None


def test_full_image_png_is_16_bit_channel_0() -> None:
    scan = synthetic(362, cargo="bags").scan
    img = cv2.imdecode(np.frombuffer(render_image_png(scan), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16
    assert np.array_equal(img, scan.pixels[0])
    small = to_8bit(scan)
    img8 = cv2.imdecode(np.frombuffer(render_image_png(small), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img8.dtype == np.uint16
    assert np.array_equal(img8, small.pixels[0].astype(np.uint16) * 257)
