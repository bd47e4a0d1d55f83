"""`smartgate hub watch|notice|command`: the hub's side of the MQTT contract, from a terminal."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78

_EPILOG = """\
examples:
  # follow every gate of site PORTA (transactions, alarms, status, replies)
  smartgate hub watch mqtts://hub.porta.example:8883 --site PORTA \\
      --tls-ca hub-ca.pem --username ops --password-file ops.pw
  smartgate hub watch mqtt://127.0.0.1:47883 --site DEMO --gate G01 --all    # plus telemetry, previews
  smartgate hub watch mqtt://127.0.0.1:47883 --site DEMO --json --count 10   # JSON lines, then exit
  # watch keeps a persistent session (QoS 1): restarted, it gets what was published meanwhile

  # publish a signed, retained release notice (or delete it)
  smartgate hub notice mqtt://127.0.0.1:47883 --site DEMO --key-file config/demo-secrets/command-key \\
      MSKU1234565 released --declared general --ref CUS-2026-001
  smartgate hub notice mqtt://127.0.0.1:47883 --site DEMO --delete MSKU1234565

  # send a signed command and print the gate's reply
  smartgate hub command mqtt://127.0.0.1:47883 --site DEMO --gate G01 \\
      --key-file config/demo-secrets/command-key lane.mode lane=L1 mode=manual
  smartgate hub command ... inspection.result transaction_id=01J... finding=contraband 'labels=["cigarettes"]'

  # publish a signed model package for every gate of the site (retained; switch with model.activate)
  smartgate hub model mqtt://127.0.0.1:47883 --site DEMO pkg-1.2.0

ARG=VALUE values are JSON when they parse as JSON, strings otherwise.
exit status: 0 ok; 1 the gate answered ok:false; 69 broker unreachable or refused;
75 no reply in time; 78 bad key file or arguments.
"""


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="broker URL, mqtts://host:8883 or mqtt://host:1883")
    parser.add_argument("--site", required=True, help="site id (first topic level after the prefix)")
    parser.add_argument("--username", help="broker user name")
    parser.add_argument("--password-file", type=Path, help="file holding the broker password")
    parser.add_argument("--tls-ca", help="CA certificate that signed the broker's certificate (mqtts)")
    parser.add_argument("--tls-cert", help="client certificate (mqtts, if the broker requires one)")
    parser.add_argument("--tls-key", help="the client certificate's private key")
    parser.add_argument("--topic-prefix", default="smartgate/v1", help="contract root (default smartgate/v1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker/reply")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "hub",
        help="hub-side tools: watch a site, publish notices, send commands",
        description="Talk to gates the way the central hub does (MQTT contract version 1).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="hub_command", metavar="ACTION", required=True)

    watch = sub.add_parser("watch", help="print a site's transactions and alarms as they arrive",
                           epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(watch)
    watch.add_argument("--gate", default="+", help="only this gate (default: every gate of the site)")
    watch.add_argument("--json", action="store_true", help="one JSON object per message")
    watch.add_argument("--all", action="store_true", help="also telemetry, previews, images and commands")
    watch.add_argument("--count", type=int, default=0, help="exit after this many messages")
    watch.add_argument("--validate", action="store_true",
                       help="check every message against the contract's JSON Schemas (needs jsonschema)")
    watch.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                       help="exit after this long without a message")
    watch.add_argument("--client-id", metavar="ID",
                       help="MQTT client id of the watcher's persistent session (default: "
                            "smartgate-hub-watch-USER@HOST-SITE, so a restarted watch resumes where it stopped; "
                            "give each concurrent watcher its own)")
    watch.add_argument("--clean-session", action="store_true",
                       help="a throw-away session: what is published while the watcher is away is lost")
    watch.set_defaults(func=_watch)

    notice = sub.add_parser("notice", help="publish a signed retained release notice",
                            epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(notice)
    notice.add_argument("--key-file", type=Path, help="the site command key (required unless --delete)")
    notice.add_argument("container", metavar="CONTAINER", help="ISO 6346 number, e.g. MSKU1234565")
    notice.add_argument("status", metavar="STATUS", nargs="?", choices=("released", "hold", "inspect"),
                        help="released, hold or inspect")
    notice.add_argument("--declared", help="declared cargo (e.g. general, empty)")
    notice.add_argument("--ref", help="customs reference")
    notice.add_argument("--expires-at", help="ISO-8601 UTC expiry")
    notice.add_argument("--delete", action="store_true", help="delete the notice (empty retained message)")
    notice.set_defaults(func=_notice)

    model = sub.add_parser("model", help="publish a signed model package (retained) for a site's gates",
                           epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(model)
    model.add_argument("package", type=Path, metavar="PACKAGE_DIR", help="a package from smartgate model package")
    model.set_defaults(func=_model)

    command = sub.add_parser("command", help="send a signed command and print the reply",
                             epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(command)
    command.add_argument("--gate", required=True, help="gate id")
    command.add_argument("--key-file", type=Path, required=True, help="the site command key")
    command.add_argument("--issued-by", default="smartgate-hub-cli", help="operator or system name")
    command.add_argument("name", metavar="NAME",
                         help="barrier, lane.mode, rebirth, scan.fetch, inspection.result or config.reload")
    command.add_argument("args", metavar="ARG=VALUE", nargs="*", help="command arguments")
    command.set_defaults(func=_command)


def _client(args: argparse.Namespace, **kwargs: Any) -> Any:
    from gate_controller.config import read_secret
    from gate_controller.hub.hub_side import HubClient

    password = None
    if args.password_file is not None:
        password = read_secret(args.password_file).decode("utf-8")
    return HubClient(args.url, username=args.username, password=password, ca_file=args.tls_ca,
                     cert_file=args.tls_cert, key_file=args.tls_key, topic_prefix=args.topic_prefix,
                     **kwargs)


def _connect(args: argparse.Namespace, **kwargs: Any) -> Any:
    from gate_controller.core.errors import ConfigError, HubConnectError

    try:
        client = _client(args, **kwargs)
        return client.connect(timeout=args.timeout)
    except (ConfigError, ValueError, OSError) as err:
        print(f"smartgate hub: {err}", file=sys.stderr)
        return EX_CONFIG
    except HubConnectError as err:
        print(f"smartgate hub: {err}", file=sys.stderr)
        return EX_UNAVAILABLE


_QUIET_KINDS = ("telemetry", "preview", "image", "cmd")


def _watch(args: argparse.Namespace) -> int:
    from gate_controller.hub.hub_side import describe

    # A persistent session with a stable id: the broker queues what the gates publish while the
    # watcher reconnects (or restarts), also across a broker restart where the broker persists.
    client_id = args.client_id or f"smartgate-hub-watch-{getpass.getuser()}@{socket.gethostname()}-{args.site}"
    client = _connect(args, reconnect=True, client_id=client_id[:128], clean_session=args.clean_session)
    if isinstance(client, int):
        return client
    shown = 0
    try:
        for message in client.watch(args.site, args.gate, timeout=args.idle_exit):
            last = message.topic.rsplit("/", 2)
            kind = last[-1] if last[-1] in ("preview", "image") else last[-2] if last[-2] == "cmd" else last[-1]
            if not args.all and kind in _QUIET_KINDS:
                continue
            problems: list[str] = []
            if args.validate:
                from gate_controller.hub.hub_side import contract_errors

                problems = contract_errors(message.topic, message.payload)
            if args.json:
                try:
                    body: Any = json.loads(message.payload) if message.payload else None
                except ValueError:
                    body = {"bytes": len(message.payload)}
                record = {"topic": message.topic, "retain": message.retain, "payload": body}
                if args.validate:
                    record["contract_errors"] = problems
                print(json.dumps(record), flush=True)
            else:
                print(describe(message.topic, message.payload), flush=True)
                for problem in problems:
                    print(f"    NOT PER CONTRACT: {problem}", flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    finally:
        client.close()
    return 0


def _notice(args: argparse.Namespace) -> int:
    from gate_controller.config import read_secret
    from gate_controller.core.errors import ConfigError, HubError

    if not args.delete and (args.status is None or args.key_file is None):
        print("smartgate hub notice: STATUS and --key-file are required (or use --delete)", file=sys.stderr)
        return EX_CONFIG
    key = b""
    if not args.delete:
        try:
            key = read_secret(args.key_file)
        except ConfigError as err:
            print(f"smartgate hub notice: {err}", file=sys.stderr)
            return EX_CONFIG
    client = _connect(args, clean_session=True)  # one publish: nothing to keep a session for
    if isinstance(client, int):
        return client
    try:
        if args.delete:
            client.delete_notice(args.site, args.container, timeout=args.timeout)
            print(f"deleted release notice {args.site}/{args.container}")
        else:
            notice = client.publish_notice(args.site, args.container, args.status, key=key,
                                           declared=args.declared, ref=args.ref, expires_at=args.expires_at,
                                           timeout=args.timeout)
            print(json.dumps(notice))
    except HubError as err:
        print(f"smartgate hub notice: {err}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        client.close()
    return 0


def _model(args: argparse.Namespace) -> int:
    from gate_controller.core.errors import HubError
    from inference.package import PackageError, load_manifest, pack

    try:
        manifest = load_manifest(args.package)
        archive = pack(args.package)
    except (PackageError, OSError) as err:
        print(f"smartgate hub model: {err}", file=sys.stderr)
        return EX_CONFIG
    client = _connect(args)
    if isinstance(client, int):
        return client
    try:
        topic = client.publish_model(args.site, manifest.name, manifest.version, archive, timeout=args.timeout)
    except HubError as err:
        print(f"smartgate hub model: {err}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        client.close()
    print(f"published {manifest.name} {manifest.version} ({len(archive)} bytes) on {topic}; activate with: "
          f"smartgate hub command ... model.activate name={manifest.name} version={manifest.version} "
          f"sha256={manifest.digest}")
    return 0


def _parse_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"arguments are NAME=VALUE (got {item!r})")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def _command(args: argparse.Namespace) -> int:
    from gate_controller.config import read_secret
    from gate_controller.core.errors import ConfigError, HubError

    try:
        key = read_secret(args.key_file)
        command_args = _parse_args(args.args)
    except (ConfigError, ValueError) as err:
        print(f"smartgate hub command: {err}", file=sys.stderr)
        return EX_CONFIG
    client = _connect(args, clean_session=True)  # one command and its reply
    if isinstance(client, int):
        return client
    try:
        reply = client.command(args.site, args.gate, args.name, command_args, key=key, issued_by=args.issued_by,
                               timeout=args.timeout)
    except HubError as err:
        print(f"smartgate hub command: {err}", file=sys.stderr)
        return EX_TEMPFAIL
    finally:
        client.close()
    if reply is None:
        print(f"smartgate hub command: no reply from {args.site}/{args.gate} within {args.timeout:g} s",
              file=sys.stderr)
        return EX_TEMPFAIL
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1
