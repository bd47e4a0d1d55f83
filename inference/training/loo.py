"""Leave-one-out over the randomized world: how the review holds on a region it never saw.

For each slice (a region of the randomization space: an energy pair, a chassis family, a
container type, a noise regime) a model is trained with every scan of that region removed from
its training and calibration sets, then tested on scans drawn *only* from that region, and, as
a control at the same budget, on the whole test stream. The shipped model's budget (12000 scans,
8000 steps and three rounds of 6000, about 2 h on the 2-core reference machine) is too much to
repeat per slice, so slices train with a documented reduced budget (``--steps``,
``--round-steps``, ``--val-scans``); the control figures show what that budget alone costs.

``--joint`` trains a single model with every slice held out at once (the training set loses
the union of the regions) and tests each slice on scans that lie in that slice but in none of
the others; the control stream lies in none of them. Each slice then differs from everything
the model saw in its own category only, as in a per-slice run, for one training instead of
four, so the budget can stay close to the shipped model's.

``--rounds N`` follows each held-out base model with N rounds of training continued on the hard
examples the previous model mines from the same held-out training set, as `make model` does for
the shipped model (docs/retraining.md), so the protocol measures the shipped recipe; the base
model is measured on the same test sets (row ``base``), so the rounds' own effect shows.
``--round-seeds S ...`` then adds one round per seed on that seed's **new** training scans (the
held-out regions removed from them too), mined by the previous model and calibrated on the seed's
own validation scans, as the rounds of model 2.4.0 were made (`make model`'s ``ROUND_SEEDS`` other
than ``SEED``).

``python -m inference.training loo`` runs it; the results go to a JSON file and a Markdown
table (docs/image-review.md quotes it).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.training.train import ROUND_PROJECT, ROUND_STEPS, TrainOptions, round_options, train

if TYPE_CHECKING:
    from inference.reviewer import Reviewer
    from inference.training.evaluate import ScanRecord

__all__ = ["DEFAULT_SLICES", "other_slices", "run_joint", "run_slices", "slice_name", "slice_table"]

_log = logging.getLogger(__name__)

DEFAULT_SLICES: tuple[dict[str, tuple[str, ...]], ...] = (
    {"energy": ("6/9",)},
    {"chassis": ("flatbed",)},
    {"container": ("reefer",)},
    {"noise": ("high",)},
)


def slice_name(region: dict[str, tuple[str, ...]]) -> str:
    return ",".join(f"{c}={'|'.join(v)}" for c, v in region.items())


def _figures(metrics: dict[str, Any]) -> dict[str, Any]:
    det = {label: v["detection_rate"] for label, v in metrics["detection"].items()}
    return {"scans": metrics["scans"], "detection": det, "false_alarm": metrics["false_alarm_scan_rate"],
            "declared_empty": metrics["declared_empty"]["accuracy"], "unavailable": metrics["unavailable_rate"]}


def run_slices(base: TrainOptions, slices: tuple[dict[str, tuple[str, ...]], ...], *, test_scans: int,
               control_scans: int, test_seed: int, out_dir: Path, rounds: int = 0,
               round_steps: int = ROUND_STEPS, round_project: float = ROUND_PROJECT,
               round_seeds: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Train one model per slice (held out) and measure it on the slice and on the whole stream."""
    from inference.training.evaluate import collect_synthetic

    results: list[dict[str, Any]] = []
    for region in slices:
        name = slice_name(region)
        slice_dir = out_dir / name.replace("/", "-").replace("=", "_").replace(",", "+")
        stages, train_s = _train_stages(replace(base, exclude=dict(region), out_dir=slice_dir,
                                                version=f"loo-{name}"), rounds, round_steps, round_project,
                                         round_seeds)
        held = {key: _measure(r, collect_synthetic(r, "test", test_seed, test_scans, only=region))
                for key, r in stages.items()}
        control = {key: _measure(r, collect_synthetic(r, "test", test_seed, control_scans, exclude=region))
                   for key, r in stages.items()}
        _keep(results, _row(name, stages[""], train_s, base.steps, held=held, control=control), out_dir)
    return results


def _train_stages(opts: TrainOptions, rounds: int = 0, round_steps: int = ROUND_STEPS,
                  round_project: float = ROUND_PROJECT, round_seeds: tuple[int, ...] = (),
                  ) -> tuple[dict[str, Reviewer], float]:
    """Train with ``opts``, then ``rounds`` rounds continued on mined hard examples of the same
    training scans, then one round per seed of ``round_seeds`` on that seed's new scans (never
    cached, as `make model` makes them), every stage with the same region held out. The reviewers
    a row measures: the last model's (key ``""``) and, after rounds, the base model's
    (``"base"``), so the rounds' own effect on a held-out slice can be read off; and the seconds
    it all took."""
    from inference.reviewer import Reviewer

    t0 = time.monotonic()
    model_path = base_path = train(opts)
    for r in range(1, rounds + 1):
        model_path = train(round_options(replace(opts, out_dir=opts.out_dir / f"round{r}"), model_path,
                                         steps=round_steps, project=round_project))
    for seed in round_seeds:
        model_path = train(round_options(replace(opts, seed=seed, cache_dir=None, out_dir=opts.out_dir / f"seed{seed}"),
                                         model_path, steps=round_steps, project=round_project))
    seconds = time.monotonic() - t0
    stages = {"": Reviewer(model_path, num_threads=1)}
    if rounds or round_seeds:
        stages["base"] = Reviewer(base_path, num_threads=1)
    return stages, seconds


def _measure(reviewer: Reviewer, records: list[ScanRecord]) -> dict[str, Any]:
    from inference.training.evaluate import compute_metrics

    return _figures(compute_metrics(records, reviewer.suspect_threshold, reviewer.not_empty_threshold,
                                    reviewer.spec.labels))


def _row(name: str, reviewer: Reviewer, train_s: float, steps: int, *, held: dict[str, dict[str, Any]],
         control: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A slice's row; ``held`` and ``control`` hold figures per stage (`_train_stages`)."""
    row = {
        "slice": name,
        "train_s": round(train_s, 1),
        "steps": steps,
        "continued_from": reviewer.spec.training.get("continued_from"),
        "model": str(reviewer.model_path),
        "held_out": held[""],
        "control": control[""],
        "thresholds": {"suspect": reviewer.suspect_threshold, "not_empty": reviewer.not_empty_threshold},
        "training": reviewer.spec.training.get("data"),
    }
    if "base" in held:
        row["base"] = {"held_out": held["base"], "control": control["base"]}
    return row


def _keep(results: list[dict[str, Any]], row: dict[str, Any], out_dir: Path) -> None:
    """Log a slice's row and rewrite ``loo.json`` with every row so far (a long run keeps its results)."""
    _log.info("slice %s: %s", row["slice"], json.dumps(row))
    results.append(row)
    (out_dir / "loo.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def _union(slices: tuple[dict[str, tuple[str, ...]], ...]) -> dict[str, tuple[str, ...]]:
    union: dict[str, tuple[str, ...]] = {}
    for region in slices:
        for category, values in region.items():
            union[category] = tuple(dict.fromkeys((*union.get(category, ()), *values)))
    return union


def other_slices(slices: tuple[dict[str, tuple[str, ...]], ...], region: dict[str, tuple[str, ...]],
            ) -> dict[str, tuple[str, ...]]:
    """The union of the slices other than ``region``, minus ``region``'s own values."""
    rest = _union(tuple(r for r in slices if r is not region))
    return {c: tuple(v for v in values if v not in region.get(c, ())) for c, values in rest.items()
            if any(v not in region.get(c, ()) for v in values)}


def run_joint(base: TrainOptions, slices: tuple[dict[str, tuple[str, ...]], ...], *, test_scans: int,
              control_scans: int, test_seed: int, out_dir: Path, rounds: int = 0,
              round_steps: int = ROUND_STEPS, round_project: float = ROUND_PROJECT,
              round_seeds: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """One model trained without any of the slices; each slice tested on its own scans."""
    from inference.training.evaluate import collect_synthetic

    union = _union(slices)
    stages, train_s = _train_stages(replace(base, exclude=union, out_dir=out_dir / "joint", version="loo-joint"),
                                    rounds, round_steps, round_project, round_seeds)
    control = {key: _measure(r, collect_synthetic(r, "test", test_seed, control_scans, exclude=union))
               for key, r in stages.items()}
    results: list[dict[str, Any]] = []
    for region in slices:
        held = {key: _measure(r, collect_synthetic(r, "test", test_seed, test_scans, only=region,
                                                   exclude=other_slices(slices, region) or None))
                for key, r in stages.items()}
        _keep(results, _row(slice_name(region), stages[""], train_s, base.steps, held=held, control=control),
              out_dir)
    return results


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


_TEST_SETS = (("held_out", "held-out slice"), ("control", "rest of the stream"))


def slice_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per slice and test set (held-out slice, control stream); a run with rounds
    adds the same rows for its base model."""
    labels = list(results[0]["held_out"]["detection"]) if results else []
    head = ["slice", "test set", "scans", *labels, "false alarms", "declared empty", "unavailable"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results:
        stages = [(row, "")] + ([(row["base"], ", base model")] if "base" in row else [])
        for (figures, model), (key, title) in itertools.product(stages, _TEST_SETS):
            f = figures[key]
            cells = [row["slice"], title + model, str(f["scans"]), *(_pct(f["detection"][lb]) for lb in labels),
                     _pct(f["false_alarm"]), _pct(f["declared_empty"]), _pct(f["unavailable"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
