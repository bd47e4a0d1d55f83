"""`smartgate identify`: show why a container number was, or was not, accepted from its OCR reads."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

__all__ = ["register"]

EX_DATAERR = 65
EX_CONFIG = 78

_EPILOG = """\
input: one JSON object per line, the reads of one container (e.g. pasted from a transaction):
  {"reads": [{"text": "MSKU1234565", "confidence": 0.93, "camera": "left",
              "char_confidence": [0.99, ...]}, ...]}
output: one JSON object per input line:
  {"number": "MSKU1234565" | null, "check_digit_ok": bool, "corrected": bool,
   "confidence": 0..1, "reason": null | "ambiguous" | "blind_spot" | ...}

examples:
  echo '{"reads":[{"text":"MSKU1234565","confidence":0.95,"camera":"left"},
                  {"text":"MSKU 123456 5","confidence":0.9,"camera":"right"}]}' | smartgate identify
  smartgate identify --explain < reads.jsonl      # add the deciding rule and the valid candidates
  smartgate identify -c /etc/smartgate/smartgate.yaml < reads.jsonl   # the site's policy.identity
  smartgate identify --group < passages.jsonl     # each line: all container reads of one truck

exit status: 0, 65 (EX_DATAERR) if any input line was not valid JSON of that shape (it still gets
an output line, with reason "invalid_input" and an "error"), 78 (EX_CONFIG) for a bad --config.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "identify",
        help="explain container number acceptance from raw OCR reads (JSON lines on stdin)",
        description=(
            "Fuse the OCR reads of one container exactly as the gate does and print whether a number "
            "is accepted, and if not, why."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="PATH",
                        help="use the policy.identity settings of this gate configuration file")
    parser.add_argument("--explain", action="store_true",
                        help="also print the deciding rule, valid candidates, raw reads and ISO type")
    parser.add_argument("--group", action="store_true",
                        help="each line holds every container read of one passage: group, then identify")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from gate_controller.decision.identity import IdentitySettings

    settings = IdentitySettings()
    if args.config:
        from gate_controller.config import load_config
        from gate_controller.core.errors import ConfigError

        try:
            settings = load_config(args.config).policy.identity
        except ConfigError as err:
            print(str(err), file=sys.stderr)
            return EX_CONFIG
    return run_lines(sys.stdin, sys.stdout, settings=settings, explain=args.explain, group=args.group)


def run_lines(source: IO[str], sink: IO[str], *, settings: Any, explain: bool = False, group: bool = False) -> int:
    """Process JSON lines from ``source``; one output line per non-blank input line."""
    from gate_controller.decision.identity import identify, identify_containers, reads_from_json

    status = 0
    for line in source:
        if not line.strip():
            continue
        out: dict[str, Any]
        try:
            obj = json.loads(line)
            reads = reads_from_json(obj)
        except (TypeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            status = EX_DATAERR
            out = {"number": None, "check_digit_ok": False, "corrected": False, "confidence": 0.0,
                   "reason": "invalid_input", "error": str(err)}
        else:
            if group:
                identities = identify_containers(reads, settings=settings)
                out = {"containers": [i.to_json(explain=explain) for i in identities]}
            else:
                out = identify(reads, settings=settings).to_json(explain=explain)
        sink.write(json.dumps(out) + "\n")
        sink.flush()
    return status
