"""`smartgate config check|show`: validate a site file before it reaches the daemon."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]

EX_CONFIG = 78

_EPILOG = """\
examples:
  smartgate config check /etc/smartgate/smartgate.yaml
  smartgate config check config/*.yaml          # several files; exit 78 if any is invalid
  smartgate config show config/demo.yaml        # effective config with defaults, as YAML
  smartgate config show --json config/demo.yaml
  smartgate config reference                     # every key, type, default, bounds (Markdown)

exit status: 0 valid, 78 (EX_CONFIG) invalid; each problem is printed as
  FILE:LINE:COLUMN: field.path: what was expected
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "config",
        help="check or show a configuration file",
        description="Validate smartgate YAML configuration files, or print the effective configuration.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate files (exit 0 valid, 78 invalid)", epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("paths", nargs="+", metavar="PATH", help="configuration file(s)")
    check.add_argument("-q", "--quiet", action="store_true", help="print problems only")
    check.set_defaults(func=_check)
    show = sub.add_parser("show", help="print the effective configuration with defaults, secrets redacted",
                          epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("path", metavar="PATH", help="configuration file")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(func=_show)
    ref = sub.add_parser("reference", help="print the reference of every key (Markdown, as in docs/configuration.md)")
    ref.set_defaults(func=_reference)


def _check(args: argparse.Namespace) -> int:
    from gate_controller.config import load_config
    from gate_controller.core.errors import ConfigError

    status = 0
    for path in args.paths:
        try:
            load_config(path)
        except ConfigError as err:
            print(str(err), file=sys.stderr)
            status = EX_CONFIG
        else:
            if not args.quiet:
                print(f"{path}: ok")
    return status


def _show(args: argparse.Namespace) -> int:
    import yaml

    from gate_controller.config import load_config, redacted_dump
    from gate_controller.core.errors import ConfigError

    try:
        config = load_config(args.path)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EX_CONFIG
    data = redacted_dump(config)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")
    return 0


def _reference(args: argparse.Namespace) -> int:
    from gate_controller.config.reference import reference_markdown

    print(reference_markdown(), end="")
    return 0
