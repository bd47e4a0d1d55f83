"""Thresholds of a site fine-tuned network, and its before/after figures (LiteRT, no TensorFlow).

Measured on the site's held-out part only (`inference.training.site`): its clean scans (false
alarms), TIP scans made by projecting threats that were not used in training into those clean
scans (detection per class), and held-out labelled field samples. The suspect threshold is the
lowest that keeps the false-alarm share of the anomaly-free held-out scans within the target (the
rule `python -m inference.training train` calibrates with); the not-empty threshold is
recalibrated only when the held-out part has declared-empty scans, and only upwards
(`site_not_empty_threshold`), else the base model's is kept.
The false-alarm figure "after" is therefore at most the target by construction; detection is
measured at that threshold on objects the network never saw. The base model is measured on the
very same scans with its own thresholds ("before").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.adaptation.tip import ThreatObject, project
from inference.model_spec import ModelSpec
from inference.reviewer import Reviewer
from inference.scan import load_scan
from inference.training.dataset import FieldSample
from inference.training.evaluate import (
    ScanRecord,
    collect_field,
    compute_metrics,
    not_empty_threshold,
    score_scan,
    suspect_threshold,
)

__all__ = ["calibrate_site", "site_not_empty_threshold", "site_records"]

TARGET_FALSE_NOT_EMPTY = 0.005


def site_records(reviewer: Reviewer, val: Sequence[Path], samples: Sequence[FieldSample],
                 threats: dict[str, list[ThreatObject]], *, seed: int) -> list[ScanRecord]:
    """Every held-out clean scan, each with every class projected into it once (the same scans
    and placements for any reviewer, from ``seed``), and the held-out field samples."""
    rng = np.random.default_rng(seed + 1)
    records: list[ScanRecord] = []
    for j, path in enumerate(val):
        scan = load_scan(path)
        truth = False if (scan.declared or "").strip().lower() == "empty" else None
        records.append(score_scan(reviewer, scan, [], source="site:clean", cargo=None, not_empty_truth=truth,
                                  has_anomaly=False))
        for label in sorted(threats):
            objects = threats[label]
            projected = project(scan, objects[j % len(objects)], rng, scan_id=f"{scan.scan_id}-tip-{label}")
            if projected is None:
                continue
            tip_scan, (x, y, w, h) = projected
            records.append(score_scan(reviewer, tip_scan, [{"x": x, "y": y, "w": w, "h": h, "label": label}],
                                      source="site:tip", cargo=None, not_empty_truth=None, has_anomaly=True))
    return records + collect_field(reviewer, samples)


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    """The figures of `compute_metrics` a package's manifest and report carry."""
    return {"thresholds": m["thresholds"], "false_alarm": m["false_alarm_scan_rate"],
            "anomaly_free_scans": m["anomaly_free_scans"],
            "detection": {lb: {"objects": d["objects"], "detected": d["detected"], "rate": d["detection_rate"]}
                          for lb, d in m["detection"].items()},
            "unavailable": m["unavailable_rate"], "declared_empty": m["declared_empty"]}


def site_not_empty_threshold(records: Sequence[ScanRecord], base: float) -> float:
    """The declared-empty threshold on a site: fitted on its held-out declared-empty boxes
    (`not_empty_threshold`) when there are any, but never below the base model's ``base``. A
    site holds out a few dozen empty boxes at most: enough to show that its boxes look fuller
    than the training world's (a machinery unit the base never saw, and the threshold rises),
    not to lower a threshold fitted on hundreds, where the largest of a few dozen scores would
    become the threshold and new empty boxes of the site would exceed it."""
    if not _empty_boxes(records):
        return base
    return max(not_empty_threshold(records, TARGET_FALSE_NOT_EMPTY), base)


def _empty_boxes(records: Sequence[ScanRecord]) -> list[ScanRecord]:
    """The truly empty boxes declared empty among ``records``."""
    return [r for r in records if r.declared == "empty" and r.not_empty_truth is False]


def calibrate_site(model_path: Path, base_path: Path, spec: ModelSpec, *, val: Sequence[Path],
                   samples: Sequence[FieldSample], threats: dict[str, list[ThreatObject]],
                   target_false_alarm: float, seed: int) -> tuple[ModelSpec, dict[str, Any]]:
    """``spec`` (the metadata beside ``model_path``) with site thresholds and envelope, and the
    validation figures before (``base_path`` with its own thresholds) and after."""
    from inference.training.train import _envelope

    labels = list(spec.labels)
    new = Reviewer(model_path, num_threads=1)
    records = site_records(new, val, samples, threats, seed=seed)
    suspect = suspect_threshold(records, target_false_alarm)
    empties = _empty_boxes(records)
    not_empty = site_not_empty_threshold(records, spec.thresholds.not_empty)
    region = round(suspect * 0.6, 4)
    after = compute_metrics(records, suspect, not_empty, labels)
    base = Reviewer(base_path, num_threads=1)
    before = site_records(base, val, samples, threats, seed=seed)
    validation = {
        "held_out_clean_scans": len(val), "tip_scans": sum(r.source == "site:tip" for r in records),
        "field_samples": len(samples), "target_false_alarm": target_false_alarm,
        "before": _summary(compute_metrics(before, base.suspect_threshold, base.not_empty_threshold, labels)),
        "after": _summary(after),
        "note": ("'after' false alarms are on the scans the threshold was chosen on (at most the target by "
                 "construction); detection is on TIP objects never used in training"),
    }
    thresholds = spec.thresholds.model_copy(update={"suspect": suspect, "not_empty": not_empty, "region": region})
    envelope = spec.envelope.widened(_envelope(records, region), "the site's held-out scans")
    training = {**spec.training, "calibration": (
        f"suspect = lowest value with <= {target_false_alarm:.1%} false-alarm scans among {len(val)} held-out "
        "clean site scans" + (f" and {len(samples)} held-out field samples" if samples else "")
        + "; not_empty " + ("recalibrated on held-out declared-empty scans, never below the base's" if empties
                            else "kept from the base")
        + "; measured with LiteRT")}
    return spec.model_copy(update={"thresholds": thresholds, "envelope": envelope, "training": training,
                                   "metrics": {"validation": after, "site": validation}}), validation
