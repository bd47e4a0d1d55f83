"""``python -m inference.training train|calibrate|evaluate|loo|adapt``: see docs/retraining.md and, for
``adapt`` (fine-tuning on one site's scans at the hub), docs/commissioning.md."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.errors import SmartGateError

if TYPE_CHECKING:
    from inference.training.train import TrainOptions

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


def _widths(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError("four positive channel counts, e.g. 32,56,80,112")
    return parts[0], parts[1], parts[2], parts[3]


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number, 0 or more")
    return value


def train_options(args: argparse.Namespace) -> TrainOptions:
    """The `TrainOptions` of a parsed ``train`` command line (``--round`` expanded)."""
    from inference.training.train import (
        ROUND_LEARNING_RATE,
        ROUND_PROJECT,
        ROUND_STEPS,
        TrainOptions,
        round_options,
    )

    d = TrainOptions()
    if args.round is not None and (args.continue_from is not None or args.mine_from is not None):
        raise SystemExit("--round PREVIOUS already continues from and mines with PREVIOUS: "
                         "drop --continue-from / --mine-from")
    if args.widen_to is not None and args.round is None and args.continue_from is None:
        raise SystemExit("--widen-to widens a continued network: give --continue-from or --round")
    if args.deepen and args.round is None and args.continue_from is None:
        raise SystemExit("--deepen deepens a continued network: give --continue-from or --round")

    def given(value: Any, default: Any) -> Any:
        return default if value is None else value

    opts = TrainOptions(seed=args.seed, scans=args.scans, val_scans=args.val_scans,
                        val_empty_scans=args.val_empty_scans, steps=given(args.steps, d.steps),
                        batch=args.batch, out_dir=args.out, version=args.version,
                        cache_dir=None if args.no_cache else args.cache, samples=list(args.samples),
                        workers=args.workers, threads=args.threads,
                        target_false_alarm=args.target_false_alarm,
                        target_false_not_empty=args.target_false_not_empty,
                        exclude=parse_region(args.exclude), widths=args.widths, peak_loss=args.peak_loss,
                        hard_cells=args.hard_cells, learning_rate=given(args.learning_rate, d.learning_rate),
                        init_weights=args.init_weights, continue_from=args.continue_from,
                        peak_per_class=args.peak_per_class, project=given(args.project, d.project),
                        project_objects=args.project_objects, project_anywhere=args.project_anywhere,
                        mine_from=args.mine_from, widen_to=args.widen_to, deepen=args.deepen,
                        hard_share=args.hard_share, hard_negatives=args.hard_negatives)
    if args.round is None:
        return opts
    return round_options(opts, args.round, steps=given(args.steps, ROUND_STEPS),
                         project=given(args.project, ROUND_PROJECT),
                         learning_rate=given(args.learning_rate, ROUND_LEARNING_RATE))


def _train(args: argparse.Namespace) -> int:
    from inference.training.train import train

    print(train(train_options(args)))
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
                "false_alarm_interval": m["false_alarm_interval"],
                "opaque": m["opacity"]["anomaly_free_opaque"],
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
        detection_by_place,
        operating_curve,
        plot_roc,
        records_to_json,
        target_verdicts,
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
    metrics["by_place"] = detection_by_place(records, reviewer.suspect_threshold, labels)
    metrics["operating_curve"] = operating_curve(records, labels)
    metrics["targets"] = target_verdicts(metrics)
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
                     test_seed=args.test_seed, out_dir=args.out, rounds=args.rounds, round_steps=args.round_steps,
                     round_project=args.round_project, round_seeds=tuple(args.round_seeds))
    table = slice_table(results)
    (args.out / "loo.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


def _adapt(args: argparse.Namespace) -> int:
    import functools

    from inference.package import build_package, load_private_key
    from inference.training.site import SiteOptions, fine_tune

    if not 0.05 <= args.holdout <= 0.5 or not 0.0 < args.target_false_alarm < 0.5:
        raise SystemExit("--holdout must be in [0.05, 0.5] and --target-false-alarm in (0, 0.5)")
    if args.steps < 1 or args.batch < 1 or args.tip_per_scan < 0 or not 0.0 <= args.synthetic_share < 1.0:
        raise SystemExit("--steps and --batch must be >= 1, --tip-per-scan >= 0, --synthetic-share in [0, 1)")
    key = load_private_key(args.key)  # before hours of training: a bad key fails now
    opts = SiteOptions(clean_dir=args.clean, version=args.version, name=args.name, model=args.model,
                       weights=args.weights, samples=list(args.samples), seed=args.seed, steps=args.steps,
                       batch=args.batch, learning_rate=args.learning_rate, holdout=args.holdout,
                       tip_per_scan=args.tip_per_scan, threats_per_class=args.threats_per_class,
                       synthetic_scans=args.synthetic_scans, synthetic_share=args.synthetic_share,
                       target_false_alarm=args.target_false_alarm, min_scans=args.min_scans,
                       representative=args.representative, threads=args.threads,
                       cache_dir=None if args.no_cache else args.cache,
                       exclude=parse_region(args.exclude) if args.exclude else None)
    report = fine_tune(opts, args.out, sign=functools.partial(build_package, key=key))
    v = report["validation"]
    print(f"{args.out}: {opts.name or report['base_model']['name']} {args.version}, fine-tuned from "
          f"{report['base_model']['name']} {report['base_model']['version']} in {report['timing_s']['total']:.0f} s")
    print(f"held out: {v['held_out_clean_scans']} clean site scans, {v['tip_scans']} TIP scans, "
          f"{v['field_samples']} field samples")
    for when in ("before", "after"):
        m = v[when]
        det = ", ".join(f"{lb} {d['rate']:.0%}" if d["rate"] is not None else f"{lb} -"
                        for lb, d in m["detection"].items())
        print(f"  {when:6} suspect >= {m['thresholds']['suspect']:.3f}: false alarms {m['false_alarm']:.1%}; "
              f"TIP detection {det}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from inference.training.train import (  # no TensorFlow import at module level
        ROUND_LEARNING_RATE,
        ROUND_PROJECT,
        ROUND_STEPS,
        TrainOptions,
    )

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
    t.add_argument("--steps", type=int, default=None,
                   help=f"training steps (default {d.steps}; with --round {ROUND_STEPS})")
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
    t.add_argument("--widths", type=_widths, default=d.widths, metavar="A,B,C,D",
                   help="channels of the network's four stages")
    t.add_argument("--peak-loss", type=float, default=d.peak_loss,
                   help="weight of the loss on each tile's highest clean and object cells (0: off)")
    t.add_argument("--hard-cells", type=int, default=d.hard_cells,
                   help="clean cells per tile that the peak loss pushes down")
    t.add_argument("--peak-per-class", action=argparse.BooleanOptionalAction, default=d.peak_per_class,
                   help="take the decision loss per anomaly class (keeps the region labels right); "
                        "--no-peak-per-class pools the classes")
    t.add_argument("--learning-rate", type=float, default=None,
                   help=f"peak learning rate (default {d.learning_rate}; with --round {ROUND_LEARNING_RATE})")
    t.add_argument("--project", type=float, default=None,
                   help="share of training tiles that get a projected object (0: no threat projection; "
                        f"default {d.project}, with --round {ROUND_PROJECT})")
    t.add_argument("--project-objects", type=int, default=d.project_objects,
                   help="rendered objects per projected class")
    t.add_argument("--project-anywhere", type=float, default=d.project_anywhere,
                   help="share of projected objects put anywhere in the band containers occupy (walls, "
                        "chassis, empty boxes) instead of into the tile's load; 0: into the load only")
    t.add_argument("--init-weights", type=Path, default=None,
                   help="start from these float weights (a .weights.h5 that train wrote) instead of at random")
    t.add_argument("--continue-from", type=Path, default=None, metavar="MODEL.tflite",
                   help="continue training this int8 model (its weights dequantized, batch norm folded): more "
                        "steps for a model whose float weights are gone, such as the shipped one")
    t.add_argument("--widen-to", type=_widths, default=None, metavar="A,B,C,D",
                   help="with --continue-from or --round: first widen the continued network to these stage "
                        "widths, computing the same function (new channels copy existing ones)")
    t.add_argument("--deepen", type=_count, default=0, metavar="N",
                   help="with --continue-from or --round: first add N bottleneck residual blocks after the "
                        "last convolution, computing the same function (each new block starts at zero)")
    t.add_argument("--mine-from", type=Path, default=None, metavar="MODEL.tflite",
                   help="before training, run this int8 model over the training set and centre a share of "
                        "the tiles on its hard spots: the worst clean spots and the objects it misses")
    t.add_argument("--round", type=Path, default=None, metavar="PREVIOUS.tflite",
                   help="one round of the shipped recipe (make model): --continue-from and --mine-from "
                        f"PREVIOUS with {ROUND_STEPS} steps, threat projection {ROUND_PROJECT} and peak "
                        f"learning rate {ROUND_LEARNING_RATE} unless given")
    t.add_argument("--hard-share", type=float, default=d.hard_share,
                   help="with --mine-from: share of the training tiles centred on a mined spot")
    t.add_argument("--hard-negatives", type=float, default=d.hard_negatives,
                   help="with --mine-from: share of the training scans whose worst clean spot is mined")
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
    lo.add_argument("--rounds", type=int, default=0,
                    help="rounds continued on mined hard examples after each base model (make model: 3)")
    lo.add_argument("--round-seeds", type=int, nargs="+", default=[], metavar="SEED",
                    help="after the rounds on the same scans, one round per seed on its new training scans "
                         "(the rounds of model 2.4.0; make model: ROUND_SEEDS other than SEED)")
    lo.add_argument("--round-steps", type=int, default=ROUND_STEPS, help="training steps per round")
    lo.add_argument("--round-project", type=float, default=ROUND_PROJECT,
                    help=f"share of a round's tiles with a projected object (default {ROUND_PROJECT}; "
                         "the 2.3.0 recipe: 0.3)")
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
    from inference.training.site import SiteOptions

    so = SiteOptions(clean_dir=Path(), version="0")
    a = sub.add_parser("adapt", help="fine-tune the network on one site's clean scans with threat image "
                                     "projection; writes a signed model package")
    a.add_argument("--clean", type=Path, required=True,
                   help="directory of the site's officer-confirmed clean scans (.npz, as smartgate model adapt)")
    a.add_argument("--samples", type=Path, action="append", default=[],
                   help="directory of labelled field samples (NAME.npz + NAME.json); repeatable")
    a.add_argument("--out", type=Path, required=True, help="new package directory")
    a.add_argument("--key", type=Path, required=True, help="Ed25519 private key that signs the package")
    a.add_argument("--version", required=True, help="package version (above every version the gates have)")
    a.add_argument("--name", default=None, help="package name (default: the base model's)")
    a.add_argument("--model", type=Path, default=None, help="base model (.tflite or package); default: shipped")
    a.add_argument("--weights", type=Path, default=None,
                   help="float weights of the base model (Keras checkpoint NAME.weights.h5 from `train`); "
                        "default: the one beside the base model, else dequantized from its .tflite")
    a.add_argument("--seed", type=int, default=so.seed)
    a.add_argument("--steps", type=int, default=so.steps)
    a.add_argument("--batch", type=int, default=so.batch)
    a.add_argument("--learning-rate", type=float, default=so.learning_rate)
    a.add_argument("--holdout", type=float, default=so.holdout, help="share of site scans held out for calibration")
    a.add_argument("--tip-per-scan", type=int, default=so.tip_per_scan, help="TIP training scans per clean scan")
    a.add_argument("--threats-per-class", type=int, default=so.threats_per_class,
                   help="generator threats cut out per class for training (half as many others for validation)")
    a.add_argument("--synthetic-scans", type=int, default=so.synthetic_scans,
                   help="generated training-world scans replayed against forgetting (0: none)")
    a.add_argument("--synthetic-share", type=float, default=so.synthetic_share,
                   help="share of batches drawn from them")
    a.add_argument("--exclude", action="append", default=[], metavar="CATEGORY=VALUE",
                   help="region of the randomized world left out of the replayed scans, repeatable "
                        "(default: the regions the base model was trained without)")
    a.add_argument("--target-false-alarm", type=float, default=so.target_false_alarm)
    a.add_argument("--min-scans", type=int, default=so.min_scans)
    a.add_argument("--representative", type=int, default=so.representative,
                   help="tiles for the int8 quantizer's ranges")
    a.add_argument("--threads", type=int, default=so.threads, help="TensorFlow intra-op threads")
    a.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "smartgate-train-cache")
    a.add_argument("--no-cache", action="store_true")
    a.set_defaults(func=_adapt)
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
