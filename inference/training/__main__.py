"""``python -m inference.training train|calibrate|evaluate|loo``: see docs/retraining.md."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.errors import SmartGateError

DEFAULT_TEST_SEED = 20261124


def parse_region(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``["energy=6/9", "noise=high"]`` -> ``{"energy": ("6/9",), "noise": ("high",)}``."""
    from inference.synthetic import CATEGORIES

    region: dict[str, tuple[str, ...]] = {}
    for item in items:
        category, _, value = item.partition("=")
        if category not in CATEGORIES or value not in CATEGORIES[category]:
            known = "; ".join(f"{c}={'|'.join(v)}" for c, v in CATEGORIES.items())
            raise SystemExit(f"bad region {item!r}; known: {known}")
        region[category] = (*region.get(category, ()), value)
    return region


def _train(args: argparse.Namespace) -> int:
    from inference.training.train import TrainOptions, train

    opts = TrainOptions(seed=args.seed, scans=args.scans, val_scans=args.val_scans,
                        val_empty_scans=args.val_empty_scans, steps=args.steps,
                        batch=args.batch, out_dir=args.out, version=args.version,
                        cache_dir=None if args.no_cache else args.cache, samples=list(args.samples),
                        workers=args.workers, threads=args.threads,
                        target_false_alarm=args.target_false_alarm,
                        target_false_not_empty=args.target_false_not_empty,
                        exclude=parse_region(args.exclude))
    path = train(opts)
    print(path)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from inference.runtime import DEFAULT_MODEL_PATH
    from inference.training.train import TrainOptions, recalibrate

    opts = TrainOptions(seed=args.seed, val_scans=args.val_scans, val_empty_scans=args.val_empty_scans,
                        samples=list(args.samples), target_false_alarm=args.target_false_alarm,
                        target_false_not_empty=args.target_false_not_empty)
    spec = recalibrate(args.model or DEFAULT_MODEL_PATH, opts)
    print(json.dumps({"thresholds": spec.thresholds.model_dump(), "validation": spec.metrics["validation"]},
                     indent=2))
    return 0


def _by_world(records: list[Any], suspect: float, not_empty: float, labels: Sequence[str]) -> dict[str, Any]:
    """The test figures split by each categorical knob of the randomized world."""
    from inference.synthetic import CATEGORIES
    from inference.training.evaluate import compute_metrics

    out: dict[str, Any] = {}
    for category, values in CATEGORIES.items():
        for value in values:
            subset = [r for r in records if f"{category}={value}" in r.world.split(";")]
            if not subset:
                continue
            m = compute_metrics(subset, suspect, not_empty, labels)
            out.setdefault(category, {})[value] = {
                "scans": len(subset),
                "detection": {lb: m["detection"][lb]["detection_rate"] for lb in labels},
                "false_alarm": m["false_alarm_scan_rate"],
                "declared_empty": m["declared_empty"]["accuracy"],
                "unavailable": m["unavailable_rate"],
            }
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from inference.model_spec import metadata_path_for
    from inference.reviewer import Reviewer
    from inference.runtime import DEFAULT_MODEL_PATH
    from inference.training.dataset import load_field_samples
    from inference.training.evaluate import (
        collect_field,
        collect_synthetic,
        compute_metrics,
        plot_roc,
        records_to_json,
    )

    model_path = args.model or DEFAULT_MODEL_PATH
    reviewer = Reviewer(model_path, num_threads=1)
    records = collect_synthetic(reviewer, "test", args.seed, args.scans, world=args.world,
                                only=parse_region(args.only) or None) if args.scans else []
    for directory in args.samples:
        records += collect_field(reviewer, load_field_samples(directory))
    labels = reviewer.spec.labels
    metrics = compute_metrics(records, reviewer.suspect_threshold, reviewer.not_empty_threshold, labels)
    metrics["by_world"] = _by_world(records, reviewer.suspect_threshold, reviewer.not_empty_threshold, labels)
    metrics["runtime"] = reviewer.backend
    metrics["test_split"] = {"base_seed": args.seed, "synthetic_scans": args.scans,
                             "field_dirs": [str(d) for d in args.samples]}
    if args.roc_dir is not None:
        metrics["auc"] = plot_roc(records, labels, reviewer.suspect_threshold, reviewer.not_empty_threshold,
                                  out_dir=args.roc_dir)
    if args.records is not None:
        records_to_json(records, args.records)
    print(json.dumps(metrics, indent=2))
    if args.write_metadata:
        meta_path = metadata_path_for(Path(model_path))
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        raw.setdefault("metrics", {})["test"] = metrics
        tmp = meta_path.with_name(meta_path.name + ".tmp")
        tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
        tmp.replace(meta_path)
    return 0


def _loo(args: argparse.Namespace) -> int:
    from inference.training.loo import DEFAULT_SLICES, run_joint, run_slices, slice_table
    from inference.training.train import TrainOptions

    base = TrainOptions(seed=args.seed, scans=args.scans, val_scans=args.val_scans,
                        val_empty_scans=args.val_empty_scans, steps=args.steps,
                        cache_dir=None if args.no_cache else args.cache, workers=args.workers, threads=args.threads)
    slices = tuple(parse_region([s]) for s in args.slice) if args.slice else DEFAULT_SLICES
    args.out.mkdir(parents=True, exist_ok=True)
    runner = run_joint if args.joint else run_slices
    results = runner(base, slices, test_scans=args.test_scans, control_scans=args.control_scans,
                     test_seed=args.test_seed, out_dir=args.out)
    table = slice_table(results)
    (args.out / "loo.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from inference.training.train import TrainOptions  # no TensorFlow import at module level

    d = TrainOptions()
    parser = argparse.ArgumentParser(prog="python -m inference.training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="generate data, train, quantize to int8, calibrate thresholds")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--scans", type=int, default=d.scans, help="generated training scans")
    t.add_argument("--val-scans", type=int, default=d.val_scans,
                   help="generated validation scans, 'random' mixture (thresholds)")
    t.add_argument("--val-empty-scans", type=int, default=d.val_empty_scans,
                   help="extra declared-empty validation scans, half truly empty (not-empty threshold)")
    t.add_argument("--steps", type=int, default=d.steps)
    t.add_argument("--batch", type=int, default=d.batch)
    t.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    t.add_argument("--version", default=d.version)
    t.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "smartgate-train-cache")
    t.add_argument("--no-cache", action="store_true")
    t.add_argument("--samples", type=Path, action="append", default=[],
                   help="directory of labelled field samples (NAME.npz + NAME.json); repeatable")
    t.add_argument("--workers", type=int, default=d.workers, help="processes generating scans")
    t.add_argument("--threads", type=int, default=d.threads, help="TensorFlow intra-op threads")
    t.add_argument("--exclude", action="append", default=[], metavar="CATEGORY=VALUE",
                   help="leave-one-out: hold this region of the randomized world out of training and "
                        "calibration (repeatable), e.g. energy=6/9")
    t.add_argument("--target-false-alarm", type=float, default=d.target_false_alarm,
                   help="calibration: highest share of anomaly-free validation scans called suspect")
    t.add_argument("--target-false-not-empty", type=float, default=d.target_false_not_empty,
                   help="calibration: highest share of empty declared-empty validation boxes called loaded")
    t.set_defaults(func=_train)
    c = sub.add_parser("calibrate", help="re-pick the thresholds of an existing model on validation scans "
                                         "(and held-out field samples); rewrites its metadata only")
    c.add_argument("--model", type=Path, default=None)
    c.add_argument("--seed", type=int, default=d.seed, help="the seed the model was trained with (val splits)")
    c.add_argument("--val-scans", type=int, default=d.val_scans)
    c.add_argument("--val-empty-scans", type=int, default=d.val_empty_scans)
    c.add_argument("--samples", type=Path, action="append", default=[])
    c.add_argument("--target-false-alarm", type=float, default=d.target_false_alarm)
    c.add_argument("--target-false-not-empty", type=float, default=d.target_false_not_empty)
    c.set_defaults(func=_calibrate)
    e = sub.add_parser("evaluate", help="measure the int8 model with LiteRT on held-out scans")
    e.add_argument("--model", type=Path, default=None)
    e.add_argument("--scans", type=int, default=2000, help="generated test scans (0: field samples only)")
    e.add_argument("--seed", type=int, default=DEFAULT_TEST_SEED)
    e.add_argument("--world", choices=("random", "nominal"), default="random",
                   help="randomized worlds (default) or the reference scanner")
    e.add_argument("--only", action="append", default=[], metavar="CATEGORY=VALUE",
                   help="test only inside this region of the randomized world (leave-one-out slices)")
    e.add_argument("--samples", type=Path, action="append", default=[])
    e.add_argument("--roc-dir", type=Path, default=None, help="write roc_anomaly.png / roc_not_empty.png here")
    e.add_argument("--records", type=Path, default=None, help="write per-scan records as JSON")
    e.add_argument("--write-metadata", action="store_true", help="store the figures in the model's metadata")
    e.set_defaults(func=_evaluate)
    lo = sub.add_parser("loo", help="leave-one-out: per slice of the randomized world, train without it "
                                    "(reduced budget) and test on it")
    lo.add_argument("--slice", action="append", default=[], metavar="CATEGORY=VALUE",
                    help="a region to hold out (repeatable, one model each; default: energy=6/9, "
                         "chassis=flatbed, container=reefer, noise=high)")
    lo.add_argument("--joint", action="store_true",
                    help="one model with every slice held out at once, each slice tested on its own scans")
    lo.add_argument("--seed", type=int, default=d.seed)
    lo.add_argument("--scans", type=int, default=d.scans, help="training scans before the slice is removed")
    lo.add_argument("--steps", type=int, default=2000, help="training steps per slice (reduced budget)")
    lo.add_argument("--val-scans", type=int, default=400)
    lo.add_argument("--val-empty-scans", type=int, default=200)
    lo.add_argument("--test-scans", type=int, default=400, help="test scans drawn inside each slice")
    lo.add_argument("--control-scans", type=int, default=400, help="test scans drawn outside each slice")
    lo.add_argument("--test-seed", type=int, default=DEFAULT_TEST_SEED)
    lo.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "smartgate-loo")
    lo.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "smartgate-train-cache")
    lo.add_argument("--no-cache", action="store_true")
    lo.add_argument("--workers", type=int, default=d.workers)
    lo.add_argument("--threads", type=int, default=d.threads)
    lo.set_defaults(func=_loo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SmartGateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
