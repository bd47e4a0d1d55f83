"""`smartgate demo`: the whole gate simulated on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """\
examples:
  smartgate demo                          # live view, runs until Ctrl-C (what `make demo` runs)
  smartgate demo --trucks 20 --headless   # 20 trucks, one line per transaction, then a verdict
  smartgate demo --speed 3                # trucks move three times faster
  smartgate demo --mqtt mqtt://127.0.0.1:1883   # use a broker that is already running

It starts a broker (local mosquitto if installed, else an embedded amqtt) unless --mqtt is given,
one virtual lane PLC per lane and one virtual firmware device per link from the config, the daemon
(`smartgate run`), and a simulated hub that publishes signed release notices (some holds, some
inspection orders, some containers never released) while trucks with clean and suspicious cargo
drive through.

The daemon and the broker the demo starts die with it, also when it is killed. With --mqtt the
daemon uses that broker too. A daemon already running on the demo's state directory (the lock
<state_dir>/smartgate.lock) stops the demo before it starts anything: exit status 75.

exit status with --trucks: 0 when every truck produced exactly one transaction at the broker, the
sequence numbers have no gap and no barrier moved unsafely; 1 otherwise.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the daemon against a simulated gate, with a live view",
        description="Run smartgate end to end against simulated gate hardware and a local broker.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", default="config/demo.yaml",
                        help="demo configuration (default: %(default)s)")
    parser.add_argument("--trucks", type=int, metavar="N", help="stop after N trucks and judge the run")
    parser.add_argument("--mqtt", metavar="URL", help="use this broker instead of starting one")
    parser.add_argument("--headless", action="store_true", help="no live view: one line per transaction")
    parser.add_argument("--speed", type=float, default=1.0, metavar="X", help="traffic speed factor (default 1)")
    parser.add_argument("--seed", type=int, default=7, help="traffic seed (default 7)")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys

    from gate_controller.config import load_config
    from gate_controller.core.errors import ConfigError
    from gate_controller.demo.gate import run_demo

    if args.trucks is not None and args.trucks < 1:
        print("--trucks must be at least 1", file=sys.stderr)
        return 64
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 78
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    return asyncio.run(run_demo(config, Path(args.config), trucks=args.trucks, mqtt_url=args.mqtt,
                                headless=args.headless, speed=args.speed, seed=args.seed))
