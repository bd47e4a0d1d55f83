"""In-process review with the shipped model: verdicts on known scans, contract, errors, preview."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import cv2
import numpy as np
import pytest

from inference.errors import ScanFormatError
from inference.preview import render_image_png, render_preview
from inference.result import ReviewResult
from inference.reviewer import Reviewer, block_support
from inference.scan import Scan
from inference.synthetic import ANOMALY_CLASSES, generate_scenario
from inference.training.evaluate import logit, score_scan
from tests.support.inference import overlaps, reviewer, scan_with, shipped_model, synthetic, to_8bit

__all__ = ["reviewer", "shipped_model"]

# Known scans: objects clearly visible to a human reviewer (empty box, or concealed in cartons or
# drums), which the model must flag on the object itself.
KNOWN_ANOMALIES = [(301, "empty"), (302, "cartons"), (303, "drums"), (304, "cartons")]
KNOWN_CLEAN = [(311, "cartons"), (312, "bags"), (313, "bulk"), (314, "machinery"), (315, "drums"),
               (316, "vehicles"), (317, "mixed")]


def _object_score(reviewer: Reviewer, scan: Scan, truth: Any) -> float:
    """The model's highest anomaly probability on the object (its box widened by one cell)."""
    record = score_scan(reviewer, scan, [truth.as_dict()], source="test", cargo=None, not_empty_truth=None,
                        has_anomaly=True)
    return float(record.objects[0]["score"])


def _known(reviewer: Reviewer, label: str) -> tuple[int, int]:
    """(scans called suspect with a region on the object, of which the region names the class)."""
    suspect = right_label = 0
    for seed, host in KNOWN_ANOMALIES:
        # Concealed vehicles are generated in empty boxes or among cartons only.
        cargo = "cartons" if label == "vehicle" and host not in ("cartons", "empty") else host
        syn = synthetic(seed, cargo=cargo, anomalies=(label,))
        truth = syn.regions[0]
        # Every object ranks high on itself (90 % of the test objects score at least 0.5) ...
        assert _object_score(reviewer, syn.scan, truth) >= 0.8, (label, seed, cargo)
        result = reviewer.review(syn.scan)
        hits = [r for r in result.regions if overlaps((r.x, r.y, r.w, r.h), (truth.x, truth.y, truth.w, truth.h))]
        if result.verdict == "suspect" and hits:
            suspect += 1
            right_label += hits[0].label == label
    return suspect, right_label


@pytest.mark.parametrize("label", ANOMALY_CLASSES)
def test_known_anomalies_are_suspect_with_a_region_on_them(reviewer: Reviewer, label: str) -> None:
    suspect, _ = _known(reviewer, label)
    # ... and most cross the suspect threshold, which is high because the randomized world's clean
    # loads score high too (docs/image-review.md: detection is the target the model misses).
    assert suspect >= len(KNOWN_ANOMALIES) - 1, (label, suspect)


@pytest.mark.parametrize("label", ANOMALY_CLASSES)
def test_known_anomalies_regions_name_their_class(reviewer: Reviewer, label: str) -> None:
    suspect, right_label = _known(reviewer, label)
    assert right_label >= max(1, suspect - 1), (label, suspect, right_label)


def test_random_scans_statistics(reviewer: Reviewer) -> None:
    """A small sample of the evaluation mixture: catches a broken model or pipeline, not a 1 % drift."""
    ranked = dict.fromkeys(ANOMALY_CLASSES, 0)
    visible = dict.fromkeys(ANOMALY_CLASSES, 0)
    for label in ANOMALY_CLASSES:
        for seed in range(400, 416):
            syn = generate_scenario(seed, label)
            truth = next((r for r in syn.regions if r.label == label), None)
            if truth is None:  # hidden below the detector column: nothing to see
                continue
            visible[label] += 1
            ranked[label] += _object_score(reviewer, syn.scan, truth) >= 0.5
    assert all(ranked[lb] >= 0.75 * visible[lb] and visible[lb] >= 12 for lb in ANOMALY_CLASSES), (ranked, visible)
    clean = [generate_scenario(seed, "clean") for seed in range(500, 540)]
    results = [reviewer.review(syn.scan) for syn in clean]
    # The model's false alarms; scans suspect only for an area the beam did not cross (steel
    # coils seen along their width) are the opacity test's, checked below.
    false_alarms = sum(any(g.label != "opaque" for g in r.regions) for r in results)
    assert false_alarms <= 3, false_alarms
    opaque = {syn.cargo for syn, r in zip(clean, results, strict=True) if r.opaque}
    assert opaque <= {"coils"}, opaque


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
    assert result.reason is None
    assert result.scan_id == syn.scan.scan_id
    assert result.conditioning["dead_rows"] == []
    assert result.conditioning["flat_field"] == "per_row"
    assert 0.0 <= result.envelope["flagged_share"] < 0.2
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
    for kwargs in ({"length_ft": 20}, {"length_ft": 40}, {"rows": 512}, {"columns": 3000}, {"bits": 8}, {"rows": 128}):
        syn = synthetic(341, cargo="cartons", anomalies=("dense_object",), **kwargs)
        assert syn.regions, kwargs
        assert _object_score(reviewer, syn.scan, syn.regions[0]) >= 0.9, kwargs


def test_mis_shaped_scans_raise_clear_errors(reviewer: Reviewer) -> None:
    scan = synthetic(351, cargo="cartons").scan
    with pytest.raises(ScanFormatError, match="too small"):
        reviewer.review(scan_with(scan, pixels=np.ascontiguousarray(scan.pixels[:, :8, :])))
    with pytest.raises(ScanFormatError, match="pixel_mm"):
        reviewer.review(scan_with(scan, pixel_mm=1000.0))
    with pytest.raises(ScanFormatError):
        Scan(pixels=cast(Any, scan.pixels.astype(np.float32)), scan_id="x", bits=16, pixel_mm=5.0)
    with pytest.raises(ScanFormatError):
        Scan(pixels=scan.pixels[0], scan_id="x", bits=16, pixel_mm=5.0)


def test_alien_scans_are_unfamiliar_not_judged(reviewer: Reviewer) -> None:
    """Black (source off), saturated (detector blind) and pure noise are no scans of a vehicle:
    verdict unavailable, reason unfamiliar, with the signal that tripped the guard."""
    scan = synthetic(352, cargo="empty").scan
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 65535, size=scan.pixels.shape, dtype=np.uint16)
    for pixels, signal in ((np.zeros_like(scan.pixels), "air_fraction"),
                           (np.full_like(scan.pixels, 65535), "repaired_share"),
                           (noise, "noise")):
        result = reviewer.review(scan_with(scan, pixels=pixels))
        assert result.verdict == "unavailable", (signal, result)
        assert result.unfamiliar
        assert result.reason == "unfamiliar"
        assert signal in (result.error or ""), result.error
        assert result.score is None
        assert set(result.envelope) == {"flagged_share", "noise", "air_fraction", "repaired_share", "covered_share",
                                        "inverted_share"}
        back = ReviewResult.from_dict(result.as_dict())
        assert back.unfamiliar
        assert back.envelope == result.envelope


def test_channels_in_the_wrong_order_are_unfamiliar(reviewer: Reviewer) -> None:
    """A firmware sending the low energy as channel 0 (GFP/1: channel 0 is the high energy) makes
    the load read as if the lower energy went through more easily, which no material in cargo
    does: the guard fires on the inverted share instead of the model judging a scan it was never
    trained on (13 % of such clean scans were flagged suspect before the signal existed)."""
    syn = synthetic(353, cargo="machinery")
    normal = reviewer.review(syn.scan)
    assert normal.verdict != "unavailable"
    assert normal.envelope["inverted_share"] < reviewer.spec.envelope.max_inverted_share / 2
    swapped = reviewer.review(scan_with(syn.scan, pixels=np.ascontiguousarray(syn.scan.pixels[::-1])))
    assert swapped.verdict == "unavailable"
    assert swapped.reason == "unfamiliar"
    assert "inverted_share" in (swapped.error or ""), swapped.error
    assert swapped.envelope["inverted_share"] > 0.8
    # A single-energy scan has no low channel to invert.
    single = reviewer.review(scan_with(syn.scan, pixels=np.ascontiguousarray(syn.scan.pixels[:1])))
    assert single.envelope["inverted_share"] == 0.0


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


PERTURBATIONS: dict[str, Callable[[Scan], Scan]] = {
    "8-bit": to_8bit,
    "dead rows": lambda s: scan_with(s, pixels=_rows(s.pixels, 0)),
    "stuck rows": lambda s: scan_with(s, pixels=_rows(s.pixels, 65535)),
    "gain 4 %": lambda s: scan_with(s, pixels=np.clip(
        s.pixels * (1 + np.random.default_rng(4).normal(0, 0.04, size=(s.channels, s.rows, 1))), 0, 65535,
    ).astype(np.uint16)),
    "air x0.6": lambda s: scan_with(s, pixels=(s.pixels * 0.6).astype(np.uint16)),
    "single energy": lambda s: scan_with(s, pixels=np.ascontiguousarray(s.pixels[:1])),
}


def _rows(pixels: np.ndarray[Any, Any], value: int) -> np.ndarray[Any, Any]:
    out = pixels.copy()
    out[:, [37, 121, 200], :] = value
    return out


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_perturbed_scans_keep_their_scores_and_verdicts(reviewer: Reviewer, name: str) -> None:
    """The issue's perturbations that broke model 1.1.0 (8 bit: 80 % false alarms, dead rows: 30 %):
    an object scores about what it scores on the intact scan, a clean load's score rises by less
    than one logit (1.1.0's jumped to certainty) so a load clear by more than that stays clear,
    nothing is skipped or called unfamiliar. How many clean scans a perturbation tips over the
    threshold is a rate, measured by benchmarks/bench_review_robustness.py."""
    perturb = PERTURBATIONS[name]
    for seed, host in KNOWN_ANOMALIES[:2]:
        for label in ("dense_object", "weapon"):
            syn = synthetic(seed, cargo=host, anomalies=(label,))
            truth = syn.regions[0]
            intact = _object_score(reviewer, syn.scan, truth)
            perturbed = perturb(syn.scan)
            assert abs(_object_score(reviewer, perturbed, truth) - intact) <= 0.05, (name, label, seed)
            assert reviewer.review(perturbed).verdict != "unavailable", (name, label, seed)
    limit = logit(reviewer.suspect_threshold)
    for seed, cargo in KNOWN_CLEAN[:4]:
        scan = synthetic(seed, cargo=cargo, clutter=False).scan
        intact = reviewer.review(scan)
        result = reviewer.review(perturb(scan))
        assert result.verdict != "unavailable", (name, seed, cargo, result.error)
        assert logit(result.score or 0.0) - logit(intact.score or 0.0) < 1.0, (name, seed, cargo)
        if logit(intact.score or 0.0) < limit - 1.0:
            assert result.verdict == "clear", (name, seed, cargo, result.score, result.regions)


def test_random_worlds_small_sample(reviewer: Reviewer) -> None:
    """Scans from randomized scanners and trucks (the training world): a broken pipeline shows."""
    found = total = 0
    for seed in range(600, 632):
        syn = generate_scenario(seed, ANOMALY_CLASSES[seed % 4], world="random")
        if not syn.regions:
            continue
        total += 1
        found += _object_score(reviewer, syn.scan, syn.regions[0]) >= 0.5
    assert found >= 0.75 * total, (found, total)
    alarms = sum(reviewer.review(generate_scenario(seed, "clean", world="random").scan).verdict != "clear"
                 for seed in range(640, 680))
    assert alarms <= 3, alarms


def _with_opaque_block(scan: Scan, width_m: float, height_m: float) -> tuple[Scan, tuple[int, int, int, int]]:
    """The scan with a block of the cargo at the detector's dark level (the beam did not cross
    it), centred in the scan; and the block as ``(x, y, w, h)`` in scan pixels."""
    pixels = scan.pixels.copy()
    row_mm = float(scan.meta["row_mm"])
    w, h = round(width_m * 1000 / scan.pixel_mm), round(height_m * 1000 / row_mm)
    x, y = scan.columns // 2 - w // 2, scan.rows // 2 - h // 2
    pixels[:, y:y + h, x:x + w] = 0
    return scan_with(scan, pixels=pixels), (x, y, w, h)


def test_an_area_the_beam_did_not_cross_is_an_opaque_region(shipped_model: Any) -> None:
    """No model can call clear what the scanner could not show: a clean load with 1 m2 at the dark
    level is suspect with an ``opaque`` region on that area, in both bit depths; a smaller area
    than ``opaque_area_m2`` is not, and 0 turns the test off."""
    reviewer = Reviewer(shipped_model)
    clean = synthetic(311, cargo="cartons").scan
    assert reviewer.review(clean).verdict == "clear"
    scan, block = _with_opaque_block(clean, 1.0, 1.0)
    for variant in (scan, to_8bit(scan)):
        result = reviewer.review(variant)
        assert result.verdict == "suspect"
        assert result.opaque
        assert 0.7 <= result.opaque_m2 <= 1.3, result.opaque_m2
        opaque = [r for r in result.regions if r.label == "opaque"]
        assert len(opaque) == 1
        assert overlaps((opaque[0].x, opaque[0].y, opaque[0].w, opaque[0].h), block)
        assert opaque[0].w == pytest.approx(block[2], abs=8)
        assert ReviewResult.from_dict(result.as_dict()).opaque_m2 == result.opaque_m2
        assert {"label": "opaque"}.items() <= result.to_contract()["regions"][-1].items()
    small, _ = _with_opaque_block(clean, 0.5, 0.5)
    assert not reviewer.review(small).opaque
    reviewer.set_thresholds(opaque_area_m2=0.2)
    assert reviewer.review(small).opaque
    off = Reviewer(shipped_model, opaque_area_m2=0.0)
    unflagged = off.review(scan)
    assert (unflagged.verdict, unflagged.opaque_m2) == ("clear", 0.0)
    with pytest.raises(ValueError, match="opaque_area_m2"):
        reviewer.set_thresholds(opaque_area_m2=-1.0)


def test_block_support_keeps_objects_and_damps_lone_cells() -> None:
    logits = np.full((6, 8, 2), -5.0, dtype=np.float32)
    logits[1, 1, 0] = 6.0  # one cell alone (class 0)
    logits[3:5, 5:7, 1] = 6.0  # a 2 x 2 object (class 1)
    out = block_support(logits, 2)
    assert out.shape == logits.shape
    assert out.dtype == np.float32
    # The lone cell's best block holds it and three quiet cells: (6 - 15) / 4.
    assert out[..., 0].max() == pytest.approx(-2.25)
    assert out[1, 1, 0] == pytest.approx(-2.25)
    # The object keeps its level on its four cells, and its neighbours share the best block
    # they lie in (half of it object).
    assert np.allclose(out[3:5, 5:7, 1], 6.0)
    assert out[2, 5, 1] == pytest.approx(0.5)
    assert out[0, 0, 1] == pytest.approx(-5.0)
    # Classes are kept apart, and a block of 1 or a map smaller than the block is left alone.
    assert out[3, 5, 0] == pytest.approx(-5.0)
    assert block_support(logits, 1) is logits
    tiny = logits[:1]
    assert block_support(tiny, 2) is tiny


@pytest.mark.parametrize("block", [2, 3])
def test_block_support_is_the_best_block_mean_of_each_cell(block: int) -> None:
    logits = np.random.default_rng(block).normal(size=(7, 9, 3)).astype(np.float32)
    rows, cols = logits.shape[:2]
    expected = np.full_like(logits, -np.inf)
    for r in range(rows):
        for c in range(cols):
            for r0 in range(max(0, r - block + 1), min(r, rows - block) + 1):
                for c0 in range(max(0, c - block + 1), min(c, cols - block) + 1):
                    mean = logits[r0:r0 + block, c0:c0 + block].mean(axis=(0, 1))
                    expected[r, c] = np.maximum(expected[r, c], mean)
    assert np.allclose(block_support(logits, block), expected, atol=1e-6)
