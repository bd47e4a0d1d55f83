"""`smartgate sniff`: watch a GFP/1 link with the daemon's own receiver (technician tool)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["register"]

EX_NOTHING_HEARD = 1

_EPILOG = """\
examples:
  smartgate sniff /dev/ttyUSB0 --baud 921600                  # watch the scanner until Ctrl-C
  smartgate sniff socket://10.20.0.5:4001 --duration 60       # a serial device server, one minute
  smartgate sniff /dev/ttyS1 --baud 115200 --parity E --json | jq 'select(.event == "scan")'
  smartgate sniff /dev/ttyUSB0 --save-scans /tmp/scans        # keep every scan as .npz

The sniffer speaks GFP/1 like the daemon does: it sends CONTROL hello and HEARTBEATs, asks for
missing scan columns with RESEND and acknowledges scans with SCAN_ACK. Stop the daemon first (or
its service) when sniffing the daemon's own port: a serial port is opened exclusively.

--json prints one object per line: {"event": "link"|"hello"|"heartbeat"|"scan"|"ocr"|"fault", "ts", ...};
a scan carries scan_id, scan_no, columns, rows, channels, complete, sha256, resend_rounds. On exit
the link's counters follow as {"event": "counters", ...}.

exit status: 0 when GFP/1 frames were received, 1 when nothing was heard, 64 on a usage error.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sniff",
        help="decode and print what a GFP/1 firmware link sends",
        description="Open a firmware link (device path, socket://, rfc2217://) with the daemon's receiver "
                    "and print every decoded event; print the link's counters on exit.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="serial device or URL, as in the links section of the config")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--baud", type=int, default=115200, metavar="B", help="baud rate (default 115200)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N", help="parity (default N)")
    parser.add_argument("--save-scans", default=None, metavar="DIR",
                        help="write each scan with all its columns to DIR/SCAN_ID.npz")
    parser.add_argument("-v", "--verbose", action="store_true", help="log link diagnostics to stderr")
    parser.set_defaults(func=_sniff)


def _sniff(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from firmware_bridge.errors import LinkSettingsError
    from firmware_bridge.settings import LinkSettings

    if args.duration is not None and args.duration <= 0:
        print("smartgate sniff: --duration must be > 0", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = LinkSettings(name="sniff", url=args.url, baudrate=args.baud, parity=args.parity)
    except LinkSettingsError as err:
        print(f"smartgate sniff: {err}", file=sys.stderr)
        return 64
    heard = asyncio.run(_run(settings, args, sys.stdout))
    if not heard:
        print(f"smartgate sniff: no GFP/1 frame received from {args.url}", file=sys.stderr)
        return EX_NOTHING_HEARD
    return 0


async def _run(settings: Any, args: argparse.Namespace, out: TextIO) -> bool:
    import asyncio
    import contextlib
    import signal
    from pathlib import Path

    from firmware_bridge.events import LinkEvent, ScanEvent
    from firmware_bridge.link import GfpLink
    from inference.scan import save_scan

    link = GfpLink(settings)
    save_dir = Path(args.save_scans) if args.save_scans else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    runner = asyncio.create_task(link.run(), name="sniff-link")
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, link.stop)

    def show(event: LinkEvent) -> None:
        saved = None
        if save_dir is not None and isinstance(event, ScanEvent) and event.scan is not None:
            saved = str(save_scan(event.scan, save_dir / f"{_safe(event.scan_id)}.npz"))
        _print_event(event.as_dict(), out, as_json=args.json, saved=saved)

    async def consume() -> None:
        async for event in link.events():
            show(event)

    printer = asyncio.create_task(consume(), name="sniff-print")
    try:
        if args.duration is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.duration):
                    await asyncio.shield(runner)
        else:
            await asyncio.shield(runner)
    finally:
        link.stop()
        await asyncio.gather(runner, return_exceptions=True)
        printer.cancel()
        await asyncio.gather(printer, return_exceptions=True)
        # Print what is still queued (the final "link down" among it) before the counters.
        while not link.event_queue.empty():
            show(link.event_queue.get_nowait())
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    counters = link.counters()
    _print_counters(counters.as_dict(), out, as_json=args.json)
    return counters.frames_rx > 0


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _print_event(record: dict[str, Any], out: TextIO, *, as_json: bool, saved: str | None) -> None:
    now = datetime.now(UTC)
    if as_json:
        record = {"event": record["event"], "ts": now.isoformat(timespec="milliseconds"),
                  **{k: v for k, v in record.items() if k != "event"}}
        if saved is not None:
            record["saved"] = saved
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
        out.flush()
        return
    out.write(f"{now.astimezone().strftime('%H:%M:%S.%f')[:-3]} {_describe(record)}"
              f"{f'  saved {saved}' if saved else ''}\n")
    out.flush()


def _describe(r: dict[str, Any]) -> str:
    kind = r["event"]
    if kind == "link":
        return f"link {'UP' if r['up'] else 'DOWN'} ({r['reason']})"
    if kind == "hello":
        geometry = f" rows={r['rows']} channels={r['channels']} bits={r['bits']}" if r.get("rows") else ""
        return f"hello {r['device']} serial {r['serial_no']} fw {r['fw_version']}{geometry}"
    if kind == "heartbeat":
        return f"heartbeat state={r['state']} uptime={r['uptime_ms'] / 1000:.1f}s"
    if kind == "ocr":
        iso = f" iso {r['iso_type']}" if r.get("iso_type") else ""
        return f"ocr {r['kind']} {r['camera']} {r['text']!r} conf {r['confidence']:.2f}{iso}"
    if kind == "fault":
        return f"fault {r['code']} {r['severity']} {'ACTIVE' if r['active'] else 'cleared'}: {r['message']}"
    if kind == "scan":
        state = "complete" if r["complete"] else f"INCOMPLETE ({r['reason']})"
        sha = (r["sha256"] or "-")[:16]
        return (f"scan {r['scan_no']} {r['scan_id']} {r['columns']}x{r['rows']}x{r['channels']} "
                f"{r['bits']}-bit {state} sha256 {sha} resend_rounds={r['resend_rounds']}")
    return json.dumps(r)


def _print_counters(counters: dict[str, int], out: TextIO, *, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps({"event": "counters", **counters}, separators=(",", ":")) + "\n")
    else:
        out.write("counters:\n")
        width = max(len(k) for k in counters)
        for key, value in counters.items():
            out.write(f"  {key:<{width}} {value}\n")
    out.flush()
