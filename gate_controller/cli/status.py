"""`smartgate status`: a running daemon's lanes, links, backlog and counters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """\
examples:
  smartgate status                                  # default socket /run/smartgate/control.sock
  smartgate status -c /etc/smartgate/smartgate.yaml # socket path from the config
  smartgate status --socket var/demo/control.sock --json

exit status: 0 daemon answered, 1 no daemon listening (is it running? see journalctl -u smartgate)
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show a running daemon's lanes, links, backlog and counters",
        description="Ask a running smartgate daemon for its state over its local control socket.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="take the socket path from this config")
    parser.add_argument("--socket", metavar="PATH", help="control socket path")
    parser.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    parser.set_defaults(func=_status)


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        from gate_controller.config import load_config

        return load_config(args.config).control.socket_path
    return Path("/run/smartgate/control.sock")


def _status(args: argparse.Namespace) -> int:
    from gate_controller.core.errors import ConfigError
    from gate_controller.service.control import read_status

    try:
        path = _socket_path(args)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 78
    try:
        snapshot = read_status(path)
    except (OSError, ValueError, TypeError) as err:
        print(f"no smartgate daemon answers on {path}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
        return 0
    print(render(snapshot))
    return 0


def render(s: dict[str, Any]) -> str:
    out = [
        f"smartgate {s.get('sw_version', '?')}  site {s.get('site')}  gate {s.get('gate')}  "
        f"boot {s.get('boot_id')}  up {int(s.get('uptime_s', 0))} s",
        "",
        "LANE      STATE          PLC        TRANSACTION                 LAST DECISION",
    ]
    for lane_id, lane in sorted((s.get("lanes") or {}).items()):
        out.append(
            f"{lane_id:<9} {lane.get('state')!s:<14} {'up' if lane.get('plc_connected') else 'DOWN':<10} "
            f"{lane.get('transaction_id') or '-'!s:<27} {lane.get('last_decision') or '-'}"
        )
    out += ["", "LINK            STATE  DEVICE           FRAMES     CRC ERR  LOST  SCANS ok/incomplete"]
    for name, link in sorted((s.get("links") or {}).items()):
        c = link.get("counters") or {}
        out.append(
            f"{name:<15} {'up' if link.get('up') else 'DOWN':<6} {link.get('device') or '-'!s:<16} "
            f"{c.get('frames', 0):<10} {c.get('crc_errors', 0):<8} {c.get('lost_frames', 0):<5} "
            f"{c.get('scans_complete', 0)}/{c.get('scans_incomplete', 0)}"
        )
    hub = s.get("hub") or {}
    backlog = s.get("backlog") or {}
    out += [
        "",
        f"hub: {'connected' if hub.get('connected') else 'DISCONNECTED'}  backlog {backlog.get('pending', 0)} "
        f"(oldest {backlog.get('oldest_age_s') or 0:.0f} s)  in flight {hub.get('inflight', 0)}",
        f"inference: {s.get('inference', {}).get('count', 0)} reviews, p95 {s.get('inference', {}).get('p95_ms')} ms",
    ]
    return "\n".join(out)
