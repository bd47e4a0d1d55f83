"""The `smartgate` command line: one entry point, one module per command.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the handler. Heavy imports stay inside the handlers so that
``smartgate --help`` and ``smartgate config check`` start fast on a small gate computer.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gate_controller import __version__

__all__ = ["build_parser", "main"]

# The explicit command registry; order is the order of `smartgate --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "demo",
    "status",
    "config",
    "doctor",
    "review",
    "synth",
    "sniff",
    "sim",
    "hub",
    "identify",
    "console",
    "model",
)

EX_USAGE = 64
EX_CONFIG = 78


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartgate",
        description="Edge daemon and field tools for a port/customs smart gate.",
        epilog="Run 'smartgate COMMAND --help' for a command's options and examples.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smartgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"gate_controller.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
