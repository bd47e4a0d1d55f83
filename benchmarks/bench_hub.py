"""Hub link benchmark: durable transactions per second to PUBACK, and backlog drain time.

Against a real mosquitto on loopback with TLS and password auth (the test broker of
tests/support/broker.py), in one run:

1. raw paho: one client publishes the same transaction payloads with QoS 1 (same in-flight window
   as the gate), timed from the first publish to the last PUBACK. Nothing is written to disk.
2. outbox alone: the same records committed one after another without a broker (the fsync floor).
3. gate, one lane: `Outbox.complete_transaction` awaited one after another (commit + fsync each,
   as a lane does), the `HubLink` publishing concurrently; timed from the first commit until the
   outbox is empty (every row acknowledged and deleted).
4. gate, 8 lanes: 8 producers committing concurrently (group commit shares the fsyncs).
5. drain: 10,000 transactions committed while no hub link runs; then the link starts and the
   time until the outbox is empty is measured (from `run()` and from the CONNACK).

    .venv/bin/python benchmarks/bench_hub.py
    .venv/bin/python benchmarks/bench_hub.py --count 5000 --backlog 20000 --window 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from gate_controller.hub.link import BirthInfo, HubLink  # noqa: E402
from gate_controller.hub.outbox import Outbox  # noqa: E402
from tests.support.broker import GATE_USER, MosquittoBroker  # noqa: E402
from tests.support.hub import GATE, SITE, mqtt_config, transaction_record, write_key  # noqa: E402
from tests.support.hub import ROOT as TOPIC_ROOT  # noqa: E402


async def until_empty(outbox: Outbox) -> None:
    """Poll the outbox's in-memory row count (no database access) until every row is deleted."""
    while True:
        if outbox.pending_count() == 0:
            return
        await asyncio.sleep(0.001)


def raw_paho(broker: MosquittoBroker, payloads: list[bytes], window: int) -> float:
    """Seconds from the first publish to the last PUBACK, paho alone."""
    assert broker.tls is not None
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-paho")
    client.tls_set(ca_certs=str(broker.tls.ca_file))
    client.username_pw_set(*GATE_USER)
    client.max_inflight_messages_set(window)
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(c: mqtt.Client, userdata: object, mid: int, reason: object, props: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == len(payloads):
                done.set()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port, 30)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    started = time.perf_counter()
    for payload in payloads:
        client.publish(f"{TOPIC_ROOT}/transactions", payload, qos=1)
    done.wait(300)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


async def gate_run(broker: MosquittoBroker, work: Path, records: list[dict[str, object]], window: int,
                   producers: int) -> float:
    """Seconds from the first commit until every row is acknowledged and deleted."""
    outbox = Outbox.open(work / f"outbox-{producers}.sqlite3", root_topic=TOPIC_ROOT, site=SITE, gate=GATE)
    hub = HubLink(mqtt_config(broker, write_key(work), max_inflight=window), site=SITE, gate=GATE,
                  outbox=outbox, birth=lambda: BirthInfo(lanes=["L1"], links={}))
    task = asyncio.create_task(hub.run())
    try:
        await hub.wait_connected()
        started = time.perf_counter()

        async def lane(part: list[dict[str, object]]) -> None:
            for record in part:
                await outbox.complete_transaction(record)

        await asyncio.gather(*(lane(records[i::producers]) for i in range(producers)))
        await until_empty(outbox)
        return time.perf_counter() - started
    finally:
        await hub.shutdown()
        await task
        outbox.close()


async def commit_only(work: Path, records: list[dict[str, object]]) -> float:
    """Seconds to commit the records one after another with no hub link (the fsync floor)."""
    outbox = Outbox.open(work / "commit-only.sqlite3", root_topic=TOPIC_ROOT, site=SITE, gate=GATE)
    try:
        started = time.perf_counter()
        for record in records:
            await outbox.complete_transaction(record)
        return time.perf_counter() - started
    finally:
        outbox.close()


async def drain_run(broker: MosquittoBroker, work: Path, backlog: int, window: int) -> tuple[float, float, float]:
    """(commit seconds, drain seconds from run(), drain seconds from CONNACK) for ``backlog`` rows."""
    outbox = Outbox.open(work / "drain.sqlite3", root_topic=TOPIC_ROOT, site=SITE, gate=GATE)
    try:
        started = time.perf_counter()
        for chunk in range(0, backlog, 500):
            await asyncio.gather(*(outbox.complete_transaction(transaction_record(chunk + i))
                                   for i in range(min(500, backlog - chunk))))
        committed = time.perf_counter() - started
        hub = HubLink(mqtt_config(broker, write_key(work), max_inflight=window), site=SITE, gate=GATE,
                      outbox=outbox, birth=lambda: BirthInfo(lanes=["L1"], links={}))
        started = time.perf_counter()
        task = asyncio.create_task(hub.run())
        try:
            await hub.wait_connected()
            connected = time.perf_counter()
            await until_empty(outbox)
            finished = time.perf_counter()
        finally:
            await hub.shutdown()
            await task
        return committed, finished - started, finished - connected
    finally:
        outbox.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="transactions per throughput run")
    parser.add_argument("--backlog", type=int, default=10_000, help="transactions in the drain run")
    parser.add_argument("--window", type=int, default=32, help="QoS 1 messages in flight (mqtt.max_inflight)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="smartgate-bench-hub-"))
    broker = MosquittoBroker(work / "broker")
    broker.start()
    try:
        records = [{"schema": "smartgate.transaction/1", **transaction_record(i)} for i in range(args.count)]
        payloads = []
        for i, record in enumerate(records):
            doc = {"msg_id": "01JD3X9Q4R6S8T0V2W4X6Y8Z0A", "seq": i + 1, "boot_id": 1, **record, "historical": False}
            payloads.append(json.dumps(doc, separators=(",", ":")).encode())
        size = sum(len(p) for p in payloads) / len(payloads)
        raw = raw_paho(broker, payloads, args.window)
        # Warm-up: the first SQLite file created on a filesystem pays for journal/allocation effects
        # that have nothing to do with the steady state measured here.
        asyncio.run(commit_only(work / "warm-up", records[:500]))
        floor = asyncio.run(commit_only(work, records))
        one = asyncio.run(gate_run(broker, work, records, args.window, producers=1))
        eight = asyncio.run(gate_run(broker, work, records, args.window, producers=8))
        committed, drain_total, drain_connected = asyncio.run(drain_run(broker, work, args.backlog, args.window))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    rate_raw = args.count / raw
    print(f"{args.count} transactions of {size:.0f} bytes, QoS 1, window {args.window}, TLS + password, loopback")
    print(f"{'measure':<58} {'rate':>12} {'vs raw':>8}")
    print(f"{'raw paho QoS 1 publish -> PUBACK (no disk)':<58} {rate_raw:>8.0f} tx/s {1.0:>8.2f}")
    for label, seconds in (("outbox alone, 1 lane: commit+fsync each (no broker)", floor),
                           ("gate, 1 lane: commit+fsync each, then PUBACK, row deleted", one),
                           ("gate, 8 lanes concurrently (group commit)", eight)):
        rate = args.count / seconds
        print(f"{label:<58} {rate:>8.0f} tx/s {rate / rate_raw:>8.2f}")
    print(f"backlog of {args.backlog}: committed in {committed:.2f} s ({args.backlog / committed:.0f} tx/s, "
          f"batches of 500)")
    print(f"backlog of {args.backlog}: drained in {drain_total:.2f} s from run() "
          f"({drain_connected:.2f} s from CONNACK, {args.backlog / drain_connected:.0f} msg/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
