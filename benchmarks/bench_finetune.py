"""`python -m inference.training adapt` (fine-tuning at the hub) on a scanner the model was not trained on.

``--scans`` clean scans of one configuration of `bench_adapt` (default ``striped``: 4 % rms gain
error per detector row and 6x the photon noise) are generated, then the fine-tuning runs as a child
process in the training venv (TensorFlow), niced, and its report gives the time of each phase, the
peak memory, and the held-out figures before (the base model) and after. Wall time and the child's
peak RSS are also measured around the run.

    .venv/bin/python benchmarks/bench_finetune.py [--scans 200] [--steps 1500] [--threads 2]

Without the training venv (``make .venv-train/.installed-train``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_adapt import site_scan  # noqa: E402 - the benchmark's sibling, after the path is set

from inference.package import generate_key  # noqa: E402
from inference.scan import save_scan  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--config", default="striped", choices=("hard", "striped", "fine"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--synthetic-scans", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=9000)
    parser.add_argument("--python", type=Path, default=ROOT / ".venv-train" / "bin" / "python",
                        help="the training venv's interpreter")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    if not args.python.is_file():
        print(f"bench_finetune: no training venv at {args.python} (make .venv-train/.installed-train); skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp_name:
        tmp = Path(tmp_name)
        generate_key(tmp / "key", tmp / "key.pub")
        clean = tmp / "clean"
        clean.mkdir()
        rng = np.random.default_rng(args.seed)
        for i in range(args.scans):
            save_scan(site_scan(args.config, args.seed + i, rng), clean / f"{args.config}-{i:04d}.npz")
        out = tmp / "pkg"
        cmd = [str(args.python), "-m", "inference.training", "adapt", "--clean", str(clean), "--out", str(out),
               "--key", str(tmp / "key"), "--version", "2.0.0.1", "--steps", str(args.steps), "--batch",
               str(args.batch), "--synthetic-scans", str(args.synthetic_scans), "--threads", str(args.threads),
               "--seed", str(args.seed)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env,
                             preexec_fn=lambda: os.nice(10))  # shares the machine politely
        wall = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:], file=sys.stderr)
            return 1
        report = json.loads((out / "report.json").read_text())
    report["bench"] = {"wall_s": round(wall, 1), "peak_rss_mb": round(peak, 1), "scans": args.scans,
                       "config": args.config, "steps": args.steps, "batch": args.batch, "threads": args.threads}
    t, v = report["timing_s"], report["validation"]
    print(f"{args.config}: {args.scans} scans ({report['site']['training_scans']} train, "
          f"{report['site']['held_out_scans']} held out), {args.steps} steps of {args.batch}: {wall:.0f} s wall "
          f"(data {t['data']} s, training {t['training']} s, calibration {t['calibration']} s), "
          f"peak RSS {peak:.0f} MB")
    print(f"  start weights: correlation {report['training']['start_deviation']['correlation']}")
    for when in ("before", "after"):
        m = v[when]
        det = ", ".join(f"{lb} {d['detected']}/{d['objects']}" for lb, d in m["detection"].items())
        print(f"  {when:6} suspect >= {m['thresholds']['suspect']}: false alarms {m['false_alarm']:.1%} of "
              f"{m['anomaly_free_scans']}; TIP {det}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
