"""`smartgate review`: run the on-device image review on archived scans (.npz)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EX_MODEL = 3

_EPILOG = """\
examples:
  smartgate review /var/lib/smartgate/scans/2026/11/24/*.npz
  smartgate review --json scan.npz | jq .verdict
  smartgate review --model /opt/models/xray_anomaly.tflite --preview /tmp/previews scan.npz
  smartgate review --model /var/lib/smartgate/models/site-a/1.1.0.1 scan.npz   # a model package
  smartgate review --declared empty scan.npz     # verify a declared-empty box

output: one line per scan
  FILE  SCAN_ID  VERDICT  score=S  not_empty=N  latency=Lms  [LABEL SCORE @X,Y,W,H ...]
with --json: one JSON object per line with file, scan_id, verdict, score, not_empty_score,
regions [{x,y,w,h,score,label}], latency_ms (and error when a file cannot be reviewed).

exit status: 0 every scan reviewed, 1 some file unreadable or not a valid scan,
3 the model cannot be loaded (missing, corrupt, metadata mismatch).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "review",
        help="review archived X-ray scans with the on-device model",
        description="Run the intelligent image review (int8 TFLite model via LiteRT) on .npz archive scans "
                    "and print the verdict, scores and flagged regions.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE.npz", type=Path, help="archive scan(s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per scan")
    parser.add_argument("--model", type=Path, default=None, help="model .tflite (metadata .json beside it) or model "
                        "package directory; default: the model shipped with smartgate")
    parser.add_argument("--preview", type=Path, default=None, metavar="DIR",
                        help="write a false-colour JPEG preview per scan into DIR")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument("--declared", default=None, help="declared cargo, overrides the scan's (e.g. empty)")
    parser.add_argument("--opaque-area", type=float, default=None, metavar="M2",
                        help="smallest area the beam did not cross that makes a scan suspect, as the gate's "
                        "policy.opaque_area_m2 (default 0.5; 0 turns the test off)")
    parser.set_defaults(func=_review)


def _line(name: str, result: Any) -> str:
    if result.verdict == "unavailable":
        return f"{name}  {result.scan_id or '-'}  unavailable  error={result.error}"
    regions = " ".join(f"{r.label} {r.score:.2f} @{r.x},{r.y},{r.w},{r.h}" for r in result.regions)
    return (f"{name}  {result.scan_id}  {result.verdict}  score={result.score:.3f}  "
            f"not_empty={result.not_empty_score:.3f}  latency={result.latency_ms:.1f}ms"
            + (f"  {regions}" if regions else ""))


def _review(args: argparse.Namespace) -> int:
    from inference.errors import ModelError, SmartGateError
    from inference.package.loader import open_reviewer
    from inference.preview import render_preview
    from inference.result import ReviewResult
    from inference.scan import load_scan

    try:
        reviewer = open_reviewer(args.model, num_threads=args.threads)
        reviewer.set_thresholds(opaque_area_m2=args.opaque_area)
    except (ModelError, ValueError) as err:
        print(f"smartgate review: {err}", file=sys.stderr)
        return EX_MODEL
    if args.preview is not None:
        args.preview.mkdir(parents=True, exist_ok=True)
    status = 0
    for path in args.files:
        scan = None
        try:
            scan = load_scan(path)
            result = reviewer.review(scan, declared=args.declared)
        except SmartGateError as err:
            status = 1
            info = reviewer.model_info
            result = ReviewResult.unavailable(str(err), model=info.name, version=info.version,
                                              scan_id=scan.scan_id if scan is not None else None)
        if args.json:
            obj: dict[str, Any] = {
                "file": str(path), "scan_id": result.scan_id, "verdict": result.verdict,
                "score": None if result.score is None else round(result.score, 4),
                "not_empty_score": None if result.not_empty_score is None else round(result.not_empty_score, 4),
                "regions": [r.as_dict() for r in result.regions],
                "opaque_m2": result.opaque_m2,
                "latency_ms": round(result.latency_ms, 2),
                # What preprocessing repaired and the guard's signals (docs/troubleshooting.md).
                "conditioning": result.conditioning,
                "envelope": result.envelope,
            }
            if result.error is not None:
                obj["error"] = result.error
            print(json.dumps(obj), flush=True)
        else:
            print(_line(str(path), result), flush=True)
        if args.preview is not None and scan is not None and result.verdict != "unavailable":
            (args.preview / f"{path.stem}.jpg").write_bytes(render_preview(scan, result.regions))
    return status
