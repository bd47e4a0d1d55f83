"""Canary replay: the gate's labelled samples through the current and a candidate model.

A sample (``NAME.json`` + ``NAME.npz``, the gate's labelled-sample format) is a positive when
officers found something (finding other than ``clean``). The candidate passes when, on the same
samples, it raises no more false alarms than the current model and detects at least as many
positives: "no worse" in counts, with no tolerance, because the samples are the site's own and
few. Samples neither model can review (unreadable scans) count for neither.

Run as ``python -m inference.package.canary --current A --candidate B --samples DIR`` the replay
happens in a child process of the daemon (the TFLite runtime never runs in the daemon itself);
it prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.errors import SmartGateError
from inference.scan import load_scan

__all__ = ["CanarySample", "compare", "load_samples", "replay"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanarySample:
    name: str
    scan_path: Path
    positive: bool
    declared: str | None


def load_samples(directory: Path) -> list[CanarySample]:
    out: list[CanarySample] = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            _log.warning("canary: skipping unreadable sample %s", path)
            continue
        if not isinstance(raw, dict) or raw.get("finding") not in ("clean", "contraband", "misdeclared"):
            continue
        scan_path = path.with_name(str(raw.get("scan_file") or path.with_suffix(".npz").name))
        if not scan_path.is_file() or scan_path.parent != path.parent:
            continue
        declared = raw.get("declared")
        out.append(CanarySample(name=path.stem, scan_path=scan_path, positive=raw["finding"] != "clean",
                                declared=declared if isinstance(declared, str) else None))
    return out


def replay(model: Path | None, samples: Sequence[CanarySample], threads: int = 1) -> dict[str, Any]:
    """Verdict per sample for one model (a .tflite or a package directory)."""
    from inference.package.loader import open_reviewer

    reviewer = open_reviewer(model, threads)
    verdicts: dict[str, str] = {}
    for s in samples:
        try:
            verdicts[s.name] = reviewer.review(load_scan(s.scan_path), declared=s.declared).verdict
        except (SmartGateError, ValueError) as err:
            verdicts[s.name] = "unavailable"
            _log.warning("canary: %s not reviewable: %s", s.name, err)
    info = reviewer.model_info
    return {"model": info.name, "version": info.version, "verdicts": verdicts}


def _figures(verdicts: dict[str, str], samples: Sequence[CanarySample], usable: set[str]) -> dict[str, int]:
    """Counts over the usable samples. ``unavailable`` (the guard) counts against the model: a
    false alarm on a clean sample (the truck is stopped for an officer) and a miss on a positive."""
    clean = [s for s in samples if not s.positive and s.name in usable]
    positive = [s for s in samples if s.positive and s.name in usable]
    return {
        "clean": len(clean),
        "false_alarms": sum(verdicts.get(s.name, "unavailable") in ("suspect", "unavailable") for s in clean),
        "positives": len(positive),
        "detected": sum(verdicts.get(s.name, "unavailable") == "suspect" for s in positive),
    }


def compare(current: dict[str, Any], candidate: dict[str, Any], samples: Sequence[CanarySample]) -> dict[str, Any]:
    # The samples the current model can review; a candidate that cannot review them fails on them
    # (a candidate calling every scan unavailable would otherwise compare nothing and pass).
    usable = {s.name for s in samples if current["verdicts"].get(s.name, "unavailable") != "unavailable"}
    cur = _figures(current["verdicts"], samples, usable)
    cand = _figures(candidate["verdicts"], samples, usable)
    reasons = []
    if cand["false_alarms"] > cur["false_alarms"]:
        reasons.append(f"{cand['false_alarms']} false alarms on {cand['clean']} clean samples "
                       f"(current model: {cur['false_alarms']})")
    if cand["detected"] < cur["detected"]:
        reasons.append(f"{cand['detected']} of {cand['positives']} anomalies detected "
                       f"(current model: {cur['detected']})")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "samples": len(samples),
        "compared": len(usable),
        "current": {"model": current["model"], "version": current["version"], **cur},
        "candidate": {"model": candidate["model"], "version": candidate["version"], **cand},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.package.canary")
    parser.add_argument("--current", type=Path, default=None, help="current model (.tflite or package); "
                        "default: the shipped model")
    parser.add_argument("--candidate", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        samples = load_samples(args.samples) if args.samples.is_dir() else []
        result = compare(replay(args.current, samples, args.threads), replay(args.candidate, samples, args.threads),
                         samples)
    except (SmartGateError, ValueError) as err:
        print(json.dumps({"passed": False, "reasons": [f"canary could not run: {err}"], "error": str(err)}))
        return 2
    print(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
