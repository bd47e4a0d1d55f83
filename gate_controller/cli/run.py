"""`smartgate run`: the daemon."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]

_EPILOG = """\
examples:
  smartgate run -c /etc/smartgate/smartgate.yaml     # what the systemd unit runs
  smartgate run -c config/demo.yaml                  # against `smartgate sim` peers on this machine

signals: SIGTERM stops safely (lanes to a safe state, clean offline birth, flush);
         SIGHUP reloads the configuration (invalid files are refused, the running config stays).
one daemon per state directory: the daemon holds an exclusive lock on <state_dir>/smartgate.lock for
its whole life; a second one started on the same state directory exits at once.
exit status: 0 stopped cleanly, 78 invalid configuration (nothing was started), 75 another daemon
             holds the state directory (the message names the lock file and its PID), 70 internal failure
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the gate daemon",
        description="Run the smartgate daemon: firmware links, lanes, image review, decisions and the hub link.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="FILE", default="/etc/smartgate/smartgate.yaml",
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--mqtt-url", metavar="URL",
                        help="use this broker instead of the config's mqtt.url, also on reload "
                             "(what `smartgate demo --mqtt URL` passes)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from gate_controller.service.daemon import run_daemon

    return run_daemon(Path(args.config), mqtt_url=args.mqtt_url)
