"""The shadow report's statistics and the review mode store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gate_controller.config.schema import LiveBarConfig
from gate_controller.lifecycle.modes import ReviewModes
from gate_controller.lifecycle.report import load_verdict_samples, shadow_report, wilson


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998), Table I: 0/10 -> 0 .. 0.2775; 1/29 -> 0.0061 .. 0.1718; 81/263 -> 0.2553 .. 0.3662.
    for (k, n), (lo, hi) in {(0, 10): (0.0, 0.2775), (1, 29): (0.0061, 0.1718),
                             (81, 263): (0.2553, 0.3662)}.items():
        got = wilson(k, n)
        assert got[0] == pytest.approx(lo, abs=1e-4)
        assert got[1] == pytest.approx(hi, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def _sample(directory: Path, name: str, finding: str, verdict: str | None, lane: str = "L1",
            labels: tuple[str, ...] = (), regions: tuple[str, ...] = ()) -> None:
    record = None if verdict is None else {
        "lane": lane, "scan": {"inference": {"verdict": verdict, "model": "m", "version": "1.0",
                                             "regions": [{"x": 0, "y": 0, "w": 9, "h": 9, "score": 1.0, "label": r}
                                                         for r in regions]}}}
    confirmed = {"confirmed": "anomaly"} if finding == "anomaly" else {}
    directory.joinpath(f"{name}.json").write_text(json.dumps({
        "finding": "clean" if finding == "clean" else "contraband", **confirmed, "labels": list(labels),
        "transaction": record}))


def test_report_counts_judges_with_the_pessimistic_bounds(tmp_path: Path) -> None:
    for i in range(300):
        _sample(tmp_path, f"c{i}", "clean", "suspect" if i < 3 else "clear")
    for i in range(60):
        _sample(tmp_path, f"a{i}", "anomaly", "suspect" if i < 58 else "clear", labels=("weapon",))
    _sample(tmp_path, "u", "clean", "unavailable")
    _sample(tmp_path, "n", "clean", None)
    _sample(tmp_path, "other", "clean", "suspect", lane="L2")
    tmp_path.joinpath("junk.json").write_text("{not json")
    bar = LiveBarConfig(max_false_alarm=0.03, min_detection=0.85, min_clean=200, min_anomalies=50)
    report = shadow_report(load_verdict_samples(tmp_path), ["L1", "L2"], bar)
    l1 = report["lanes"]["L1"]
    assert (l1["clean"], l1["anomalies"], l1["unavailable"], l1["unreviewed"]) == (300, 60, 1, 0)
    assert report["lanes"]["(unknown)"]["unreviewed"] == 1  # no transaction: lane and verdict unknown
    assert l1["false_alarm"]["count"] == 3
    assert l1["false_alarm"]["rate"] == 0.01
    assert l1["detection_by_label"]["weapon"]["count"] == 58
    assert l1["meets_live_bar"], l1["short_of_bar"]
    l2 = report["lanes"]["L2"]
    assert not l2["meets_live_bar"]
    assert any("confirmed clean scans" in r for r in l2["short_of_bar"])
    # The same 1 % false alarms on only 100 scans: the upper 95 % bound (5.4 %) is above 3 %.
    few = tmp_path / "few"
    few.mkdir()
    for i in range(100):
        _sample(few, f"c{i}", "clean", "suspect" if i == 0 else "clear")
    for i in range(60):
        _sample(few, f"a{i}", "anomaly", "suspect")
    judged = shadow_report(load_verdict_samples(few), ["L1"], bar.model_copy(update={"min_clean": 50}))["lanes"]["L1"]
    assert not judged["meets_live_bar"]
    assert any("false alarms up to" in r for r in judged["short_of_bar"])


def test_scans_suspect_only_for_opaque_areas_are_counted_apart(tmp_path: Path) -> None:
    """The report judges the model: a tank the beam did not cross is the scanner's limit."""
    for i in range(10):
        _sample(tmp_path, f"t{i}", "clean", "suspect", regions=("opaque",))
    _sample(tmp_path, "both", "clean", "suspect", regions=("weapon", "opaque"))
    _sample(tmp_path, "hidden", "anomaly", "suspect", labels=("weapon",), regions=("opaque",))
    _sample(tmp_path, "found", "anomaly", "suspect", labels=("weapon",), regions=("weapon",))
    lane = shadow_report(load_verdict_samples(tmp_path), ["L1"], LiveBarConfig())["lanes"]["L1"]
    assert (lane["clean"], lane["anomalies"], lane["opaque"]) == (11, 2, 11)
    assert lane["false_alarm"]["count"] == 1  # the weapon region, not the ten tanks
    assert lane["detection"]["count"] == 1  # the model did not find the hidden one


def test_review_modes_persist_and_fail_safe(tmp_path: Path) -> None:
    path = tmp_path / "review_modes.json"
    modes = ReviewModes(path, {"L1": "live", "L2": "shadow"})
    modes.load()
    assert modes.modes() == {"L1": "live", "L2": "shadow"}
    assert modes.set("L1", "shadow") is True
    assert modes.set("L2", "shadow") is False
    again = ReviewModes(path, {"L1": "live", "L2": "shadow"})
    again.load()
    assert again.shadow("L1")
    assert again.shadow("L2")
    # Back to the configured mode: the override is dropped, so a later config change applies.
    assert again.set("L1", "live") is True
    assert json.loads(path.read_text()) == {}
    path.write_text("{broken")
    broken = ReviewModes(path, {"L1": "live"})
    broken.load()
    assert broken.shadow("L1")
