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
  plc        a lane PLC (Modbus TCP or RTU) with barrier, loops, watchdog and fault injection

examples:
  smartgate sim firmware --url socket://127.0.0.1:47101 --trucks 10
  smartgate sim plc --port 47201

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


_PLC_EPILOG = """\
examples:
  smartgate sim plc --port 47201                         # Modbus TCP on 127.0.0.1:47201, unit 1
  smartgate sim plc --port 47201 --console               # and move vehicles from stdin
  smartgate sim plc --rtu pty --units 1,2                # RTU on a new pty pair; prints the end to open
  smartgate sim plc --rtu /dev/ttyUSB2 --baud 19200 --parity E
  mbpoll -m tcp -p 47201 -a 1 -0 -t 1 -r 0 -c 7 127.0.0.1  # read the seven inputs

The default point map of docs/plc-points.md; barrier travel 1.5-3 s with limit switches, the 3 s
host-heartbeat watchdog, the loop_safety interlock, estop and key switch. Ctrl-C stops it.
With --console, one command per line on stdin moves vehicles and injects faults
(arrive, stop, through, back, estop on|off, key manual|remote, local up|down, mute on|off,
stick up|down on|off|none, drop, offline, online, status); type 'help' there for the details.
"""


def add_plc(targets: Any) -> None:
    parser = targets.add_parser(
        "plc",
        help="a lane PLC over Modbus TCP or RTU, with lane physics",
        description="Serve virtual lane PLCs (default point map) with barrier travel, loops following "
                    "simulated vehicles, the heartbeat watchdog, interlocks and fault injection.",
        epilog=_PLC_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=None, metavar="P", help="serve Modbus TCP on this port")
    parser.add_argument("--host", default="127.0.0.1", metavar="ADDR", help="TCP address (default 127.0.0.1)")
    parser.add_argument("--rtu", default=None, metavar="URL",
                        help="serve Modbus RTU on a serial device/URL, or 'pty' for a new pty pair")
    parser.add_argument("--baud", type=int, default=19200, metavar="B", help="RTU baud rate (default 19200)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="E", help="RTU parity (default E)")
    parser.add_argument("--units", default="1", metavar="IDS", help="unit ids, comma separated (default 1)")
    parser.add_argument("--travel", default="1.5-3", metavar="S", help="barrier travel time, S or MIN-MAX")
    parser.add_argument("--watchdog", type=float, default=3.0, metavar="S", help="heartbeat watchdog (default 3)")
    parser.add_argument("--console", action="store_true", help="read vehicle/fault commands from stdin")
    parser.set_defaults(func=_run_plc)


SIM_TARGETS: tuple[Callable[[Any], None], ...] = (add_firmware, add_plc)


def _run_plc(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gate_controller.plc.sim.standalone import parse_travel, parse_units, serve_plc

    try:
        units = parse_units(args.units)
        travel = parse_travel(args.travel)
    except ValueError as err:
        print(f"smartgate sim plc: {err}", file=sys.stderr)
        return 64
    if args.watchdog <= 0 or (args.port is None and args.rtu is None):
        print("smartgate sim plc: give --port, --rtu or both, and a positive --watchdog", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        import contextlib
        import signal

        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel if task else (lambda: None))
        with contextlib.suppress(asyncio.CancelledError):
            await serve_plc(host=args.host, port=args.port, rtu=args.rtu, baudrate=args.baud, parity=args.parity,
                            units=units, travel_s=travel, watchdog_s=args.watchdog, console=args.console,
                            emit=lambda line: print(line, flush=True))

    try:
        asyncio.run(main())
    except (OSError, RuntimeError) as err:
        print(f"smartgate sim plc: {err}", file=sys.stderr)
        return 1
    return 0


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
