"""The shadow report: per lane, the review's verdicts against what officers found.

Read from the gate's labelled samples (``inspection.result`` and ``review.confirm``): each holds
the officers' finding and, in its transaction, the verdict the review published for the scan.
A scan is a false alarm when officers found it clean and the review said ``suspect``; an anomaly
is detected when the review said ``suspect``. Rates carry 95 % Wilson score intervals (they
stay inside [0, 1] and behave at 0 of n, where the normal approximation claims certainty), and a
lane meets the bar for ``live`` only when the *pessimistic* ends do: the upper bound of the
false-alarm rate at most ``max_false_alarm`` and the lower bound of detection at least
``min_detection``, with at least ``min_clean`` and ``min_anomalies`` confirmed scans.

The report judges the model. A scan the review called suspect only for an area the beam did not
cross (every region labelled ``opaque``, `inference.opacity`) is the scanner's limit, not the
model's judgement: it is counted apart (``opaque``), neither a false alarm nor a detection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gate_controller.config.schema import LiveBarConfig
from inference.rates import wilson
from inference.result import suspect_for_opacity_alone

__all__ = ["LaneReport", "Rate", "load_verdict_samples", "shadow_report", "wilson"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rate:
    hits: int
    n: int

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    def as_dict(self) -> dict[str, Any]:
        lo, hi = wilson(self.hits, self.n)
        return {"count": self.hits, "of": self.n, "rate": None if self.value is None else round(self.value, 4),
                "ci95": [round(lo, 4), round(hi, 4)]}


@dataclass(frozen=True)
class VerdictSample:
    lane: str | None
    finding: str  # clean | anomaly
    verdict: str | None  # clear | suspect | unavailable | None (no review on record)
    labels: tuple[str, ...]
    model: str | None
    version: str | None
    opaque_only: bool = False  # suspect only for areas the beam did not cross


@dataclass
class LaneReport:
    lane: str
    clean: int = 0
    anomalies: int = 0
    false_alarms: int = 0
    detected: int = 0
    unavailable: int = 0
    unreviewed: int = 0
    opaque: int = 0
    per_label: dict[str, list[int]] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)

    def add(self, s: VerdictSample) -> None:
        if s.verdict is None:
            self.unreviewed += 1
            return
        key = f"{s.model} {s.version}"
        self.models[key] = self.models.get(key, 0) + 1
        if s.verdict == "unavailable":
            self.unavailable += 1
            return
        suspect = s.verdict == "suspect" and not s.opaque_only
        self.opaque += s.opaque_only
        if s.finding == "clean":
            self.clean += 1
            self.false_alarms += suspect
        else:
            self.anomalies += 1
            self.detected += suspect
            for label in s.labels or ("unlabelled",):
                counts = self.per_label.setdefault(label, [0, 0])
                counts[0] += suspect
                counts[1] += 1

    def judge(self, bar: LiveBarConfig) -> dict[str, Any]:
        fa, det = Rate(self.false_alarms, self.clean), Rate(self.detected, self.anomalies)
        fa_hi = wilson(fa.hits, fa.n)[1]
        det_lo = wilson(det.hits, det.n)[0]
        missing: list[str] = []
        if self.clean < bar.min_clean:
            missing.append(f"{self.clean} confirmed clean scans, {bar.min_clean} needed")
        if self.anomalies < bar.min_anomalies:
            missing.append(f"{self.anomalies} confirmed anomalies, {bar.min_anomalies} needed")
        if fa_hi > bar.max_false_alarm:
            missing.append(f"false alarms up to {fa_hi:.1%} (95 % bound) above {bar.max_false_alarm:.1%}")
        if det_lo < bar.min_detection:
            missing.append(f"detection down to {det_lo:.1%} (95 % bound) below {bar.min_detection:.1%}")
        return {
            "lane": self.lane,
            "clean": self.clean,
            "anomalies": self.anomalies,
            "unavailable": self.unavailable,
            "unreviewed": self.unreviewed,
            "opaque": self.opaque,
            "false_alarm": fa.as_dict(),
            "detection": det.as_dict(),
            "detection_by_label": {k: Rate(v[0], v[1]).as_dict() for k, v in sorted(self.per_label.items())},
            "models": dict(sorted(self.models.items())),
            "meets_live_bar": not missing,
            "short_of_bar": missing,
        }


def _sample(raw: Mapping[str, Any]) -> VerdictSample | None:
    finding = raw.get("confirmed") or raw.get("finding")
    if finding not in ("clean", "anomaly", "contraband", "misdeclared"):
        return None
    record = raw.get("transaction")
    lane = verdict = model = version = None
    opaque_only = False
    if isinstance(record, Mapping):
        lane = record.get("lane") if isinstance(record.get("lane"), str) else None
        scan = record.get("scan")
        inference = scan.get("inference") if isinstance(scan, Mapping) else None
        if isinstance(inference, Mapping):
            verdict = inference.get("verdict") if inference.get("verdict") in ("clear", "suspect",
                                                                                "unavailable") else None
            model, version = inference.get("model"), inference.get("version")
            regions = inference.get("regions")
            found = [r.get("label") for r in regions if isinstance(r, Mapping)] if isinstance(regions, list) else []
            opaque_only = suspect_for_opacity_alone(str(verdict), (str(x) for x in found))
    labels = tuple(str(x) for x in raw.get("labels") or () if isinstance(x, str))
    return VerdictSample(lane=lane, finding="clean" if finding == "clean" else "anomaly", verdict=verdict,
                         labels=labels, model=model, version=version, opaque_only=opaque_only)


def load_verdict_samples(samples_dir: Path) -> list[VerdictSample]:
    out: list[VerdictSample] = []
    for path in sorted(Path(samples_dir).glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("skipping unreadable sample %s: %s", path, err)
            continue
        sample = _sample(raw) if isinstance(raw, dict) else None
        if sample is not None:
            out.append(sample)
    return out


def shadow_report(samples: Iterable[VerdictSample], lanes: Iterable[str], bar: LiveBarConfig, *,
                  version: str | None = None) -> dict[str, Any]:
    """Per configured lane (plus samples of lanes no longer configured), the judged figures."""
    reports = {lane: LaneReport(lane) for lane in lanes}
    for s in samples:
        if version is not None and s.version != version:
            continue
        lane = s.lane or "(unknown)"
        reports.setdefault(lane, LaneReport(lane)).add(s)
    return {"bar": bar.model_dump(), "lanes": {lane: r.judge(bar) for lane, r in reports.items()}}
