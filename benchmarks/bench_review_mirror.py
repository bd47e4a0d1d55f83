"""Test-time mirroring: does reviewing each scan twice, as scanned and mirrored, find more objects?

The generator's trucks drive both ways and training mirrors its tiles, so a scan mirrored along
its length is as familiar to the network as the scan itself. The mirrored review averages, per
cell, the anomaly logits of the scan and of its mirror image (mirrored on the model grid after
preprocessing, so the two cell maps line up exactly) before the logistic function; the cargo
channel is averaged the same way. Both reviews score the very same generated scans
(`inference.training.evaluate.score_scan`, the evaluation's rules), and detection per class is
compared at the thresholds that flag 1, 1.5, 2 and 5 % of each review's own anomaly-free scans
(`operating_curve`): a comparison of rankings, not of operating points. The cost is measured in
the same run: the model's part of the review (`Reviewer.analyse`) as scanned and mirrored, p50
per scan on one thread.

    .venv/bin/python benchmarks/bench_review_mirror.py [--split test] [--scans 1000] [--model PATH] [--json FILE]

``--split test`` is the held-out test stream (base seed 20261124, the first scans of
``evaluate``), ``--split val`` the validation stream thresholds are chosen on (seed 7).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.preprocess import dequantize
from inference.reviewer import Reviewer, ScanAnalysis
from inference.scan import Scan
from inference.synthetic import generate_scenario
from inference.training.dataset import split_seed
from inference.training.evaluate import ScanRecord, operating_curve, score_scan

SEEDS = {"test": 20261124, "val": 7}
FALSE_ALARMS = (0.01, 0.015, 0.02, 0.05)


class MirroredReviewer(Reviewer):
    """`Reviewer` whose cell logits are the mean of the scan's and of its mirror image's."""

    def analyse(self, scan: Scan) -> ScanAnalysis:
        spec = self.spec
        if spec.output.activation != "logits" or spec.output.decision_block != 1:
            raise SystemExit("bench_review_mirror: needs a model with logit outputs and the per-cell decision rule")
        stride = spec.output.stride
        prepared = self.prepare(scan)
        valid = -(-prepared.width // stride)
        span = valid * stride  # padded with air to a whole cell: the mirrored cells line up
        mirrored = prepared.data.copy()
        mirrored[:, :span] = prepared.data[:, :span][:, ::-1]
        quant = spec.output.quantization
        logits = (dequantize(self.stitch(prepared)[0], quant)
                  + dequantize(self.stitch(replace(prepared, data=mirrored))[0], quant)[:, ::-1]) / 2
        probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return ScanAnalysis(probs=np.ascontiguousarray(probs), labels=tuple(spec.labels),
                            cell_w=stride * prepared.scale_x, cell_h=stride * prepared.scale_y,
                            scan_rows=scan.rows, scan_columns=scan.columns, invoke_ms=0.0,
                            tiles=2 * len(prepared.offsets), report=prepared.report, **self.prepared_facts(prepared))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=sorted(SEEDS), default="test")
    parser.add_argument("--scans", type=int, default=1000, help="scans of the stream (docs: 3000 test, 2000 val)")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    reviewers = {"as scanned": Reviewer(args.model, num_threads=1),
                 "mirrored mean": MirroredReviewer(args.model, num_threads=1)}
    records: dict[str, list[ScanRecord]] = {name: [] for name in reviewers}
    seconds: dict[str, list[float]] = {name: [] for name in reviewers}
    for i in range(args.scans):
        syn = generate_scenario(split_seed(args.split, SEEDS[args.split], i), "random")
        regions = [r.as_dict() for r in syn.regions]
        for name, reviewer in reviewers.items():
            t0 = time.perf_counter()
            records[name].append(score_scan(reviewer, syn.scan, regions, source=args.split, cargo=syn.cargo,
                                            not_empty_truth=syn.not_empty, has_anomaly=bool(syn.regions)))
            seconds[name].append(time.perf_counter() - t0)
    labels = reviewers["as scanned"].spec.labels
    out: dict[str, Any] = {"split": args.split, "scans": args.scans, "reviews": {}}
    print(f"{args.split} stream, {args.scans} scans: detection at the threshold flagging each share of the "
          "anomaly-free scans")
    print(f"{'review':<15} {'target':>7} {'flagged':>8} " + " ".join(f"{lb:>13}" for lb in labels))
    for name, recs in records.items():
        curve = operating_curve(recs, labels, FALSE_ALARMS)
        p50 = statistics.median(seconds[name]) * 1000
        out["reviews"][name] = {"curve": curve, "score_scan_p50_ms": round(p50, 2)}
        for row in curve:
            cells = " ".join(f"{100 * row['detection'][lb]:12.1f}%" if row["detection"][lb] is not None
                             else f"{'-':>13}" for lb in labels)
            print(f"{name:<15} {100 * row['target_false_alarm']:6.1f}% {100 * row['false_alarm']:7.2f}% {cells}")
    objects = {lb: sum(o["label"] == lb for r in records["as scanned"] for o in r.objects) for lb in labels}
    base_ms = out["reviews"]["as scanned"]["score_scan_p50_ms"]
    mirror_ms = out["reviews"]["mirrored mean"]["score_scan_p50_ms"]
    out["objects"] = objects
    out["cost_ratio"] = round(mirror_ms / base_ms, 2)
    print(f"objects per class: {objects}")
    print(f"review p50 per scan (scoring included): {base_ms:.1f} ms as scanned, {mirror_ms:.1f} ms mirrored "
          f"(x {out['cost_ratio']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
