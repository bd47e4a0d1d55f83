"""Site adaptation on the leave-one-out slices: scanners the base model never saw.

The base model is the one ``python -m inference.training loo --joint`` trains with every slice
of the randomized world held out at once (an energy pair, a chassis family, a container type, a
noise regime). Each slice stands for a new site: its scans lie inside the slice and outside
the other held-out slices, so they differ from everything the model saw in one category.

Per slice:

1. ``--scans`` clean scans of the site (70 % loaded, 30 % empty) are generated and
   ``smartgate model adapt --model BASE`` runs on them as a child process (the gate's runtime
   dependencies only). Its report gives false alarms and threat-image-projection (TIP) detection
   on its own held-out split, before and after.
2. An independent test set of the same site, never shown to the adaptation (other seeds):
   ``--test-clean`` clean scans (70 % loaded, 30 % empty boxes declared empty) and
   ``--test-anomalies`` generated scans per anomaly class, each reviewed by the base model and
   by the adapted package as the gate reviews them, plus ``--test-anomalies`` boxes declared
   empty but loaded. A clean scan called ``suspect`` (an anomaly, or an empty box called loaded)
   or ``unavailable`` is a false alarm; a misdeclared box is caught when called ``suspect``; an
   object counts as detected when the verdict is ``suspect`` with a region on it.

With ``--finetune`` step 1 is the hub's fine-tuning instead (``python -m inference.training adapt``
in the training venv: ``--steps`` steps on threat image projection into the site's scans, with
``--synthetic-scans`` generated scans replayed from the base model's world: the regions its
metadata records it was trained without, or for a model that records none every slice tested),
and the same independent test follows.

    .venv/bin/python benchmarks/bench_adapt_slices.py --model /tmp/smartgate-loo/joint/xray_anomaly.tflite \\
        [--scans 100] [--test-clean 100] [--test-anomalies 30] [--slice energy=6/9 ...] [--json FILE] \\
        [--finetune [--steps 1500] [--synthetic-scans 400]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.package import generate_key
from inference.package.loader import open_reviewer
from inference.reviewer import Reviewer
from inference.scan import save_scan
from inference.synthetic import ANOMALY_CLASSES, generate_scenario
from inference.training.evaluate import overlaps
from inference.training.loo import DEFAULT_SLICES, other_slices, slice_name

ROOT = Path(__file__).resolve().parent.parent
Region = dict[str, tuple[str, ...]]


def _parse(text: str) -> Region:
    category, _, value = text.partition("=")
    if not value:
        raise SystemExit(f"--slice wants CATEGORY=VALUE, got {text!r}")
    return {category: tuple(value.split("|"))}


def _judge(reviewer: Reviewer, syn: Any, group: str) -> bool:
    """Clean or empty scan: called suspect (a false alarm). Declared empty but loaded: called
    suspect (the misdeclaration caught). Anomaly: suspect with a region on an object."""
    result = reviewer.review(syn.scan)
    if result.verdict == "unavailable":
        return group in ("clean", "empty")  # a false alarm on a clean scan, a miss otherwise
    if result.verdict != "suspect":
        return False
    if group not in ANOMALY_CLASSES:
        return True
    boxes = [(r.x, r.y, r.w, r.h) for r in syn.regions]
    return any(overlaps((g.x, g.y, g.w, g.h), b) for g in result.regions for b in boxes)


def _test(reviewers: dict[str, Reviewer], region: Region, others: Region, seed: int, clean: int,
          per_class: int) -> dict[str, Any]:
    counts: dict[str, dict[str, list[int]]] = {name: {} for name in reviewers}
    plan = [("clean", "clean", seed + i) if i % 10 < 7 else ("empty", "empty", seed + i) for i in range(clean)]
    for k, label in enumerate(ANOMALY_CLASSES):
        plan += [(label, label, seed + 50_000 * (k + 1) + i) for i in range(per_class)]
    plan += [("misdeclared", "misdeclared_empty", seed + 300_000 + i) for i in range(per_class)]
    for group, kind, s in plan:
        syn = generate_scenario(s, kind, world="random", only=region, exclude=others or None)
        if group in ANOMALY_CLASSES and not syn.regions:
            continue  # the object fell outside the detector column
        for name, reviewer in reviewers.items():
            hit = _judge(reviewer, syn, group)
            counts[name].setdefault(group, [0, 0])
            counts[name][group][0] += int(hit)
            counts[name][group][1] += 1
    return {name: {g: {"hits": h, "of": n, "rate": round(h / n, 4) if n else None} for g, (h, n) in c.items()}
            for name, c in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True, help="the joint leave-one-out model (.tflite)")
    parser.add_argument("--slice", action="append", default=[], metavar="CATEGORY=VALUE",
                        help="held-out slices (default: those of inference.training.loo)")
    parser.add_argument("--scans", type=int, default=100, help="clean site scans given to the adaptation")
    parser.add_argument("--test-clean", type=int, default=100)
    parser.add_argument("--test-anomalies", type=int, default=30, help="test scans per anomaly class")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=9100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--finetune", action="store_true",
                        help="fine-tune the network at the hub (training venv) instead of the gate's adaptation")
    parser.add_argument("--steps", type=int, default=1500, help="with --finetune: training steps")
    parser.add_argument("--synthetic-scans", type=int, default=400, help="with --finetune: replayed generated scans")
    parser.add_argument("--train-python", type=Path, default=ROOT / ".venv-train" / "bin" / "python",
                        help="with --finetune: the training venv's interpreter")
    args = parser.parse_args()
    if args.finetune and not args.train_python.is_file():
        print(f"bench_adapt_slices: no training venv at {args.train_python} (make .venv-train/.installed-train)")
        return 1
    slices = tuple(_parse(s) for s in args.slice) or DEFAULT_SLICES
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-adapt-slices-") as tmp_name:
        tmp = Path(tmp_name)
        generate_key(tmp / "key", tmp / "key.pub")
        base = Reviewer(args.model, num_threads=1)
        for k, region in enumerate(slices):
            name = slice_name(region)
            others = other_slices(slices, region)
            site = tmp / f"site-{k}"
            site.mkdir()
            seed = args.seed + 1_000_000 * k
            for i in range(args.scans):
                syn = generate_scenario(seed + i, "clean" if i % 10 < 7 else "empty", world="random",
                                        only=region, exclude=others or None)
                save_scan(syn.scan, site / f"site-{i:04d}.npz")
            out = tmp / f"pkg-{k}"
            t0 = time.perf_counter()
            common = ["--clean", str(site), "--model", str(args.model), "--out", str(out), "--key", str(tmp / "key"),
                      "--version", "9.0.0", "--threads", str(args.threads)]
            if args.finetune:
                # The replay leaves out what the base model was trained without: its own record
                # (`training.exclude`, which `adapt` reads), else every slice tested here.
                recorded = "exclude" in base.spec.training
                held_out = [] if recorded else [f"--exclude={c}={v}" for r in slices for c, values in r.items()
                                                for v in values]
                command = [str(args.train_python), "-m", "inference.training", "adapt", *common,
                           "--steps", str(args.steps), "--synthetic-scans", str(args.synthetic_scans), *held_out]
            else:
                command = [sys.executable, "-m", "gate_controller", "model", "adapt", *common]
            run = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT,
                                 env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
            wall = time.perf_counter() - t0
            if run.returncode != 0:
                print(run.stdout, run.stderr, file=sys.stderr)
                return 1
            report = json.loads((out / "report.json").read_text())
            adapted = open_reviewer(out, num_threads=1)
            test = _test({"before": base, "after": adapted}, region, others, seed + 500_000,
                         args.test_clean, args.test_anomalies)
            results[name] = {"adapt_s": round(wall, 1), "report": report, "test": test}
            print(f"{name}: {'fine-tuning' if args.finetune else 'adapt'} {wall:.1f} s on {args.scans} scans")
            if args.finetune:
                _print_finetune(report)
            else:
                _print_adapt(report)
            for group in ("clean", "empty", "misdeclared", *ANOMALY_CLASSES):
                b, a = test["before"].get(group), test["after"].get(group)
                if b is None or a is None:
                    continue
                what = "false alarms" if group in ("clean", "empty") else "detected"
                print(f"  test {group:13} {what:12} {b['hits']}/{b['of']} before, {a['hits']}/{a['of']} after")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _print_adapt(report: dict[str, Any]) -> None:
    """The gate's adaptation report (`smartgate model adapt`)."""
    v = report["validation"]
    fa = v["false_alarm"]
    print(f"  adapt report  false alarms {fa['before']['detected']}/{fa['before']['of']} before, "
          f"{fa['after']['detected']}/{fa['after']['of']} after; TIP "
          + ", ".join(f"{lb} {d['before']['detected']}/{d['before']['of']} -> "
                      f"{d['after']['detected']}/{d['after']['of']}" for lb, d in v["tip_detection"].items()))
    nf = report["not_empty_fit"]
    print(f"  thresholds    network {report['network_fit']}, not-empty {nf['shipped']} -> {nf['threshold']}")


def _print_finetune(report: dict[str, Any]) -> None:
    """The hub's fine-tuning report (`python -m inference.training adapt`)."""
    v, t = report["validation"], report["timing_s"]
    print(f"  fine-tuning   {report['training']['steps']} steps; data {t['data']} s, training {t['training']} s, "
          f"calibration {t['calibration']} s; peak RSS {report['peak_rss_mb']} MB")
    for when in ("before", "after"):
        m = v[when]
        det = ", ".join(f"{lb} {d['detected']}/{d['objects']}" for lb, d in m["detection"].items())
        print(f"  report {when:6} false alarms {m['false_alarm']:.1%} on held-out site scans; TIP {det}")
    print(f"  thresholds    {report['thresholds']}")


if __name__ == "__main__":
    sys.exit(main())
