"""``python -m inference.training train|calibrate|evaluate``: see docs/retraining.md."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from inference.errors import SmartGateError

DEFAULT_TEST_SEED = 20261124


def _train(args: argparse.Namespace) -> int:
    from inference.training.train import TrainOptions, train

    opts = TrainOptions(seed=args.seed, scans=args.scans, val_scans=args.val_scans,
                        val_empty_scans=args.val_empty_scans, steps=args.steps,
                        batch=args.batch, out_dir=args.out, version=args.version,
                        cache_dir=None if args.no_cache else args.cache, samples=list(args.samples),
                        workers=args.workers, threads=args.threads,
                        target_false_alarm=args.target_false_alarm,
                        target_false_not_empty=args.target_false_not_empty)
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
    records = collect_synthetic(reviewer, "test", args.seed, args.scans) if args.scans else []
    for directory in args.samples:
        records += collect_field(reviewer, load_field_samples(directory))
    labels = reviewer.spec.labels
    metrics = compute_metrics(records, reviewer.suspect_threshold, reviewer.not_empty_threshold, labels)
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
    e.add_argument("--samples", type=Path, action="append", default=[])
    e.add_argument("--roc-dir", type=Path, default=None, help="write roc_anomaly.png / roc_not_empty.png here")
    e.add_argument("--records", type=Path, default=None, help="write per-scan records as JSON")
    e.add_argument("--write-metadata", action="store_true", help="store the figures in the model's metadata")
    e.set_defaults(func=_evaluate)
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
