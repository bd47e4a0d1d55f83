"""Training data plumbing (no TensorFlow needed): targets from masks, field samples, calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gate_controller.cli import main
from inference.errors import ScanFormatError
from inference.reviewer import Reviewer
from inference.runtime import DEFAULT_MODEL_PATH
from inference.synthetic import generate_scan, nominal_world
from inference.training.__main__ import build_parser, parse_region, train_options
from inference.training.dataset import (
    ExampleSet,
    field_example,
    in_region,
    load_field_samples,
    split_seed,
    synthetic_example,
)
from inference.training.evaluate import (
    ScanRecord,
    compute_metrics,
    detection_by_place,
    not_empty_threshold,
    operating_curve,
    score_scan,
    suspect_threshold,
    target_verdicts,
    wilson_interval,
)
from inference.training.geometry import Geometry
from inference.training.loo import slice_table
from inference.training.train import ROUND_LEARNING_RATE, ROUND_PROJECT, ROUND_STEPS, TrainOptions

G = Geometry()


def test_split_seeds_are_disjoint_and_stable() -> None:
    train = {split_seed("train", 7, i) for i in range(2000)}
    test = {split_seed("test", 7, i) for i in range(2000)}
    assert not train & test
    assert split_seed("val", 7, 3) == split_seed("val", 7, 3)


def test_synthetic_example_targets() -> None:
    ex = synthetic_example(split_seed("train", 1, 0), G, kind="weapon")
    rows, width, channels = ex.x.shape
    assert (rows, channels) == (G.rows, 2)
    assert width % G.stride == 0
    assert width >= G.tile_width
    assert ex.targets.shape == (G.cell_rows, width // G.stride, 5) == ex.weights.shape
    weapon = G.outputs.index("weapon")
    assert ex.targets[..., weapon].sum() > 0  # the weapon's cells are positive
    assert ex.targets[..., 0].sum() > 0  # and the box holds cargo
    # Cells around positives are ignored (weight 0), the rest is a dense negative.
    assert (ex.weights[..., weapon] == 0).sum() > 0
    assert ex.weights[..., weapon].mean() > 0.9
    assert not ex.bag.any()


def test_example_set_round_trip(tmp_path: Path) -> None:
    examples = [synthetic_example(split_seed("train", 1, i), G, kind=k) for i, k in enumerate(("empty", "bags"))]
    data = ExampleSet(examples, G)
    data.save(tmp_path / "set.npz")
    back = ExampleSet.load(tmp_path / "set.npz", G)
    assert len(back) == 2
    assert back.tags == data.tags
    for i in range(2):
        for a, b in zip(back.example(i), data.example(i), strict=True):
            assert np.array_equal(a, b)


def test_leave_one_out_removes_a_region_of_the_world() -> None:
    examples = [synthetic_example(split_seed("train", 1, i), G, kind="empty") for i in range(12)]
    data = ExampleSet(examples, G)
    assert all(key.startswith("energy=") for key in data.worlds)
    region = {"energy": ("single",)}
    kept = data.without(region)
    singles = sum(in_region(key, region) for key in data.worlds)
    assert 0 < singles < len(data)  # the region is present in this sample and not all of it
    assert len(kept) == len(data) - singles
    assert not any(in_region(key, region) for key in kept.worlds)
    for i in range(len(kept)):
        j = data.worlds.index(kept.worlds[i]) if kept.worlds.count(kept.worlds[i]) == 1 else None
        if j is not None:
            for a, b in zip(kept.example(i), data.example(j), strict=True):
                assert np.array_equal(a, b)
    assert parse_region(["energy=6/9", "noise=high"]) == {"energy": ("6/9",), "noise": ("high",)}
    with pytest.raises(SystemExit, match="bad region"):
        parse_region(["energy=12/15"])


def test_a_round_is_the_shipped_recipe_unless_told_otherwise(tmp_path: Path) -> None:
    parser = build_parser()
    prev = tmp_path / "round1" / "xray_anomaly.tflite"
    opts = train_options(parser.parse_args(["train", "--round", str(prev)]))
    assert (opts.continue_from, opts.mine_from) == (prev, prev)
    assert (opts.steps, opts.project, opts.learning_rate) == (ROUND_STEPS, ROUND_PROJECT, ROUND_LEARNING_RATE)
    opts = train_options(parser.parse_args(["train", "--round", str(prev), "--steps", "100", "--project", "0"]))
    assert (opts.steps, opts.project, opts.learning_rate) == (100, 0.0, ROUND_LEARNING_RATE)
    plain = train_options(parser.parse_args(["train"]))
    assert plain == TrainOptions()
    with pytest.raises(SystemExit, match="--round PREVIOUS already"):
        train_options(parser.parse_args(["train", "--round", str(prev), "--mine-from", str(prev)]))
    wider = train_options(parser.parse_args(["train", "--round", str(prev), "--widen-to", "48,80,112,160"]))
    assert wider.widen_to == (48, 80, 112, 160)
    assert wider.continue_from == prev
    with pytest.raises(SystemExit, match="widens a continued network"):
        train_options(parser.parse_args(["train", "--widen-to", "48,80,112,160"]))
    deeper = train_options(parser.parse_args(["train", "--round", str(prev), "--deepen", "3"]))
    assert (deeper.deepen, deeper.continue_from) == (3, prev)
    with pytest.raises(SystemExit, match="deepens a continued network"):
        train_options(parser.parse_args(["train", "--deepen", "2"]))
    for bad in ("-1", "two"):
        with pytest.raises(SystemExit):  # argparse refuses it
            parser.parse_args(["train", "--round", str(prev), "--deepen", bad])


def test_loo_table_lists_every_slice_and_test_set() -> None:
    figures = {"scans": 10, "detection": {"weapon": 0.9}, "false_alarm": 0.01, "declared_empty": 1.0,
               "unavailable": 0.0}
    table = slice_table([{"slice": "energy=6/9", "held_out": figures, "control": figures}])
    assert "| energy=6/9 | held-out slice | 10 | 90.0 % | 1.0 % | 100.0 % | 0.0 % |" in table
    assert "| energy=6/9 | rest of the stream |" in table
    assert "base model" not in table
    weaker = {**figures, "detection": {"weapon": 0.5}}
    with_rounds = slice_table([{"slice": "energy=6/9", "held_out": figures, "control": figures,
                                "base": {"held_out": weaker, "control": weaker}}])
    assert "| energy=6/9 | held-out slice, base model | 10 | 50.0 % |" in with_rounds
    assert "| energy=6/9 | rest of the stream, base model | 10 | 50.0 % |" in with_rounds


def test_field_samples_from_a_labelled_directory(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--count", "3", "--seed", "900",
                 "--kind", "organic_mass", "--kind", "empty", "--kind", "misdeclared_empty"]) == 0
    # A field inspection without a region: only the presence of the class is known.
    label = tmp_path / "SYN-00000900.json"
    raw = json.loads(label.read_text())
    raw.pop("regions")
    label.write_text(json.dumps(raw))
    samples = load_field_samples(tmp_path)
    assert [s.finding for s in samples] == ["contraband", "clean", "misdeclared"]
    organic, empty, misdeclared = (field_example(s, G) for s in samples)
    k = G.outputs.index("organic_mass")
    assert organic.bag[k] == 1
    assert not organic.weights[..., k].any()
    assert organic.bag[0] == 1  # contraband implies cargo somewhere
    assert not empty.bag.any()
    assert empty.targets.sum() == 0
    assert empty.weights[..., 0].any()
    assert misdeclared.bag[0] == 1
    assert not misdeclared.bag[1:].any()
    # Padding beyond the scan never counts.
    assert not organic.weights[:, -(-organic.width // G.stride):].any()


def test_field_sample_errors(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"finding": "clean", "labels": []}))
    with pytest.raises(ScanFormatError, match="no scan"):
        load_field_samples(tmp_path)
    assert main(["synth", "--out", str(tmp_path), "--count", "1", "--seed", "1"]) == 0
    (tmp_path / "a.json").unlink()
    (tmp_path / "SYN-00000001.json").write_text(json.dumps({"finding": "maybe", "labels": []}))
    with pytest.raises(ScanFormatError, match="finding"):
        load_field_samples(tmp_path)


def _rec(score: float, anomalous: bool, not_empty: float = 0.0, truth: bool | None = None,
         declared: str | None = None) -> ScanRecord:
    objects = [{"label": "weapon", "score": score, "predicted": "weapon"}] if anomalous else []
    return ScanRecord(source="t", scan_id="s", cargo=None, declared=declared, anomaly_score=score,
                      not_empty_score=not_empty, not_empty_truth=truth, has_anomaly=anomalous, objects=objects)


def test_threshold_choice_and_metrics() -> None:
    negatives = [_rec(s, False) for s in np.linspace(0.0, 0.6, 100)]
    positives = [_rec(s, True) for s in np.linspace(0.5, 1.0, 50)]
    empties = [_rec(0.0, False, ne, False, "empty") for ne in np.linspace(0.0, 0.3, 100)]
    loaded = [_rec(0.0, False, ne, True, "empty") for ne in np.linspace(0.4, 1.0, 20)]
    records = negatives + positives + empties + loaded
    suspect, not_empty = suspect_threshold(records, 0.02), not_empty_threshold(records, 0.01)
    m = compute_metrics(records, suspect, not_empty, ["weapon"])
    assert m["false_alarm_scan_rate"] <= 0.02
    assert m["declared_empty"]["false_not_empty_rate"] <= 0.01
    assert m["declared_empty"]["accuracy"] == 1.0
    assert 0.8 < m["detection"]["weapon"]["detection_rate"] < 1.0
    # Separable declared-empty groups: the threshold sits between them, not on the empty side.
    assert 0.33 < not_empty < 0.37


def test_a_scan_with_an_unseen_object_is_neither_clean_nor_an_object_to_find() -> None:
    clean = [_rec(s, False) for s in np.linspace(0.0, 0.5, 99)]
    # The generator's ground truth: a pistol in a full tank's liquid, no region. Whatever the
    # model says of that scan, it is no false alarm and no miss.
    hidden = _rec(0.99, False)
    hidden.unseen = ["weapon"]
    assert not hidden.anomaly_free
    assert all(r.anomaly_free for r in clean)
    records = [*clean, hidden, _rec(0.97, True)]
    suspect = suspect_threshold(records, 0.0)
    assert suspect < 0.9  # set by the clean scans alone
    m = compute_metrics(records, suspect, 0.5, ["weapon"])
    assert m["anomaly_free_scans"] == 99
    assert m["false_alarm_scan_rate"] == 0.0
    assert m["detection"]["weapon"] == {"objects": 1, "detected": 1, "detection_rate": 1.0,
                                        "interval": [0.2065, 1.0], "label_accuracy": 1.0, "unseen": 1}


def test_unseen_objects_reach_the_records_from_the_scans_ground_truth() -> None:
    reviewer = Reviewer(DEFAULT_MODEL_PATH, num_threads=1)
    syn = generate_scan(0, cargo="bulk", anomalies=("dense_object",), world=nominal_world(container="tank"))
    assert syn.regions == ()
    rec = score_scan(reviewer, syn.scan, [], source="t", cargo=syn.cargo, not_empty_truth=syn.not_empty,
                     has_anomaly=False)
    assert rec.unseen == ["dense_object"]
    assert not rec.anomaly_free
    # What hides it is the tank's liquid beyond the beam's reach: the opacity test stops the scan.
    assert rec.opaque_m2 > 5.0


def test_opacity_figures_are_reported_apart_from_the_models() -> None:
    clean = [_rec(s, False) for s in np.linspace(0.0, 0.5, 10)]
    clean[0].opaque_m2 = 3.0  # a full tank of dense liquid, nothing in it
    hidden = _rec(0.1, False)
    hidden.unseen = ["weapon"]
    hidden.opaque_m2 = 12.0
    m = compute_metrics([*clean, hidden], 0.45, 0.5, ["weapon"])
    assert m["false_alarm_scan_rate"] == 0.1  # the model's own: the one clean scan at 0.5
    assert m["opacity"] == {"anomaly_free_opaque": 0.1, "false_alarm_with_opacity": 0.2, "unseen_scans": 1,
                            "unseen_scans_opaque": 1}


def test_wilson_interval_matches_the_published_values() -> None:
    # The values any statistics package gives (for example statsmodels proportion_confint, method wilson).
    assert wilson_interval(0, 10) == [0.0, 0.2775]
    assert wilson_interval(5, 10) == [0.2366, 0.7634]
    assert wilson_interval(81, 263) == [0.2553, 0.3662]
    assert wilson_interval(10, 10) == [0.7225, 1.0]
    assert wilson_interval(0, 0) is None


def test_targets_say_whether_the_sample_decides_them() -> None:
    # 1150 clean scans, 20 flagged (1.74 %): met, but the interval reaches past 2 %.
    clean = [_rec(0.99 if i < 20 else 0.1, False) for i in range(1150)]
    # 230 objects, 198 found (86 %): missed, and the interval stays below 95 %.
    objects = [_rec(0.99 if i < 198 else 0.2, True) for i in range(230)]
    m = compute_metrics(clean + objects, 0.5, 0.5, ["weapon"])
    assert m["false_alarm_interval"] == wilson_interval(20, 1150)
    t = target_verdicts(m)
    assert t["false_alarm"]["met"] is True
    assert t["false_alarm"]["decided"] is False
    assert t["detection.weapon"]["met"] is False
    assert t["detection.weapon"]["decided"] is True
    assert t["declared_empty"]["met"] is None  # no declared-empty box in the sample
    # Ten times the sample at the same rates decides the false-alarm target too.
    m10 = compute_metrics((clean + objects) * 10, 0.5, 0.5, ["weapon"])
    assert target_verdicts(m10)["false_alarm"] == {"target": 0.02, "rate": 0.0174, "interval": [0.0152, 0.0199],
                                                   "met": True, "decided": True}


def test_operating_curve_trades_false_alarms_for_detection() -> None:
    clean = [_rec(s, False) for s in np.linspace(0.0, 0.9, 200)]
    objects = [_rec(s, True) for s in np.linspace(0.5, 1.0, 100)]
    gone = _rec(1.0, True)
    gone.unavailable = True  # a scan the guard refused: its object is missed at every threshold
    curve = operating_curve([*clean, *objects, gone], ["weapon"], (0.01, 0.05, 0.2))
    assert [row["target_false_alarm"] for row in curve] == [0.01, 0.05, 0.2]
    for row in curve:
        assert row["false_alarm"] <= row["target_false_alarm"]
    found = [row["detection"]["weapon"] for row in curve]
    assert found == sorted(found)
    assert found[0] < found[-1] < 1.0
    assert operating_curve(objects, ["weapon"]) == []  # no clean scan, no curve


def test_detection_split_by_hiding_place() -> None:
    def rec(*objects: tuple[str, str, float], unavailable: bool = False) -> ScanRecord:
        r = ScanRecord(source="t", scan_id="s", cargo=None, declared=None, anomaly_score=1.0, not_empty_score=0.0,
                       not_empty_truth=None, has_anomaly=True,
                       objects=[{"label": lb, "score": s, "predicted": lb, "place": p} for lb, p, s in objects])
        r.unavailable = unavailable
        return r

    records = [rec(("weapon", "load", 0.99), ("weapon", "load", 0.2)), rec(("weapon", "chassis", 0.97)),
               rec(("weapon", "chassis", 0.99), unavailable=True), rec(("dense_object", "floor", 0.3)),
               _rec(0.99, True)]  # no place (a field sample): left out
    split = detection_by_place(records, 0.95, ["dense_object", "weapon", "vehicle"])
    assert split == {"dense_object": {"floor": {"objects": 1, "detection_rate": 0.0}},
                     "weapon": {"chassis": {"objects": 2, "detection_rate": 0.5},
                                "load": {"objects": 2, "detection_rate": 0.5}},
                     "vehicle": {}}


def test_suspect_threshold_of_a_confident_model_lies_above_099() -> None:
    # Logit outputs resolve scores right up to 1: a confident model's clean tail above 0.99 still
    # gets a threshold that keeps false alarms within target (a cap at 0.99 would flag 10 %).
    logits = np.linspace(2.0, 9.0, 200)
    clean = [_rec(float(1 / (1 + np.exp(-v))), False) for v in logits]
    objects = [_rec(float(1 / (1 + np.exp(-v))), True) for v in np.linspace(8.5, 12.0, 40)]
    threshold = suspect_threshold(clean + objects, 0.02)
    assert 0.999 < threshold < 1.0
    m = compute_metrics(clean + objects, threshold, 0.5, ["weapon"])
    assert 0.015 <= m["false_alarm_scan_rate"] <= 0.02
    assert m["detection"]["weapon"]["detection_rate"] > 0.8


def test_not_empty_threshold_when_the_groups_overlap() -> None:
    empties = [_rec(0.0, False, ne, False, "empty") for ne in np.linspace(0.0, 0.5, 101)]
    loaded = [_rec(0.0, False, ne, True, "empty") for ne in np.linspace(0.45, 1.0, 20)]
    not_empty = not_empty_threshold(empties + loaded, 0.01)
    # Overlap: just above the empties allowed by the target (here the second highest, 0.495).
    assert not_empty == pytest.approx(0.495 + 1 / 256, abs=1e-6)
    m = compute_metrics(empties + loaded, 0.5, not_empty, ["weapon"])
    assert m["declared_empty"]["false_not_empty_rate"] <= 0.01


def test_calibrate_rewrites_thresholds_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from inference.model_spec import file_sha256, load_spec
    from inference.reviewer import Reviewer
    from inference.runtime import DEFAULT_MODEL_PATH
    from inference.training.__main__ import main as training_main

    model = tmp_path / DEFAULT_MODEL_PATH.name
    shutil.copy(DEFAULT_MODEL_PATH, model)
    shutil.copy(DEFAULT_MODEL_PATH.with_suffix(".json"), model.with_suffix(".json"))
    before = load_spec(model.with_suffix(".json"))
    code = training_main(["calibrate", "--model", str(model), "--val-scans", "40", "--val-empty-scans", "20",
                          "--target-false-alarm", "0.05"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    after = load_spec(model.with_suffix(".json"))
    assert after.sha256 == before.sha256 == file_sha256(model)  # the model itself is untouched
    assert after.thresholds.suspect == pytest.approx(printed["thresholds"]["suspect"])
    assert after.thresholds.not_empty_pool == before.thresholds.not_empty_pool
    assert after.metrics["validation"]["scans"] == 40  # the mixture; the extra empties count below
    assert after.metrics["validation"]["declared_empty"]["scans"] >= 20
    assert "test" not in after.metrics  # figures of the old thresholds are not kept
    assert "40 'random' mixture + 20 declared empty" in after.training["calibration"]
    assert Reviewer(model).suspect_threshold == after.thresholds.suspect


def test_joint_leave_one_out_tests_each_slice_outside_the_others() -> None:
    from inference.training.loo import _union, other_slices

    slices = ({"energy": ("6/9",)}, {"chassis": ("flatbed",)}, {"chassis": ("skeletal",)})
    assert _union(slices) == {"energy": ("6/9",), "chassis": ("flatbed", "skeletal")}
    assert other_slices(slices, slices[0]) == {"chassis": ("flatbed", "skeletal")}
    assert other_slices(slices, slices[1]) == {"energy": ("6/9",), "chassis": ("skeletal",)}
