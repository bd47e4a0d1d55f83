"""A gate process reduced to its outbox and hub link, for crash tests (killed with SIGKILL).

    python -m tests.support.hub_child --db PATH --mqtt JSON MODE

Modes (one line of stdout per step, flushed, so the parent can synchronise):

* ``commit``: connect, print ``CONNECTED``, wait for a line on stdin, commit one transaction,
  print ``COMMITTED <msg_id> <seq>``, wait until the hub link has handed it to paho
  (``PUBLISHED``), then sleep until killed.
* ``commit-offline``: commit one transaction without waiting for a connection, print
  ``COMMITTED <msg_id> <seq>``, sleep until killed.
* ``open``: journal one decided transaction (``open_transaction``), print ``OPENED <id>``, sleep.
* ``drain``: run until the outbox is empty, print ``DRAINED <boot_id> <recovered ids>``, shut
  down cleanly, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

from gate_controller.config import MqttConfig
from gate_controller.hub.link import BirthInfo, HubLink
from gate_controller.hub.outbox import Outbox
from tests.support.hub import GATE, ROOT, SITE, transaction_record


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.005)


async def main(args: argparse.Namespace) -> int:
    mqtt = MqttConfig.model_validate(json.loads(args.mqtt))
    outbox = Outbox.open(args.db, root_topic=ROOT, site=SITE, gate=GATE)
    hub = HubLink(mqtt, site=SITE, gate=GATE, outbox=outbox,
                  birth=lambda: BirthInfo(lanes=["L1"], links={"scanner-l1": "up"}))
    task = asyncio.create_task(hub.run())
    try:
        if args.mode == "commit":
            await hub.wait_connected()
            say("CONNECTED")
            await asyncio.to_thread(sys.stdin.readline)
            committed = await outbox.commit_transaction(transaction_record(1))
            say(f"COMMITTED {committed.msg_id} {committed.seq}")
            await until(lambda: hub.status().published >= 1)
            say("PUBLISHED")
            await asyncio.sleep(3600)
        elif args.mode == "commit-offline":
            committed = await outbox.commit_transaction(transaction_record(2))
            say(f"COMMITTED {committed.msg_id} {committed.seq}")
            await asyncio.sleep(3600)
        elif args.mode == "open":
            record = transaction_record(3)
            record.pop("completed_at")
            await outbox.open_transaction(record)
            say(f"OPENED {record['transaction_id']}")
            await asyncio.sleep(3600)
        elif args.mode == "drain":
            await hub.wait_connected()
            await until(lambda: outbox.pending_count() == 0)
            say(f"DRAINED {outbox.boot_id} {','.join(outbox.recovered) or '-'}")
        else:
            raise SystemExit(f"unknown mode {args.mode}")
    finally:
        await hub.shutdown(grace_s=2.0)
        await task
        outbox.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--mqtt", required=True, help="the mqtt config section as JSON")
    parser.add_argument("mode")
    sys.exit(asyncio.run(main(parser.parse_args())))
