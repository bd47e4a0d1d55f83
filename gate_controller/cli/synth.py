"""`smartgate synth`: write generated X-ray scans with ground truth (tests, demos, training)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """\
examples:
  smartgate synth --out /tmp/scans --count 20
  smartgate synth --out /tmp/scans --count 8 --seed 42 --kind weapon --kind empty
  smartgate synth --out /tmp/scans --count 4 --kind misdeclared_empty --length 20
  smartgate synth --out /tmp/scans --count 2 --kind weapon --cargo machinery

Each scan is written as NAME.npz (archive format, docs/scan-format.md) with NAME.json beside it:
{"scan_id", "finding": clean|contraband|misdeclared, "labels", "declared", "cargo",
 "regions": [{x,y,w,h,label}]}, the same layout as labelled field samples for retraining.

kinds (repeat --kind to cycle through several; default random):
  random, clean, empty, misdeclared_empty, a cargo kind (cartons, bags, bulk, machinery,
  drums, vehicles, mixed) or an anomaly class (dense_object, weapon, vehicle, organic_mass)
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate synthetic X-ray scans with ground truth",
        description="Generate seeded synthetic dual-energy container scans in the archive format, "
                    "each with a JSON label file (finding, labels, regions).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--count", type=int, required=True, metavar="N", help="number of scans")
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="first seed (scan i uses S + i)")
    parser.add_argument("--kind", action="append", default=None, metavar="KIND",
                        help="scenario; repeat to cycle (default: random)")
    parser.add_argument("--length", type=int, choices=(20, 40, 45), default=None, help="container length in ft")
    parser.add_argument("--world", choices=("nominal", "random"), default="nominal",
                        help="the reference scanner (default) or a randomized scanner and truck per scan "
                             "(the training world: energies, rows, bit depth, defects, chassis, container types)")
    parser.add_argument("--cargo", default=None, metavar="CARGO",
                        help="force the cargo kind (e.g. empty, cartons) whatever the scenario picks")
    parser.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from inference.scan import save_scan
    from inference.synthetic import CARGO_KINDS, SCENARIOS, generate_scenario

    kinds = args.kind or ["random"]
    unknown = [k for k in kinds if k not in SCENARIOS]
    if unknown:
        print(f"smartgate synth: unknown kind(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 64
    if args.count < 1:
        print("smartgate synth: --count must be >= 1", file=sys.stderr)
        return 64
    args.out.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {}
    if args.length is not None:
        overrides["length_ft"] = args.length
    if args.cargo is not None:
        if args.cargo not in CARGO_KINDS:
            print(f"smartgate synth: unknown cargo {args.cargo}; known: {', '.join(CARGO_KINDS)}", file=sys.stderr)
            return 64
        overrides["cargo"] = args.cargo
    for i in range(args.count):
        seed = args.seed + i
        kind = kinds[i % len(kinds)]
        syn = generate_scenario(seed, kind, world=args.world, scan_id=f"SYN-{seed:08d}", **overrides)
        stem = args.out / syn.scan.scan_id
        save_scan(syn.scan, stem.with_suffix(".npz"))
        record = syn.label_record()
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(stem.with_suffix(".json"))
        labels = ",".join(record["labels"])
        print(f"{stem.with_suffix('.npz')}  kind={kind}  cargo={syn.cargo}  finding={syn.finding}  "
              f"labels={labels}  regions={len(syn.regions)}", flush=True)
    return 0
