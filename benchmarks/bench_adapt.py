"""`smartgate model adapt` on scanner configurations the shipped model was not trained on.

For each configuration, ``--scans`` clean scans are generated (random cargo and length, the
synthetic generator's world) and passed through a model of that scanner:

* ``hard``: a harder low-energy spectrum (the low channel's transmission raised to the power 1.5);
* ``striped``: per-element gain error (4 % rms per detector row) and 6x the photon noise;
* ``fine``: a finer machine, 384 detector rows and 1.6x the pulses per scan (pitch 0.625x).

Then ``smartgate model adapt`` runs as a child process (the gate's runtime dependencies only)
and its report gives, on the held-out clean scans and on threats projected into them (TIP), the
false alarms and the per-class detection of the shipped model ("before") and of the adapted
package ("after"). Wall time and the child's peak RSS are measured around the run.

    .venv/bin/python benchmarks/bench_adapt.py [--scans 100] [--configs hard,striped,fine] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.package import generate_key
from inference.scan import Scan, save_scan
from inference.synthetic import generate_scan

_COLUMNS = {20: 1200, 40: 2400, 45: 2700}


def site_scan(config: str, seed: int, rng: np.random.Generator) -> Scan:
    length = int(np.random.default_rng(seed).choice([20, 40, 40, 45]))
    if config == "fine":
        scan = generate_scan(seed, length_ft=length, rows=384, columns=int(_COLUMNS[length] * 1.6)).scan
        pixels = scan.pixels.astype(np.float64)
    else:
        scan = generate_scan(seed, length_ft=length).scan
        pixels = scan.pixels.astype(np.float64)
        if config == "hard":
            air = np.percentile(pixels[1], 99.5)
            pixels[1] = air * np.clip(pixels[1] / air, 1e-6, 1.0) ** 1.5
        elif config == "striped":
            pixels *= 1 + rng.normal(0, 0.04, size=(pixels.shape[0], pixels.shape[1], 1))
            pixels += rng.normal(0, 1, size=pixels.shape) * np.sqrt(np.maximum(pixels, 0) * 6)
        else:
            raise ValueError(f"unknown configuration {config!r}")
    return Scan(pixels=np.clip(pixels, 0, 65535).astype(np.uint16), scan_id=f"{config}-{seed}", bits=16,
                pixel_mm=scan.pixel_mm)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scans", type=int, default=100)
    parser.add_argument("--configs", default="hard,striped,fine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-adapt-") as tmp_name:
        tmp = Path(tmp_name)
        generate_key(tmp / "key", tmp / "key.pub")
        for k, config in enumerate(args.configs.split(",")):
            clean = tmp / config
            clean.mkdir()
            rng = np.random.default_rng(args.seed + 100_000 * k)
            for i in range(args.scans):
                save_scan(site_scan(config, args.seed + 100_000 * k + i, rng), clean / f"{config}-{i:04d}.npz")
            out = tmp / f"pkg-{config}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            run = subprocess.run([sys.executable, "-m", "gate_controller", "model", "adapt", "--clean", str(clean),
                                  "--out", str(out), "--key", str(tmp / "key"), "--version", "1.1.0.1",
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            if run.returncode != 0:
                print(run.stdout, run.stderr, file=sys.stderr)
                return 1
            report = json.loads((out / "report.json").read_text())
            report["bench"] = {"wall_s": round(wall, 1), "peak_rss_mb": round(max(peak, before) / 1024, 1),
                               "scans": args.scans, "threads": args.threads}
            results[config] = report
            v = report["validation"]
            print(f"{config}: {args.scans} scans, {report['fit_scans']} fit / {report['validation_scans']} held out, "
                  f"{wall:.1f} s, peak RSS {report['bench']['peak_rss_mb']} MB (max over runs so far)")
            fa = v["false_alarm"]
            print(f"  false alarms  {fa['before']['detected']}/{fa['before']['of']} before, "
                  f"{fa['after']['detected']}/{fa['after']['of']} after")
            for label, d in v["tip_detection"].items():
                print(f"  {label:14} {d['before']['detected']}/{d['before']['of']} before, "
                      f"{d['after']['detected']}/{d['after']['of']} after")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
