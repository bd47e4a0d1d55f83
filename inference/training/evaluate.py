"""Evaluation and threshold calibration, measured with the TFLite runtime (never TensorFlow).

Every figure comes from `inference.reviewer.Reviewer` running the shipped int8 model through
LiteRT, exactly as on the gate. Definitions:

* detection rate of a class: share of injected objects of that class whose region of the scan
  (its ground-truth box, widened by one cell) reaches the suspect threshold in any anomaly
  channel, i.e. the gate raises a region over it and calls the scan suspect;
* false-alarm rate: share of scans without any anomaly that are called suspect (any region);
* declared-empty accuracy: over scans declared empty, share whose not-empty decision matches
  the truth; false "not empty": share of truly empty declared-empty boxes called loaded.

A scan the guard calls unfamiliar (verdict ``unavailable``, `Reviewer.assess`) counts against
the model everywhere: its objects are missed, it is a false alarm when clean, and a wrong
declared-empty decision.

ROC curves sweep the threshold: detection rate per class against the false-alarm rate, and
not-empty detection against false "not empty". The operating curve reads the same sweep at fixed
false-alarm shares (1, 2, 5, 10, 20 % of the anomaly-free scans): how much detection a looser
operating point would buy.

Every rate comes with its 95 % Wilson score interval (``interval``): a test stream of 2000 scans
holds about 230 objects per class, so a detection rate of 86 % is known to about +-4.5 points and a
false-alarm rate of 1.7 % on 1150 clean scans to +-0.8. ``targets`` compares each figure with the
issue's target and says whether the interval lies wholly on one side of it (``decided``) or the
sample is too small to tell.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.rates import wilson
from inference.reviewer import Reviewer, ScanAnalysis
from inference.scan import Scan
from inference.synthetic import generate_scenario
from inference.training.dataset import FieldSample, WorldFilter, split_seed, world_key

__all__ = [
    "ScanRecord",
    "collect_field",
    "collect_synthetic",
    "compute_metrics",
    "declared_empty_metrics",
    "detection_by_place",
    "flagged_share_at",
    "logit",
    "not_empty_threshold",
    "operating_curve",
    "overlaps",
    "plot_roc",
    "score_scan",
    "suspect_threshold",
    "target_verdicts",
    "wilson_interval",
]

TARGETS = {"detection": 0.95, "false_alarm": 0.02, "declared_empty": 0.99}
"""The issue's targets: each anomaly class at least 95 % detected, at most 2 % of clean scans
flagged, declared-empty verification at least 99 %."""

OPERATING_FALSE_ALARMS = (0.01, 0.02, 0.05, 0.10, 0.20)

_log = logging.getLogger(__name__)


@dataclass
class ScanRecord:
    source: str
    scan_id: str
    cargo: str | None
    declared: str | None
    anomaly_score: float
    not_empty_score: float
    not_empty_truth: bool | None
    has_anomaly: bool
    objects: list[dict[str, Any]] = field(default_factory=list)  # label, score, predicted
    false_region_scores: list[float] = field(default_factory=list)
    latency_ms: float = 0.0
    invoke_ms: float = 0.0
    world: str = ""
    unavailable: bool = False
    reason: str | None = None
    signals: dict[str, float] = field(default_factory=dict)
    flagged_curve: list[float] = field(default_factory=list)  # flagged share at t = 0.02, 0.04, ... 0.98
    unseen: list[str] = field(default_factory=list)  # classes of objects the scanner could not show
    opaque_m2: float = 0.0  # area the beam did not cross, in areas of at least the reviewer's opaque_area_m2

    @property
    def anomaly_free(self) -> bool:
        """No anomaly at all: neither one to find nor one the scanner could not show (a scan with
        an unseen object is left out of the false-alarm figures, not counted as clean)."""
        return not self.has_anomaly and not self.unseen


def overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes ``(x, y, w, h)`` share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def score_scan(reviewer: Reviewer, scan: Scan, regions: Sequence[dict[str, Any]], *, source: str,
               cargo: str | None, not_empty_truth: bool | None, has_anomaly: bool) -> ScanRecord:
    t0 = time.perf_counter()
    analysis: ScanAnalysis = reviewer.analyse(scan)
    found = reviewer.regions(analysis)
    cargo_map = reviewer.not_empty_map(analysis)
    latency = (time.perf_counter() - t0) * 1000.0
    anomaly = analysis.anomaly
    objects = []
    gt_boxes = []
    for r in regions:
        if r["label"] not in analysis.labels:
            continue
        rs, cs = analysis.cell_box(r["x"], r["y"], r["w"], r["h"])
        rs = slice(max(rs.start - 1, 0), rs.stop + 1)
        cs = slice(max(cs.start - 1, 0), cs.stop + 1)
        window = anomaly[rs, cs]
        per_class = window.reshape(-1, window.shape[-1]).max(axis=0) if window.size else np.zeros(len(analysis.labels))
        objects.append({"label": r["label"], "score": float(per_class.max()),
                        "predicted": analysis.labels[int(per_class.argmax())], "place": r.get("place")})
        gt_boxes.append((r["x"], r["y"], r["w"], r["h"]))
    false_scores = [reg.score for reg in found
                    if not any(overlaps((reg.x, reg.y, reg.w, reg.h), b) for b in gt_boxes)]
    signals = reviewer.envelope_signals(analysis)
    reason = reviewer.assess(signals)
    best = anomaly.max(axis=-1)
    curve = [round(float((best >= t).mean()), 4) for t in CURVE_THRESHOLDS]
    return ScanRecord(
        source=source, scan_id=scan.scan_id, cargo=cargo, declared=scan.declared,
        anomaly_score=float(anomaly.max()), not_empty_score=float(cargo_map.max()),
        not_empty_truth=not_empty_truth, has_anomaly=has_anomaly, objects=objects,
        false_region_scores=false_scores, latency_ms=latency, invoke_ms=analysis.invoke_ms,
        unavailable=reason is not None, reason=reason, signals=signals, flagged_curve=curve,
        unseen=[str(u["label"]) for u in scan.meta.get("synthetic", {}).get("unseen", [])],
        opaque_m2=analysis.opaque_m2)


CURVE_THRESHOLDS = tuple(k / 50 for k in range(1, 50))


def flagged_share_at(record: ScanRecord, threshold: float) -> float:
    """A record's flagged share at another region threshold (from its stored curve)."""
    return float(np.interp(threshold, CURVE_THRESHOLDS, record.flagged_curve)) if record.flagged_curve else 0.0


def collect_synthetic(reviewer: Reviewer, split: str, base_seed: int, count: int,
                      kinds: Sequence[str] = ("random",), *, world: str = "random",
                      exclude: WorldFilter | None = None, only: WorldFilter | None = None) -> list[ScanRecord]:
    """Review ``count`` generated scans of a split; scenario ``kinds`` are taken in turn, each in
    a randomized world (restricted by ``exclude``/``only``) or the reference one."""
    records = []
    for i in range(count):
        seed = split_seed(split, base_seed, i)
        syn = generate_scenario(seed, kinds[i % len(kinds)], world=world, exclude=exclude, only=only)
        rec = score_scan(reviewer, syn.scan, [r.as_dict() for r in syn.regions], source=f"synthetic:{split}",
                         cargo=syn.cargo, not_empty_truth=syn.not_empty, has_anomaly=bool(syn.regions))
        rec.world = world_key(syn.world)
        records.append(rec)
        if (i + 1) % 250 == 0:
            _log.info("evaluated %d/%d %s scans", i + 1, count, split)
    return records


def collect_field(reviewer: Reviewer, samples: Iterable[FieldSample]) -> list[ScanRecord]:
    records = []
    for s in samples:
        anomalous = s.finding == "contraband"
        truth: bool | None = None
        if "empty" in s.labels or ((s.declared or "").lower() == "empty" and s.finding == "clean"):
            truth = False
        elif "not_empty" in s.labels or s.finding == "misdeclared":
            truth = True
        scan = s.scan if s.declared == s.scan.declared else Scan(
            pixels=s.scan.pixels, scan_id=s.scan.scan_id, bits=s.scan.bits, pixel_mm=s.scan.pixel_mm,
            declared=s.declared, meta=s.scan.meta)
        records.append(score_scan(reviewer, scan, list(s.regions), source=f"field:{s.path.name}", cargo=None,
                                  not_empty_truth=truth, has_anomaly=anomalous))
    return records


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> list[float] | None:
    """`inference.rates.wilson` (95 % for ``z = 1.96``) rounded to 4 decimals, as the figures
    are; None without trials."""
    if trials <= 0:
        return None
    lo, hi = wilson(successes, trials, z)
    return [round(lo, 4), round(hi, 4)]


def _verdict(rate: float | None, interval: list[float] | None, target: float, *, at_least: bool,
             ) -> dict[str, Any]:
    if rate is None or interval is None or math.isnan(rate):
        return {"target": target, "rate": None, "met": None, "decided": False}
    met = rate >= target if at_least else rate <= target
    lo, hi = interval
    decided = (lo >= target or hi < target) if at_least else (hi <= target or lo > target)
    return {"target": target, "rate": rate, "interval": interval, "met": met, "decided": decided}


def target_verdicts(metrics: dict[str, Any]) -> dict[str, Any]:
    """Each figure of ``compute_metrics`` against the issue's targets (`TARGETS`): ``met`` on the
    point estimate, ``decided`` when the 95 % interval lies wholly on one side of the target (the
    verdict would not change on a larger sample of the same stream)."""
    out: dict[str, Any] = {}
    for label, d in metrics["detection"].items():
        out[f"detection.{label}"] = _verdict(d["detection_rate"], d.get("interval"), TARGETS["detection"],
                                             at_least=True)
    out["false_alarm"] = _verdict(metrics["false_alarm_scan_rate"], metrics.get("false_alarm_interval"),
                                  TARGETS["false_alarm"], at_least=False)
    de = metrics["declared_empty"]
    out["declared_empty"] = _verdict(de["accuracy"], de.get("accuracy_interval"), TARGETS["declared_empty"],
                                     at_least=True)
    return out


def operating_curve(records: Sequence[ScanRecord], labels: Sequence[str],
                    false_alarms: Sequence[float] = OPERATING_FALSE_ALARMS) -> list[dict[str, Any]]:
    """Detection per class at the threshold that flags at most each share of the anomaly-free
    scans (`suspect_threshold`'s rule). An unavailable scan's objects are missed and a clean
    unavailable scan is a false alarm at every threshold, as in `compute_metrics`."""
    negatives = [r for r in records if r.anomaly_free]
    if not negatives:
        return []
    out = []
    for target in false_alarms:
        threshold = suspect_threshold(records, target)
        row: dict[str, Any] = {
            "target_false_alarm": target,
            "threshold": round(threshold, 5),
            "false_alarm": round(float(np.mean([r.unavailable or r.anomaly_score >= threshold
                                                for r in negatives])), 4),
            "detection": {},
        }
        for label in labels:
            hits = [not r.unavailable and o["score"] >= threshold
                    for r in records for o in r.objects if o["label"] == label]
            row["detection"][label] = round(float(np.mean(hits)), 4) if hits else None
        out.append(row)
    return out


def _rate(values: Sequence[float], threshold: float) -> float:
    return float(np.mean(np.asarray(values) >= threshold)) if len(values) else float("nan")


def logit(p: float) -> float:
    """The logit of a probability, clipped to [1e-6, 1 - 1e-6]."""
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return float(np.log(p / (1.0 - p)))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + float(np.exp(-x)))


def _bound(values: Sequence[float], target: float) -> float | None:
    """The (allowed+1)-th highest value, allowed = the share ``target`` of them: a threshold must
    lie above it for at most that share to reach it. None without values."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if ordered.size == 0:
        return None
    allowed = int(np.floor(target * ordered.size))
    return float(ordered[ordered.size - 1 - allowed]) if allowed < ordered.size else 0.0


def _clamp(t: float, floor: float) -> float:
    return float(min(max(t, floor), 0.99))


SUSPECT_LOGIT_STEP = 0.02
"""How far (logit) above the highest allowed anomaly-free score the suspect threshold goes: less
than a step of any int8 logit output, so the threshold never skips a level of the model."""


def suspect_threshold(records: Sequence[ScanRecord], target_false_alarm: float) -> float:
    """The lowest (most sensitive) value whose false-alarm rate on anomaly-free scans stays within
    target (0.5 without any anomaly-free scan). Chosen in logit space: the model outputs logits,
    so scores are resolved right up to 1, and a confident model's operating point can lie above
    0.99."""
    fa = _bound([r.anomaly_score for r in records if r.anomaly_free], target_false_alarm)
    if fa is None:
        return 0.5
    return min(max(_sigmoid(logit(fa) + SUSPECT_LOGIT_STEP), 0.05), 1.0 - 1e-6)


def not_empty_threshold(records: Sequence[ScanRecord], target_false_not_empty: float) -> float:
    """The declared-empty threshold: the false-"not empty" target bounds it from below; when the
    loaded declared-empty boxes all score higher than that bound (the two groups separate), it
    goes halfway between the groups in logit space (loaded scores capped at 0.99) rather than
    hugging the empty side, so a box slightly fuller-looking than any validation empty is not
    called loaded. 0.5 without any empty declared-empty box."""
    declared = [r for r in records if r.declared == "empty"]
    ne = _bound([r.not_empty_score for r in declared if r.not_empty_truth is False], target_false_not_empty)
    loaded = [r.not_empty_score for r in declared if r.not_empty_truth is True]
    if ne is None:
        return 0.5
    lowest_loaded = min(loaded, default=None)
    if lowest_loaded is not None and lowest_loaded > ne + 1.0 / 256.0:
        # A confident model saturates loaded boxes at 1.0: cap that side at 0.99 so the threshold
        # stays where a partly loaded box (scoring below a full one) still reaches it.
        mid = (logit(ne) + logit(min(lowest_loaded, 0.99))) / 2.0
        _log.info("not-empty groups separate: highest allowed empty %.4f, lowest loaded %.4f", ne, lowest_loaded)
        return _clamp(_sigmoid(mid), 0.05)
    return _clamp(ne + 1.0 / 256.0, 0.05)


def compute_metrics(records: Sequence[ScanRecord], suspect: float, not_empty: float,
                    labels: Sequence[str]) -> dict[str, Any]:
    negatives = [r for r in records if r.anomaly_free]
    per_class: dict[str, Any] = {}
    for label in labels:
        objs = [o for r in records if not r.unavailable for o in r.objects if o["label"] == label]
        missed_unavailable = sum(o["label"] == label for r in records if r.unavailable for o in r.objects)
        detected = [o for o in objs if o["score"] >= suspect]
        objs = objs + [{"label": label, "score": 0.0}] * missed_unavailable
        per_class[label] = {
            "objects": len(objs),
            "detected": len(detected),
            "detection_rate": round(len(detected) / len(objs), 4) if objs else None,
            "interval": wilson_interval(len(detected), len(objs)),
            "label_accuracy": round(np.mean([o["predicted"] == label for o in detected]), 4) if detected else None,
            "unseen": sum(u == label for r in records for u in r.unseen),
        }
    flagged = sum(r.anomaly_score >= suspect or r.unavailable for r in negatives)
    false_alarm = flagged / len(negatives) if negatives else float("nan")
    latencies = np.array([r.latency_ms for r in records]) if records else np.zeros(1)
    return {
        "scans": len(records),
        "anomaly_free_scans": len(negatives),
        "thresholds": {"suspect": round(suspect, 4), "not_empty": round(not_empty, 4)},
        "detection": per_class,
        "false_alarm_scan_rate": round(false_alarm, 4),
        "false_alarm_interval": wilson_interval(flagged, len(negatives)),
        "unavailable_rate": round(float(np.mean([r.unavailable for r in records])), 4) if records else None,
        "unavailable_clean": sum(r.unavailable for r in negatives),
        "false_regions_per_clean_scan": round(float(np.mean([
            sum(s >= suspect for s in r.false_region_scores) for r in negatives])), 4) if negatives else None,
        "declared_empty": declared_empty_metrics(records, not_empty),
        "opacity": opacity_metrics(records, suspect),
        "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 2),
                       "p95": round(float(np.percentile(latencies, 95)), 2)},
    }


def opacity_metrics(records: Sequence[ScanRecord], suspect: float) -> dict[str, Any]:
    """What the opacity test adds (`inference.opacity`), apart from the model's figures: the share
    of anomaly-free scans it sends to an officer, the same scans' false alarms counted with it,
    and how many scans holding an object the scanner could not show it catches."""
    negatives = [r for r in records if r.anomaly_free]
    hidden = [r for r in records if r.unseen]
    return {
        "anomaly_free_opaque": round(float(np.mean([r.opaque_m2 > 0 for r in negatives])), 4) if negatives else None,
        "false_alarm_with_opacity": round(float(np.mean([
            r.anomaly_score >= suspect or r.unavailable or r.opaque_m2 > 0 for r in negatives])), 4)
        if negatives else None,
        "unseen_scans": len(hidden),
        "unseen_scans_opaque": sum(r.opaque_m2 > 0 for r in hidden),
    }


def detection_by_place(records: Sequence[ScanRecord], suspect: float, labels: Sequence[str]) -> dict[str, Any]:
    """Detection per anomaly class split by where the generator hid the object (the load or a
    hiding place of the vehicle, `inference.synthetic.anomaly.HIDING_PLACES`): objects and share
    detected; an object of an unavailable scan is missed. Objects without a place (field samples)
    are left out."""
    out: dict[str, Any] = {}
    for label in labels:
        places: dict[str, list[bool]] = {}
        for r in records:
            for o in r.objects:
                if o["label"] == label and o.get("place"):
                    places.setdefault(str(o["place"]), []).append(not r.unavailable and o["score"] >= suspect)
        out[label] = {place: {"objects": len(hits), "detection_rate": round(float(np.mean(hits)), 4)}
                      for place, hits in sorted(places.items())}
    return out


def declared_empty_metrics(records: Sequence[ScanRecord], not_empty: float) -> dict[str, Any]:
    """Declared-empty verification figures of the records at threshold ``not_empty``."""
    declared_empty = [r for r in records if r.declared == "empty" and r.not_empty_truth is not None]
    correct = [not r.unavailable and (r.not_empty_score >= not_empty) == r.not_empty_truth for r in declared_empty]
    right = sum(correct)
    truly_empty = [r for r in declared_empty if r.not_empty_truth is False]
    loaded = [r for r in declared_empty if r.not_empty_truth is True]
    return {
        "scans": len(declared_empty),
        "accuracy": round(right / len(correct), 4) if correct else None,
        "accuracy_interval": wilson_interval(right, len(correct)),
        "false_not_empty_rate": round(_rate([r.not_empty_score for r in truly_empty], not_empty), 4),
        "loaded_detected_rate": round(_rate([r.not_empty_score for r in loaded], not_empty), 4),
        "truly_empty": len(truly_empty),
        "loaded": len(loaded),
    }


def _roc(pos: Sequence[float], neg: Sequence[float]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    thresholds = np.unique(np.concatenate([[0.0, 1.01], np.asarray(pos), np.asarray(neg)]))[::-1]
    p, n = np.asarray(pos), np.asarray(neg)
    tpr = np.array([(p >= t).mean() if p.size else np.nan for t in thresholds])
    fpr = np.array([(n >= t).mean() if n.size else np.nan for t in thresholds])
    auc = float(np.trapezoid(tpr, fpr)) if p.size and n.size else float("nan")
    return fpr, tpr, auc


def plot_roc(records: Sequence[ScanRecord], labels: Sequence[str], suspect: float, not_empty: float, *,
             out_dir: Path, title_suffix: str = "") -> dict[str, Any]:
    """Write roc_anomaly.png and roc_not_empty.png; returns the AUCs."""
    # matplotlib is in the train extra only (and has no stubs here): imported by name.
    importlib.import_module("matplotlib").use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    out_dir.mkdir(parents=True, exist_ok=True)
    neg = [r.anomaly_score for r in records if r.anomaly_free]
    aucs: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    for label in labels:
        pos = [o["score"] for r in records for o in r.objects if o["label"] == label]
        if not pos:
            continue
        fpr, tpr, auc = _roc(pos, neg)
        aucs[label] = round(auc, 4)
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f}, n={len(pos)})")
    fa = _rate(neg, suspect)
    ax.axvline(fa, color="grey", linestyle=":", label=f"operating point (t={suspect:.2f}, FA={fa:.1%})")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false-alarm rate (anomaly-free scans called suspect)")
    ax.set_ylabel("detection rate")
    ax.set_title(f"Anomaly detection ROC, LiteRT int8{title_suffix} (n_neg={len(neg)})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roc_anomaly.png")
    plt.close(fig)

    declared = [r for r in records if r.declared == "empty" and r.not_empty_truth is not None]
    pos = [r.not_empty_score for r in declared if r.not_empty_truth]
    negs = [r.not_empty_score for r in declared if not r.not_empty_truth]
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    if pos and negs:
        fpr, tpr, auc = _roc(pos, negs)
        aucs["not_empty"] = round(auc, 4)
        ax.plot(fpr, tpr, label=f"declared empty: loaded vs empty (AUC {auc:.3f})")
        ax.axvline(_rate(negs, not_empty), color="grey", linestyle=":",
                   label=f"operating point (t={not_empty:.2f})")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false 'not empty' rate (empty boxes)")
    ax.set_ylabel("loaded boxes detected")
    ax.set_title(f"Declared-empty verification ROC{title_suffix} (n={len(pos)}+{len(negs)})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roc_not_empty.png")
    plt.close(fig)
    return aucs


def records_to_json(records: Sequence[ScanRecord], path: Path) -> None:
    path.write_text(json.dumps([asdict(r) for r in records]), encoding="utf-8")
