"""`smartgate doctor`: a pass/fail table of everything the gate depends on, with fixes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """\
examples:
  smartgate doctor -c /etc/smartgate/smartgate.yaml
  smartgate doctor -c config/demo.yaml --timeout 3

checks: secret files, state directory (writable, free space), clock (NTP), the model (loads and
matches its metadata), the broker (TCP, TLS, credentials), every firmware link (port opens, HELLO
arrives) and every lane PLC (answers, the point map reads sane values). Nothing is written to the
PLCs or the firmware. Stop the daemon first for the link checks: a serial port has one owner.

exit status: 0 all checks passed, 1 a check failed, 78 invalid configuration
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check links, PLCs, broker, model, disk and clock",
        description="Check every dependency of a gate and print a pass/fail table with the fix for each failure.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", default="/etc/smartgate/smartgate.yaml",
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=6.0, metavar="S", help="per-check deadline (default 6)")
    parser.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys

    from gate_controller.config import load_config
    from gate_controller.core.errors import ConfigError
    from gate_controller.service.doctor import render, run_checks

    logging.basicConfig(level=logging.CRITICAL)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        print("config: FAIL (fix the lines above; smartgate config check FILE)", file=sys.stderr)
        return 78
    checks = asyncio.run(run_checks(config, Path(args.config).resolve().parent, timeout_s=args.timeout))
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1
