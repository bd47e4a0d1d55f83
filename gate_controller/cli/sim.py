"""`smartgate sim TARGET`: simulated gate hardware for demos, tests and commissioning.

Each target is one small ``add_<target>(targets)`` function registered in `SIM_TARGETS`; it adds
its parser to the ``sim`` sub-command and sets ``func``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["SIM_TARGETS", "register"]

_EPILOG = """\
targets:
  firmware   a GFP/1 gate firmware (X-ray scanner, OCR unit or both) sending trucks

Run 'smartgate sim TARGET --help' for a target's options.
"""

_FIRMWARE_EPILOG = """\
examples:
  smartgate sim firmware --url socket://127.0.0.1:47101 --trucks 10
  smartgate sim firmware --url pty --scenario lossy --trucks 0        # prints the pty path to open
  smartgate sim firmware --url pty:/tmp/gate-scanner --baud 921600    # throttled like a real UART
  smartgate sim firmware --url /dev/ttyUSB1 --device ocr --scenario bad-ocr   # over a null-modem cable

URL: socket://HOST:PORT (listen there, like a serial device server; the daemon opens the same URL),
pty (a new pseudo-terminal), pty:PATH (and a symlink PATH to it), or a serial device to open.
The simulator waits for a daemon to talk before the first truck, then sends one truck every
--interval seconds: OCR reads (ISO 6346 numbers with realistic misreads) and one scan per truck from
the synthetic generator; it answers RESEND and keeps each scan 30 s. With --trucks N it exits once
the last scans are acknowledged (or after 30 s); --trucks 0 runs until interrupted.

scenarios:
{scenarios}
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sim",
        help="run simulated gate hardware",
        description="Simulated gate hardware speaking the real protocols, for demos, tests and commissioning.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = parser.add_subparsers(dest="sim_target", metavar="TARGET", required=True)
    for add in SIM_TARGETS:
        add(targets)


def add_firmware(targets: Any) -> None:
    from firmware_bridge.simulator.scenarios import SCENARIOS

    listing = "\n".join(f"  {name:<11} {s.description}" for name, s in SCENARIOS.items())
    parser = targets.add_parser(
        "firmware",
        help="a GFP/1 scanner / OCR firmware sending simulated trucks",
        description="Serve one GFP/1 link as the gate firmware would: HELLO, heartbeats, OCR reads and "
                    "X-ray scans of simulated trucks, RESEND answers, fault injection.",
        epilog=_FIRMWARE_EPILOG.format(scenarios=listing),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", required=True, metavar="URL", help="where to serve (see below)")
    parser.add_argument("--scenario", default="clean", choices=sorted(SCENARIOS), metavar="NAME",
                        help="fault and truck mix (default clean)")
    parser.add_argument("--baud", type=int, default=None, metavar="B",
                        help="throttle output to B baud, 8N1 (default: as fast as the port takes)")
    parser.add_argument("--trucks", type=int, default=5, metavar="N", help="trucks to send; 0 = forever (default 5)")
    parser.add_argument("--interval", type=float, default=None, metavar="S",
                        help="seconds between trucks (default: the scenario's)")
    parser.add_argument("--device", choices=("combo", "scanner", "ocr"), default="combo",
                        help="what the firmware is (default combo)")
    parser.add_argument("--serial-no", default="SIM-0001", metavar="SN", help="serial number in HELLO")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the truck sequence")
    parser.add_argument("--realtime", action="store_true",
                        help="stream scan columns at the truck's speed instead of at once")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.set_defaults(func=_run_firmware)


SIM_TARGETS: tuple[Callable[[Any], None], ...] = (add_firmware,)


def _run_firmware(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from firmware_bridge.errors import LinkError

    if args.trucks < 0 or (args.baud is not None and args.baud <= 0) or (
            args.interval is not None and args.interval < 0):
        print("smartgate sim firmware: --trucks, --baud and --interval must not be negative", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_firmware_main(args))
    except LinkError as err:
        print(f"smartgate sim firmware: {err}", file=sys.stderr)
        return 1
    return 0


async def _firmware_main(args: argparse.Namespace) -> None:
    import asyncio
    import contextlib
    import signal

    from firmware_bridge.simulator.standalone import run_standalone

    def emit(record: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(record, separators=(",", ":")), flush=True)
        else:
            print(_describe(record), flush=True)

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, task.cancel if task else (lambda: None))
    with contextlib.suppress(asyncio.CancelledError):
        await run_standalone(args.url, scenario=args.scenario, device=args.device, baud=args.baud,
                             trucks=args.trucks, interval_s=args.interval, seed=args.seed,
                             serial_no=args.serial_no, realtime=args.realtime, emit=emit)


def _describe(r: dict[str, Any]) -> str:
    kind = r.get("event")
    if kind == "serving":
        return f"serving GFP/1 {r['device']} firmware on {r['url']} (scenario {r['scenario']})"
    if kind == "daemon":
        return "daemon connected"
    if kind == "truck":
        scan = f"scan {r['scan_no']} {r['scan_id']} sha256 {(r['sha256'] or '-')[:16]}" if r["scan_no"] else "no scan"
        flags = " ABORTED" if r["aborted"] else (" BAD-CRC" if r["crc_corrupted"] else "")
        return f"truck {r['plate']} containers {', '.join(r['containers'])}: {scan}{flags}"
    if kind == "ack":
        return f"ack scan {r['scan_no']}: {r['status']}{' (' + r['reason'] + ')' if r['reason'] else ''}"
    if kind == "done":
        return "done: " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "event")
    return json.dumps(r)
