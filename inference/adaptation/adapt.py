"""`smartgate model adapt`: fit a model package to one site's scanner, on the gate, without TensorFlow.

1. The site's clean scans (officer-confirmed, 50 to 500) are split by a hash of their names into a
   fitting part and a held-out validation part (``holdout``, default 30 %). The input
   normalization is fitted first: each further input channel's scale is corrected by how its
   average model input, relative to the first channel's, differs from that of scans of the
   training world (the generator), so a harder or softer spectrum, which stretches one channel
   against the other, reaches the network as it was trained (corrections under 15 % are left
   alone; at most a factor 4).
2. The normal-traffic model (`inference.adaptation.normal`) is fitted on the network's features of
   the fitting scans, ``folds`` times with one fold left out, so every fitting scan also gets an
   unbiased score (its largest cell distance under a model that never saw it).
3. The distance threshold is the ``1 - target_false_alarm / 2`` quantile of those scores. The
   network's own anomaly probability keeps the shipped threshold unless the site's clean scans
   show that it flags more than half the budget of them (the lower bound of the 95 % Wilson
   interval of its rate on the fitting scans is above ``target_false_alarm / 2``); only then it
   moves up to that quantile of their scan maxima. It never moves down: a few dozen clean scans
   cannot show that detection would survive. A cell is anomalous when either says so, and the
   two halves of the false-alarm budget add up to at most ``target_false_alarm``. The cargo
   channel's threshold (declared-empty checks) follows the same rule on the fitting scans
   declared empty, with ``target_false_not_empty``: a scanner whose empty boxes look loaded
   to the shipped model (a reefer's machinery unit, a heavy floor) gets a threshold above
   them, and the validation reports how many of the other clean scans are still called loaded.
4. Threat image projection (`inference.adaptation.tip`) puts generator threats into the
   validation scans; detection is measured per class, before (the network's own verdict) and
   after (the adapted review) adaptation, with the false alarms of both on the validation scans.
   Labelled anomalies from ``samples`` (the gate's samples directory) are measured the same way.
5. The package (network, metadata with the adapted thresholds, ``adaptation.json``,
   ``adaptation.npz``, ``envelope.json``, ``report.json``) is written and signed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.adaptation.envelope import ENVELOPE_FILE, Envelope
from inference.adaptation.normal import NormalAccumulator
from inference.adaptation.reviewer import ADAPTATION_ARRAYS, ADAPTATION_FILE, ADAPTATION_FORMAT, AdaptedReviewer
from inference.adaptation.tip import ThreatObject, extract_threats, project
from inference.errors import ModelError, ScanFormatError
from inference.model_spec import EnvelopeSpec, NormalizationSpec
from inference.reviewer import Reviewer
from inference.scan import Scan, held_out, load_scan, readable_scans

__all__ = ["AdaptOptions", "adapt"]

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
_REGION_SCORE = 0.4
_NETWORK_SATURATED = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
"""The largest float32 probability below 1: a network whose clean quantile reaches it has no headroom."""
_SCALE_TOLERANCE = 0.15


@dataclass(frozen=True)
class AdaptOptions:
    holdout: float = 0.3
    folds: int = 5
    target_false_alarm: float = 0.02
    target_false_not_empty: float = 0.01
    threats_per_class: int = 6
    seed: int = 20261206
    threads: int = 1
    min_scans: int = 20
    reference_scans: int = 24


def _declared_empty(scan: Scan) -> bool:
    return scan.declared is not None and scan.declared.strip().lower() == "empty"


def _scans(paths: Sequence[Path]) -> Iterator[Scan]:
    for path in paths:
        yield load_scan(path)


def _box_cells(box: tuple[int, int, int, int], cell_w: float, cell_h: float, shape: tuple[int, int],
               ) -> tuple[slice, slice]:
    x, y, w, h = box
    r0, r1 = max(int(y // cell_h) - 1, 0), min(int(np.ceil((y + h) / cell_h)) + 1, shape[0])
    c0, c1 = max(int(x // cell_w) - 1, 0), min(int(np.ceil((x + w) / cell_w)) + 1, shape[1])
    return slice(r0, max(r1, r0 + 1)), slice(c0, max(c1, c0 + 1))


def _rate(hits: int, n: int) -> dict[str, Any]:
    return {"detected": hits, "of": n, "rate": round(hits / n, 4) if n else None}


def _wilson_low(hits: int, n: int, z: float = 1.96) -> float:
    """Lower bound of the 95 % Wilson interval of a rate ``hits / n``."""
    if n == 0:
        return 0.0
    p = hits / n
    centre = p + z * z / (2 * n)
    margin = z * float(np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def _site_threshold(shipped: float, clean_maxima: Sequence[float], budget: float) -> tuple[float, dict[str, Any]]:
    """Keep the shipped threshold unless the site's clean scans show that it flags more than
    ``budget`` of them (the lower 95 % bound of its rate on them is above the budget); then move it
    to the ``1 - budget`` quantile of their maxima. Never lower: a few dozen clean scans cannot show
    that the threshold may come down without losing detection."""
    n = len(clean_maxima)
    hits = sum(m >= shipped for m in clean_maxima)
    raise_it = _wilson_low(hits, n) > budget
    threshold = shipped
    if raise_it:
        q = float(np.quantile(clean_maxima, 1.0 - budget))
        threshold = max(shipped, float(np.nextafter(np.float32(q), np.float32(1.0))))
    return threshold, {"shipped": round(shipped, 6), "site_flagged": hits, "of": n, "raised": raise_it,
                       "threshold": round(threshold, 6)}


class _Judge:
    """Before (the network's own review) and after (the adapted review) on the same scans."""

    def __init__(self, base: Reviewer, adapted: AdaptedReviewer) -> None:
        self.base = base
        self.adapted = adapted
        self.signals: list[dict[str, float]] = []
        """The guard's signals of every clean scan judged, under the adapted review."""

    def clean(self, scan: Scan, not_empty_threshold: float) -> tuple[tuple[bool, bool], tuple[bool, bool]]:
        """On a clean scan, before and after: the anomaly false alarm (declared-empty checks apart),
        and whether the box is called loaded (shipped, then site not-empty threshold). The base
        network runs once for both."""
        analysis = self.base.analyse(scan)
        before = bool(analysis.anomaly.size and analysis.anomaly.max() >= self.base.suspect_threshold)
        loaded = float(self.base.not_empty_map(analysis).max())
        a_analysis, dist = self.adapted.analyse_distances(scan)
        score = self.adapted.cell_scores(a_analysis, dist)
        after = bool(score.max() >= 0.5)
        self.signals.append(self.adapted.envelope_signals(a_analysis, score))
        return (before, after), (loaded >= self.base.not_empty_threshold, loaded >= not_empty_threshold)

    def threat(self, scan: Scan, box: tuple[int, int, int, int]) -> tuple[bool, bool]:
        """Detected when the flagged cells reach into the object's box (one cell of slack)."""
        analysis = self.base.analyse(scan)
        rows, cols = self.base_slices(analysis.cell_w, analysis.cell_h, analysis.anomaly.shape[:2], box)
        before = bool(analysis.anomaly[rows, cols].max() >= self.base.suspect_threshold)
        a_analysis, dist = self.adapted.analyse_distances(scan)
        rows, cols = self.base_slices(a_analysis.cell_w, a_analysis.cell_h, dist.shape, box)
        after = bool(self.adapted.cell_scores(a_analysis, dist)[rows, cols].max() >= 0.5)
        return before, after

    @staticmethod
    def base_slices(cell_w: float, cell_h: float, shape: tuple[int, ...], box: tuple[int, int, int, int],
                    ) -> tuple[slice, slice]:
        return _box_cells(box, cell_w, cell_h, (int(shape[0]), int(shape[1])))


def adapt(model: Path | None, clean_dir: Path, out: Path, *, sign: Callable[..., Any], name: str, version: str,
          samples_dir: Path | None = None, options: AdaptOptions = AdaptOptions(),
          progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Fit, calibrate, validate and write the package; returns the report. ``sign`` is
    `inference.package.build_package` with the key bound (so this module needs no key handling)."""
    from inference.package.loader import resolve_model_path
    from inference.runtime import DEFAULT_MODEL_PATH

    t_start = time.perf_counter()
    model_path = resolve_model_path(model) or DEFAULT_MODEL_PATH
    scans = readable_scans(clean_dir)
    if len(scans) < options.min_scans:
        raise ModelError(f"{clean_dir}: {len(scans)} readable clean scans, at least {options.min_scans} needed "
                         "(50 to 500 recommended)")
    fit = [p for p in scans if not held_out(p.stem, options.holdout)]
    val = [p for p in scans if held_out(p.stem, options.holdout)]
    if len(val) < 5 or len(fit) < options.folds * 2:
        raise ModelError(f"{clean_dir}: split gives {len(fit)} fitting and {len(val)} validation scans; add scans")
    adapted = AdaptedReviewer(model_path, options.threads)
    base = Reviewer(model_path, options.threads)
    normalization = _fit_normalization(base, fit, options)
    adapted.spec = adapted.spec.model_copy(update={"normalization": normalization})
    progress(f"input scales {list(base.spec.normalization.scale)} -> {list(normalization.scale)}")
    rows, dims = adapted.feature_shape[1], adapted.feature_shape[3]
    progress(f"{len(scans)} clean scans: {len(fit)} to fit, {len(val)} held out; features {adapted.feature_tensor} "
             f"({rows} rows x {dims})")

    # 1. per-fold sufficient statistics (one pass over the network)
    folds = [NormalAccumulator(rows, dims) for _ in range(options.folds)]
    stats = []
    network_max: list[float] = []
    empty_not_empty: list[float] = []  # cargo scores of the fitting scans declared empty
    for i, scan in enumerate(_scans(fit)):
        folds[i % options.folds].add(adapted.valid_features(scan))
        analysis = adapted.analyse(scan)
        stats.append(analysis.input_stats)
        network_max.append(float(analysis.anomaly.max()) if analysis.anomaly.size else 0.0)
        if _declared_empty(scan):
            empty_not_empty.append(float(adapted.not_empty_map(analysis).max()))
    total = folds[0]
    for acc in folds[1:]:
        total = total.plus(acc)
    t_fit = time.perf_counter()
    progress(f"features of {len(fit)} scans in {t_fit - t_start:.0f} s")

    # 2. unbiased clean scores: each scan under the model fitted without its fold
    cv_scores: list[float] = []
    for k in range(options.folds):
        adapted.normal = total.minus(folds[k]).model()
        for scan in _scans(fit[k::options.folds]):
            cv_scores.append(float(adapted.analyse_distances(scan)[1].max()))
    quantile = 1.0 - options.target_false_alarm / 2
    threshold = float(np.quantile(cv_scores, quantile))
    network_q = float(np.quantile(network_max, quantile))
    # The network keeps the shipped threshold unless this site's clean scans show it over-flags.
    # A network whose anomaly output is saturated on them (it "sees threats everywhere") has
    # nothing left to separate: only the feature distances decide then.
    network_threshold: float | None = None
    network_fit: dict[str, Any] = {"used": False, "site_quantile": round(network_q, 6)}
    if network_q < _NETWORK_SATURATED:
        network_threshold, network_fit = _site_threshold(base.suspect_threshold, network_max,
                                                         options.target_false_alarm / 2)
        network_fit["used"] = True
    not_empty_threshold, not_empty_fit = _site_threshold(base.not_empty_threshold, empty_not_empty,
                                                         options.target_false_not_empty)
    adapted.normal = total.model()
    adapted.distance_threshold = threshold
    adapted.network_threshold = network_threshold
    thresholds = {**base.spec.thresholds.model_dump(), "suspect": 0.5, "region": _REGION_SCORE,
                  "not_empty": not_empty_threshold}
    adapted.spec = adapted.spec.model_copy(update={"thresholds": adapted.spec.thresholds.model_copy(
        update=thresholds)})
    progress(f"distance threshold {threshold:.2f} ({quantile:.1%} of {len(cv_scores)} cross-validated clean "
             f"scores); network threshold "
             + (f"{network_threshold:.4f}" if network_threshold is not None else
                f"not used (its {quantile:.1%} clean quantile is {network_q:.4f}: saturated)")
             + f" (shipped: {base.suspect_threshold:.4f})")

    # 3. validation: held-out clean scans, and TIP threats projected into them
    judge = _Judge(base, adapted)
    fa_before = fa_after = 0
    empty_counts = {"n": 0, "before": 0, "after": 0}
    loaded_counts = {"n": 0, "before": 0, "after": 0}
    for scan in _scans(val):
        (b, a), (loaded_before, loaded_after) = judge.clean(scan, not_empty_threshold)
        fa_before += b
        fa_after += a
        counts = empty_counts if _declared_empty(scan) else loaded_counts
        counts["n"] += 1
        counts["before"] += loaded_before
        counts["after"] += loaded_after
    threats = extract_threats(tuple(base.spec.labels), options.threats_per_class, seed=options.seed)
    by_label: dict[str, list[ThreatObject]] = {}
    for threat in threats:
        by_label.setdefault(threat.label, []).append(threat)
    rng = np.random.default_rng(options.seed)
    detection: dict[str, dict[str, int]] = {}
    for label, objects in by_label.items():
        counts = {"n": 0, "before": 0, "after": 0}
        for j, scan in enumerate(_scans(val)):
            projected = project(scan, objects[j % len(objects)], rng, scan_id=f"{scan.scan_id}-tip-{label}")
            if projected is None:
                continue
            b, a = judge.threat(*projected)
            counts["n"] += 1
            counts["before"] += b
            counts["after"] += a
        detection[label] = counts
    field = _field_samples(samples_dir, judge) if samples_dir is not None else None
    envelope_spec, guard = _site_envelope(adapted, judge.signals)
    t_val = time.perf_counter()
    n_val = len(val)
    report: dict[str, Any] = {
        "base_model": {"name": base.model_info.name, "version": base.model_info.version,
                       "sha256": base.model_info.sha256},
        "features": {"tensor": adapted.feature_tensor, "shape": list(adapted.feature_shape),
                     "kind": "intermediate" if adapted.feature_shape[3] > len(base.spec.output.channels)
                     else "output_logits"},
        "clean_scans": len(scans), "fit_scans": len(fit), "validation_scans": n_val,
        "distance_threshold": round(threshold, 4),
        "network_threshold": round(network_threshold, 6) if network_threshold is not None else None,
        "target_false_alarm": options.target_false_alarm,
        "validation": {
            "false_alarm": {"before": _rate(fa_before, n_val), "after": _rate(fa_after, n_val)},
            "tip_detection": {label: {"before": _rate(c["before"], c["n"]), "after": _rate(c["after"], c["n"])}
                              for label, c in sorted(detection.items())},
            # Declared-empty boxes called loaded (false alarms of the declared-empty check), and the
            # other clean scans (as a rule loaded) still called loaded at the site threshold.
            "declared_empty_called_loaded": {"before": _rate(empty_counts["before"], empty_counts["n"]),
                                             "after": _rate(empty_counts["after"], empty_counts["n"])},
            "others_called_loaded": {"before": _rate(loaded_counts["before"], loaded_counts["n"]),
                                     "after": _rate(loaded_counts["after"], loaded_counts["n"])},
        },
        "guard": guard,
        "network_fit": network_fit,
        "not_empty_fit": not_empty_fit,
        "field_samples": field,
        "timing_s": {"features": round(t_fit - t_start, 1), "total": round(t_val - t_start, 1)},
        "options": {"holdout": options.holdout, "folds": options.folds, "threats_per_class": options.threats_per_class,
                    "seed": options.seed},
    }
    envelope = Envelope.fit(stats, source=f"{len(fit)} clean site scans from {clean_dir}")
    meta = {"format": ADAPTATION_FORMAT, "feature_tensor": adapted.feature_tensor,
            "feature_shape": list(adapted.feature_shape), "distance_threshold": threshold,
            "network_threshold": network_threshold,
            "score": "d^2 / (d^2 + distance_threshold^2); suspect at 0.5"}
    region = float(threshold * np.sqrt(_REGION_SCORE / (1 - _REGION_SCORE)))
    report["normalization"] = {"before": list(base.spec.normalization.scale), "after": list(normalization.scale)}
    files = {ADAPTATION_FILE: (json.dumps(meta, indent=1) + "\n").encode(),
             ADAPTATION_ARRAYS: adapted.normal.to_bytes(), ENVELOPE_FILE: envelope.to_json().encode(),
             REPORT_FILE: (json.dumps(report, indent=1) + "\n").encode()}
    figures = {"validation": report["validation"], "distance_threshold": round(threshold, 4),
               "region_distance": round(region, 4)}
    provenance = {"adapted_from": report["base_model"], "clean_scans": len(scans), "clean_dir": str(clean_dir),
                  "samples_dir": str(samples_dir) if samples_dir else None, "seed": options.seed,
                  "method": "per-row Gaussian (PaDiM-style) on network features; TIP validation"}
    files[REPORT_FILE] = (json.dumps(report, indent=1) + "\n").encode()
    sign(model_path, out, name=name, version=version, files=files, provenance=provenance, figures=figures,
         spec_update={"thresholds": thresholds, "normalization": normalization.model_dump(mode="json"),
                      "envelope": envelope_spec.model_dump(mode="json")})
    return report


def _site_envelope(adapted: AdaptedReviewer, signals: Sequence[dict[str, float]],
                   ) -> tuple[EnvelopeSpec, dict[str, Any]]:
    """The package's guard envelope: the shipped model's, widened to the site's held-out clean
    scans as the adapted review sees them (their noise, air level and flagged share; the adapted
    review was validated on exactly those), and how many of them the guard still calls unfamiliar
    (a broken detector row, channels in the wrong order: faults, not the scanner's character).
    The envelope is set on ``adapted``, whose guard judges them under it."""
    base = adapted.spec.envelope
    site = EnvelopeSpec.around(
        flagged=max((s["flagged_share"] for s in signals), default=0.0),
        noise=max((s["noise"] for s in signals), default=0.0),
        air=min((s["air_fraction"] for s in signals), default=1.0),
        inverted=max((s["inverted_share"] for s in signals), default=0.0),
        what=f"{len(signals)} held-out clean site scans under the adapted review")
    envelope = base.widened(site, "the site's scans")
    adapted.spec = adapted.spec.model_copy(update={"envelope": envelope})
    reasons = [r for r in (adapted.assess(s) for s in signals) if r is not None]
    return envelope, {"unavailable": len(reasons), "of": len(signals), "reasons": sorted(set(reasons))[:5],
                      "widened": {k: [getattr(base, k), getattr(envelope, k)] for k in
                                  ("max_flagged_share", "max_noise", "min_air_fraction")
                                  if getattr(base, k) != getattr(envelope, k)}}


def _fit_normalization(base: Reviewer, fit: Sequence[Path], options: AdaptOptions) -> NormalizationSpec:
    """Per-channel scales against the training world, relative to the first channel.

    Only how the channels relate is corrected (a spectrum): a different cargo mix, container
    geometry or pitch moves every channel's average alike, and is left to the normal-traffic
    model instead of being mistaken for a spectrum.
    """
    from inference.synthetic import generate_scan

    norm = base.spec.normalization
    channels = base.spec.input.channels
    reference = [base.analyse(generate_scan(options.seed + 500 + i).scan).input_stats
                 for i in range(options.reference_scans)]
    site = [base.analyse(scan).input_stats for scan in _scans(fit[: options.reference_scans * 2])]
    ratios = []
    for name in channels:
        key = f"mean_{name}"
        ref_mean = float(np.mean([r[key] for r in reference]))
        site_mean = float(np.mean([r[key] for r in site]))
        ratios.append(site_mean / ref_mean if ref_mean > 1e-6 and site_mean > 1e-6 else 1.0)
    scales = [norm.scale[0]]
    for i in range(1, len(channels)):
        factor = ratios[i] / ratios[0]
        factor = 1.0 if abs(factor - 1.0) < _SCALE_TOLERANCE else float(np.clip(factor, 0.25, 4.0))
        scales.append(round(norm.scale[i] * factor, 5))
    return norm.model_copy(update={"scale": tuple(scales)})


def _field_samples(samples_dir: Path, judge: _Judge) -> dict[str, Any]:
    """Officer-labelled anomalies among the gate's samples: detected before and after."""
    counts = {"n": 0, "before": 0, "after": 0}
    for meta_path in sorted(Path(samples_dir).glob("*.json")):
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))
            scan = load_scan(meta_path.with_name(str(raw.get("scan_file") or meta_path.with_suffix(".npz").name)))
        except (OSError, ValueError, ScanFormatError):
            continue
        if not isinstance(raw, dict) or raw.get("finding") == "clean":
            continue
        counts["n"] += 1
        counts["before"] += judge.base.review(scan).verdict == "suspect"
        analysis, dist = judge.adapted.analyse_distances(scan)
        counts["after"] += bool(judge.adapted.cell_scores(analysis, dist).max() >= 0.5)
    return {"anomalies": counts["n"], "before": _rate(counts["before"], counts["n"]),
            "after": _rate(counts["after"], counts["n"])}


def adapt_cli_summary(report: dict[str, Any]) -> Sequence[str]:
    v = report["validation"]
    lines = [f"validation on {report['validation_scans']} held-out clean scans: false alarms "
             f"{v['false_alarm']['before']['rate']:.1%} before, {v['false_alarm']['after']['rate']:.1%} after"]
    for label, d in v["tip_detection"].items():
        b, a = d["before"], d["after"]
        lines.append(f"  {label:14} TIP detection {b['rate'] if b['rate'] is not None else 0:.1%} before, "
                     f"{a['rate'] if a['rate'] is not None else 0:.1%} after ({a['of']} projected)")
    empty = v.get("declared_empty_called_loaded")
    if empty and empty["before"]["of"]:
        lines.append(f"  declared-empty boxes called loaded: {empty['before']['detected']}/{empty['before']['of']} "
                     f"before, {empty['after']['detected']}/{empty['after']['of']} after (not-empty threshold "
                     f"{report['not_empty_fit']['shipped']:.4f} -> {report['not_empty_fit']['threshold']:.4f})")
    return lines
