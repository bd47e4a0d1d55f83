"""`smartgate console`: tools for the technician console (the password hash file)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]

_EPILOG = """\
examples:
  smartgate console hash-password > /etc/credstore/console-password   # asks for the password twice
  printf '%s\\n' "$PW" | smartgate console hash-password --stdin > console-password

The output is an argon2id hash, the content of the file console.auth.password_hash_file names.
Keep it like a secret (LoadCredential= in the unit puts it in $CREDENTIALS_DIRECTORY); the console
never shows it. See docs/console.md.
"""

_MIN_LENGTH = 10


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "console",
        help="technician console tools (password hash for console.auth)",
        description="Tools for the technician console served by the daemon (docs/console.md).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="console_command", metavar="ACTION", required=True)
    hasher = sub.add_parser("hash-password", help="print the argon2 hash of a password for console.auth",
                            epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    hasher.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    hasher.set_defaults(func=_hash_password)


def _hash_password(args: argparse.Namespace) -> int:
    import getpass
    import sys

    from argon2 import PasswordHasher

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("console password: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 65
    if len(password) < _MIN_LENGTH:
        print(f"the password must have at least {_MIN_LENGTH} characters", file=sys.stderr)
        return 65
    print(PasswordHasher().hash(password))
    return 0
