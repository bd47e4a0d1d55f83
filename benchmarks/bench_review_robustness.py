"""Image review under scanner perturbations: the shipped model, one threshold set, every scan.

The same held-out scans (reference scanner, seed stream ``robust``: clean loaded boxes, each
anomaly class, declared-empty boxes half truly empty and half loaded) are reviewed once per
column, each column a perturbation of the pixels as another scanner or a worn detector would
deliver them:

==================  ==========================================================================
none                the reference scans (chassis present)
8-bit               the 16-bit value >> 8 (allowed by GFP/1)
3 dead rows         three detector rows at 0
3 stuck rows        three detector rows at full scale
noise x3            extra Gaussian noise: three times the detector's photon + read noise
gain drift 4 %      per-row gain non-uniformity, sigma 4 %, per channel
air x0.6            the whole scan darker: air level x 0.6
low energy x0.85    the low-energy channel x 0.85
single energy       the high-energy channel only
chassis absent      the same loads regenerated without a trailer chassis in view
wheels in view      the same loads regenerated with the detector column reaching down to 0.3 m
                    above the ground (trailer beams, axles, wheels and landing gear in view)
genset              ... and a genset hung under the trailer (equipment the model may never
                    have seen: engine block, alternator, battery; `inference.synthetic.equipment`)
tail lift           ... and a tail lift at the rear (platform, arms, cylinders, power pack)
==================  ==========================================================================

Per column: false alarms on anomaly-free scans (an anomaly score at or above the suspect
threshold, or verdict ``unavailable``), detection per class (the object's own region reaches
the threshold, `inference.training.evaluate`), declared-empty accuracy, the anomaly-free scans
with an area the beam did not cross (`inference.opacity`: sent to an officer, reported apart from
the model's false alarms), and how many scans the guard called unfamiliar (each counts as a
miss or a false alarm). No threshold depends on the column and no scan is skipped. Targets
(issue 13): every class >= 95 %, false alarms <= 2 %, declared empty >= 99 %. A missed target
is marked "within sampling noise" when the 95 % Wilson interval of its rate still reaches the
target (`inference.training.evaluate.target_verdicts`): with 166 clean scans one scan is 0.6
points.

    .venv/bin/python benchmarks/bench_review_robustness.py [--clean 100] [--per-class 50] [--empty 60]
        [--json out.json] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.reviewer import Reviewer
from inference.scan import Scan
from inference.synthetic import ANOMALY_CLASSES, SyntheticScan, World, generate_scenario, nominal_world
from inference.training.dataset import split_seed
from inference.training.evaluate import ScanRecord, compute_metrics, score_scan, target_verdicts

BASE_SEED = 20261206

Perturbation = Callable[[Scan, np.random.Generator], Scan]


def _with(scan: Scan, pixels: np.ndarray[Any, Any], bits: int | None = None) -> Scan:
    return Scan(pixels=np.ascontiguousarray(pixels), scan_id=scan.scan_id, bits=bits or scan.bits,
                pixel_mm=scan.pixel_mm, declared=scan.declared, meta=scan.meta)


def _rows(scan: Scan, rng: np.random.Generator, value: int) -> Scan:
    pixels = scan.pixels.copy()
    pixels[:, rng.choice(scan.rows, size=3, replace=False), :] = value
    return _with(scan, pixels)


def _noise3(scan: Scan, rng: np.random.Generator) -> Scan:
    signal = scan.pixels.astype(np.float32)
    sigma = np.sqrt(np.maximum(signal, 0.0) + 2.5 ** 2) * np.float32(np.sqrt(8.0))  # 3x in total
    noisy = signal + rng.standard_normal(size=signal.shape, dtype=np.float32) * sigma
    return _with(scan, np.clip(np.rint(noisy), 0, 65535).astype(np.uint16))


def _gain(scan: Scan, rng: np.random.Generator) -> Scan:
    gain = 1.0 + rng.normal(0.0, 0.04, size=(scan.channels, scan.rows, 1))
    return _with(scan, np.clip(scan.pixels * gain, 0, 65535).astype(np.uint16))


def _scale(factor: float, channels: slice) -> Perturbation:
    def apply(scan: Scan, _rng: np.random.Generator) -> Scan:
        pixels = scan.pixels.astype(np.float32)
        pixels[channels] *= np.float32(factor)
        return _with(scan, np.clip(np.rint(pixels), 0, 65535).astype(np.uint16))
    return apply


PERTURBED: dict[str, Perturbation] = {
    "none": lambda s, _r: s,
    "8-bit": lambda s, _r: _with(s, (s.pixels >> 8).astype(np.uint8), bits=8),
    "3 dead rows": lambda s, r: _rows(s, r, 0),
    "3 stuck rows": lambda s, r: _rows(s, r, 65535),
    "noise x3": _noise3,
    "gain drift 4 %": _gain,
    "air x0.6": _scale(0.6, slice(None)),
    "low energy x0.85": _scale(0.85, slice(1, 2)),
    "single energy": lambda s, _r: _with(s, s.pixels[:1]),
}
LOW_SPAN_MM = 300.0
# Columns regenerated from the same seed in another world (per scan seed), not pixel perturbations.
REGENERATED: dict[str, Callable[[int], World]] = {
    "chassis absent": lambda _seed: nominal_world(chassis="none"),
    "wheels in view": lambda _seed: nominal_world(span_bottom_mm=LOW_SPAN_MM),
    "genset": lambda seed: nominal_world(span_bottom_mm=LOW_SPAN_MM, equipment="genset", equipment_seed=seed),
    "tail lift": lambda seed: nominal_world(span_bottom_mm=LOW_SPAN_MM, equipment="tail_lift", equipment_seed=seed),
}


def _plan(clean: int, per_class: int, empty: int) -> list[tuple[int, str]]:
    kinds = ["clean"] * clean
    for label in ANOMALY_CLASSES:
        kinds += [label] * per_class
    kinds += ["empty", "misdeclared_empty"] * (empty // 2)
    return [(split_seed("test", BASE_SEED, i), kind) for i, kind in enumerate(kinds)]


def _record(reviewer: Reviewer, syn: SyntheticScan, scan: Scan) -> ScanRecord:
    return score_scan(reviewer, scan, [r.as_dict() for r in syn.regions], source="robustness", cargo=syn.cargo,
                      not_empty_truth=syn.not_empty, has_anomaly=bool(syn.regions))


def run(reviewer: Reviewer, plan: list[tuple[int, str]]) -> dict[str, dict[str, Any]]:
    records: dict[str, list[ScanRecord]] = {name: [] for name in (*PERTURBED, *REGENERATED)}
    for seed, kind in plan:
        syn = generate_scenario(seed, kind)
        rng = np.random.default_rng([seed, 0xB0B])
        for name, perturb in PERTURBED.items():
            records[name].append(_record(reviewer, syn, perturb(syn.scan, rng)))
        for name, world in REGENERATED.items():
            other = generate_scenario(seed, kind, world=world(seed))
            records[name].append(_record(reviewer, other, other.scan))
    labels = reviewer.spec.labels
    out = {}
    for name, recs in records.items():
        m = compute_metrics(recs, reviewer.suspect_threshold, reviewer.not_empty_threshold, labels)
        out[name] = {
            "false_alarm": m["false_alarm_scan_rate"],
            "false_alarm_interval": m["false_alarm_interval"],
            "opaque": m["opacity"]["anomaly_free_opaque"],
            "detection": {lb: m["detection"][lb]["detection_rate"] for lb in labels},
            "declared_empty": m["declared_empty"]["accuracy"],
            "unavailable": sum(r.unavailable for r in recs),
            "scans": len(recs),
            "latency_p95_ms": m["latency_ms"]["p95"],
            "targets": target_verdicts(m),
        }
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    labels = list(next(iter(results.values()))["detection"])
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines.append("| false alarms % | " + " | ".join(pct(results[n]["false_alarm"]) for n in names) + " |")
    lines.append("| false alarms, 95 % interval | " + " | ".join(
        "-" if results[n].get("false_alarm_interval") is None
        else "{}-{}".format(*(pct(v) for v in results[n]["false_alarm_interval"])) for n in names) + " |")
    lines.append("| clean, opaque area % | " + " | ".join(pct(results[n].get("opaque")) for n in names) + " |")
    for lb in labels:
        lines.append(f"| {lb} % | " + " | ".join(pct(results[n]["detection"][lb]) for n in names) + " |")
    lines.append("| declared empty % | " + " | ".join(pct(results[n]["declared_empty"]) for n in names) + " |")
    lines.append("| unfamiliar (scans) | " + " | ".join(str(results[n]["unavailable"]) for n in names) + " |")
    return "\n".join(lines)


def misses(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per missed target; "within sampling noise" when the interval still reaches it."""
    out = []
    for name, r in results.items():
        for key, v in r["targets"].items():
            if v["met"] is not False:
                continue
            what = "false alarms" if key == "false_alarm" else key.replace("detection.", "").replace("_", " ")
            sign = ">" if key == "false_alarm" else "<"
            lo, hi = v["interval"]
            noise = "" if v["decided"] else ", within sampling noise"
            out.append(f"{name}: {what} {v['rate']:.1%} {sign} {v['target']:.0%} "
                       f"(95 % interval {lo:.1%}-{hi:.1%}{noise})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=100, help="clean loaded boxes")
    parser.add_argument("--per-class", type=int, default=50, help="scans per anomaly class")
    parser.add_argument("--empty", type=int, default=60, help="declared-empty boxes (half loaded)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    reviewer = Reviewer(args.model, num_threads=1)
    t0 = time.monotonic()
    results = run(reviewer, _plan(args.clean, args.per_class, args.empty))
    print(f"model {reviewer.model_info.name} {reviewer.model_info.version}; "
          f"{args.clean} clean + {args.per_class} per class + {args.empty} declared empty per column; "
          f"{time.monotonic() - t0:.0f} s")
    print(table(results))
    missed = misses(results)
    print("targets missed:" if missed else "every target met", *missed, sep="\n  ")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
