"""Signed hub commands end to end: verification, exactly one reply, nothing actuated on rejection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gate_controller.core.timestamps import utc_timestamp
from gate_controller.hub.archive import ScanArchive, iter_samples
from gate_controller.hub.commands import CommandDispatcher, ReplayCache
from gate_controller.hub.hub_side import HubClient, make_command
from gate_controller.hub.link import BirthInfo, HubLink
from gate_controller.hub.outbox import Outbox
from inference.scan import Scan, load_scan
from tests.support.broker import BROKER_MARKS, HUB_USER, MosquittoBroker, running_broker
from tests.support.hub import (
    COMMAND_KEY,
    GATE,
    ROOT,
    SITE,
    Collector,
    RecordingTarget,
    mqtt_config,
    transaction_record,
    write_key,
)

pytestmark = BROKER_MARKS


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@dataclass
class Gate:
    hub: HubLink
    outbox: Outbox
    target: RecordingTarget
    archive: ScanArchive
    dispatcher: CommandDispatcher
    replay: ReplayCache


@asynccontextmanager
async def gate(broker: MosquittoBroker, tmp_path: Path, **dispatcher_kwargs: Any) -> AsyncIterator[Gate]:
    outbox = Outbox.open(tmp_path / "outbox.sqlite3", root_topic=ROOT, site=SITE, gate=GATE)
    archive = ScanArchive(tmp_path / "scans", tmp_path / "samples", max_mb=100)
    outbox.set_archive_hook(archive.record_transaction)
    replay = ReplayCache(tmp_path / "replay.sqlite3", window_s=86400)
    target = RecordingTarget()
    dispatcher = CommandDispatcher(key=COMMAND_KEY, target=target, outbox=outbox, replay=replay, archive=archive,
                                   **dispatcher_kwargs)
    hub = HubLink(mqtt_config(broker, write_key(tmp_path)), site=SITE, gate=GATE, outbox=outbox,
                  birth=lambda: BirthInfo(lanes=["L1", "L2"], links={}), commands=dispatcher)
    task = asyncio.create_task(hub.run())
    try:
        async with asyncio.timeout(10):
            await hub.wait_connected()
        yield Gate(hub, outbox, target, archive, dispatcher, replay)
    finally:
        await hub.shutdown(grace_s=2.0)
        await task
        outbox.close()
        replay.close()


def hub_client(broker: MosquittoBroker) -> HubClient:
    assert broker.tls is not None
    return HubClient(broker.url, username=HUB_USER[0], password=HUB_USER[1], ca_file=str(broker.tls.ca_file))


async def send(client: HubClient, name: str, payload: dict[str, Any] | bytes) -> dict[str, Any]:
    reply = await asyncio.to_thread(client.send_command, SITE, GATE, name, payload, 10.0)
    assert reply is not None, f"no reply to {name}"
    return reply


def signed(name: str, args: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return make_command(name, args, key=COMMAND_KEY, issued_by="ops@hub", **kwargs)


def test_accepted_commands_act_and_reply_ok(broker: MosquittoBroker, tmp_path: Path) -> None:
    async def main() -> None:
        with hub_client(broker) as client, Collector(broker, client_id="c-cmd-ok") as collector:
            async with gate(broker, tmp_path) as g:
                reply = await send(client, "lane.mode", signed("lane.mode", {"lane": "L1", "mode": "manual"}))
                assert reply["ok"] is True
                assert reply["error"] is None
                reply = await send(client, "barrier", signed("barrier", {"lane": "L2", "action": "open",
                                                                          "reason": "stuck truck"}))
                assert reply["ok"] is True
                reply = await send(client, "config.reload", signed("config.reload", {}))
                assert reply["ok"] is True
                reply = await send(client, "review.mode", signed("review.mode", {"lane": "L1", "mode": "shadow"}))
                assert reply["ok"] is True, reply
                reply = await send(client, "model.activate", signed("model.activate", {
                    "name": "xray", "version": "1.2.0", "sha256": "ab" * 32}))
                assert reply["ok"] is True
                births = len([s for s in collector.json_on("/status") if s["state"] == "online"])
                reply = await send(client, "rebirth", signed("rebirth", {}))
                assert reply["ok"] is True
                await asyncio.to_thread(collector.wait_for, lambda c: len(
                    [s for s in c.json_on("/status") if s["state"] == "online"]) > births)
                assert g.target.calls == [
                    ("lane.mode", {"lane": "L1", "mode": "manual"}),
                    ("barrier", {"lane": "L2", "action": "open", "reason": "stuck truck", "operator": "ops@hub"}),
                    ("config.reload", {}),
                    ("review.mode", {"lane": "L1", "mode": "shadow", "operator": "ops@hub"}),
                    ("model.activate", {"name": "xray", "version": "1.2.0", "sha256": "ab" * 32,
                                        "operator": "ops@hub"}),
                ]
                assert g.dispatcher.accepted == 6
                assert g.dispatcher.rejected == 0
            assert collector.json_on("/events") == []  # no COMMAND_REJECTED for good commands
            assert collector.contract_problems() == []

    asyncio.run(main())


def test_rejected_commands_reply_raise_an_event_and_do_nothing(broker: MosquittoBroker, tmp_path: Path) -> None:
    forged = make_command("lane.mode", {"lane": "L1", "mode": "closed"}, key=b"not-the-site-key")
    stale = signed("lane.mode", {"lane": "L1", "mode": "closed"},
                   ts=utc_timestamp(datetime.now(UTC) - timedelta(seconds=400)))
    future = signed("lane.mode", {"lane": "L1", "mode": "closed"},
                    ts=utc_timestamp(datetime.now(UTC) + timedelta(seconds=400)))
    tampered = signed("barrier", {"lane": "L1", "action": "close", "reason": "x"})
    tampered["args"]["action"] = "open"
    unsigned = signed("rebirth", {})
    del unsigned["sig"]
    replayed = signed("lane.mode", {"lane": "L2", "mode": "auto"})
    cases: list[tuple[str, dict[str, Any] | bytes, str | None, str]] = [
        ("lane.mode", forged, forged["request_id"], "bad signature"),
        ("barrier", tampered, tampered["request_id"], "bad signature"),
        ("rebirth", unsigned, unsigned["request_id"], "missing sig"),
        ("lane.mode", stale, stale["request_id"], "from the gate clock"),
        ("lane.mode", future, future["request_id"], "from the gate clock"),
        ("lane.mode", b"{not json", None, "malformed JSON"),
        ("lane.mode", b"[1, 2]", None, "not a JSON object"),
        ("lane.mode", {**signed("lane.mode", {"lane": "L1", "mode": "manual"}), "ts": 5}, None, "ts must be"),
        ("self.destruct", signed("self.destruct", {}), None, "unknown command"),
        ("lane.mode", signed("lane.mode", {"lane": "L9", "mode": "manual"}), None, "unknown lane"),
        ("lane.mode", signed("lane.mode", {"lane": "L1", "mode": "turbo"}), None, "mode must be one of"),
        ("barrier", signed("barrier", {"lane": "L1", "action": "open"}), None, "missing reason"),
        ("rebirth", signed("rebirth", {"now": True}), None, "unexpected now"),
        ("scan.fetch", signed("scan.fetch", {"scan_id": "../../etc/passwd"}), None, "scan_id must be"),
        ("inspection.result", signed("inspection.result", {"transaction_id": "T1", "finding": "clean",
                                                            "labels": "x"}), None, "labels must be"),
        ("review.mode", signed("review.mode", {"lane": "L1", "mode": "auto"}), None, "mode must be one of"),
        ("review.confirm", signed("review.confirm", {"scan_id": "S1", "finding": "maybe"}), None,
         "finding must be one of"),
        ("review.confirm", signed("review.confirm", {"scan_id": "S1", "finding": "anomaly", "regions": [
            {"x": -1, "y": 0, "w": 5, "h": 5, "label": "weapon"}]}), None, "each region needs"),
        ("review.confirm", signed("review.confirm", {"scan_id": "S1", "finding": "clean", "why": 1}), None,
         "unexpected why"),
        ("model.activate", signed("model.activate", {"name": "m", "version": "1.0", "sha256": "ABC"}), None,
         "sha256 must be"),
        ("model.activate", signed("model.activate", {"name": "m", "version": "1.0-rc", "sha256": "a" * 64}), None,
         "version must be"),
    ]

    async def main() -> None:
        with hub_client(broker) as client, Collector(broker, client_id="c-cmd-bad") as collector:
            async with gate(broker, tmp_path) as g:
                first = await send(client, "lane.mode", replayed)
                assert first["ok"] is True
                again = await send(client, "lane.mode", replayed)
                assert again == {**again, "ok": False, "request_id": replayed["request_id"]}
                assert "already used" in again["error"]
                for name, payload, request_id, needle in cases:
                    reply = await send(client, name, payload)
                    expected_id = request_id if request_id is not None else (
                        payload.get("request_id") if isinstance(payload, dict) and isinstance(
                            payload.get("request_id"), str) else None)
                    assert reply["ok"] is False, (name, needle)
                    assert reply["request_id"] == expected_id
                    assert needle in reply["error"], (needle, reply["error"])
                assert g.target.calls == [("lane.mode", {"lane": "L2", "mode": "auto"})]  # only the genuine one
                assert g.dispatcher.rejected == len(cases) + 1
                await asyncio.to_thread(collector.wait_for,
                                        lambda c: len(c.json_on("/events")) == len(cases) + 1
                                        and len(c.json_on("/reply")) == len(cases) + 2)
            events = collector.json_on("/events")
            assert {e["code"] for e in events} == {"COMMAND_REJECTED"}
            kinds = [e["detail"]["kind"] for e in events]
            assert kinds.count("signature") == 2
            assert kinds.count("stale") == 2
            assert kinds.count("replay") == 1
            assert all(e["type"] == "alarm" and e["active"] for e in events)
            replies = collector.json_on("/reply")
            assert len(replies) == len(cases) + 2  # exactly one reply per command
            assert collector.contract_problems(ignore=("/cmd/",)) == []  # our deliberately broken commands

    asyncio.run(main())


def test_refused_command_replies_with_the_reason(broker: MosquittoBroker, tmp_path: Path) -> None:
    async def main() -> None:
        with hub_client(broker) as client:
            async with gate(broker, tmp_path) as g:
                g.target.refuse = "lane L1 has a vehicle under the barrier"
                reply = await send(client, "barrier", signed("barrier", {"lane": "L1", "action": "close",
                                                                          "reason": "end of shift"}))
                assert reply["ok"] is False
                assert reply["error"] == "lane L1 has a vehicle under the barrier"
                assert g.dispatcher.rejected == 0

    asyncio.run(main())


def test_replay_cache_survives_a_restart_and_forgets_after_the_window(tmp_path: Path) -> None:
    now = {"t": datetime(2026, 11, 22, 4, 0, tzinfo=UTC)}
    cache = ReplayCache(tmp_path / "r.db", window_s=86400, wall_clock=lambda: now["t"])
    assert cache.remember("req-1")
    assert not cache.remember("req-1")
    cache.close()
    cache = ReplayCache(tmp_path / "r.db", window_s=86400, wall_clock=lambda: now["t"])
    try:
        assert not cache.remember("req-1")  # a restart does not reopen the window
        now["t"] += timedelta(hours=24, seconds=1)
        assert cache.remember("req-1")
    finally:
        cache.close()


def make_scan(scan_id: str) -> Scan:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 65535, size=(2, 48, 80), dtype=np.uint16)
    return Scan(pixels=pixels, scan_id=scan_id, bits=16, pixel_mm=5.0, declared="general")


def test_scan_fetch_and_inspection_result(broker: MosquittoBroker, tmp_path: Path) -> None:
    import cv2

    async def main() -> None:
        with hub_client(broker) as client, Collector(broker, client_id="c-cmd-scan") as collector:
            async with gate(broker, tmp_path) as g:
                scan = make_scan("SCAN-42")
                await asyncio.to_thread(g.archive.store_scan, scan)
                record = transaction_record(42, scan_id="SCAN-42")
                await g.outbox.complete_transaction(record)

                reply = await send(client, "scan.fetch", signed("scan.fetch", {"scan_id": "SCAN-42"}))
                assert reply["ok"] is True
                # The collector is a separate subscriber: wait until it has the image and the reply.
                await asyncio.to_thread(collector.wait_for, lambda c: len(c.on("/scans/SCAN-42/image")) == 1
                                        and len(c.on("/reply")) >= 1)
                png = collector.on("/scans/SCAN-42/image")[0].payload
                image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
                assert image is not None
                assert image.dtype == np.uint16
                assert np.array_equal(image, scan.pixels[0])  # full resolution, channel 0, lossless
                # The image went out before the reply (same outbox, commit order).
                topics = [m.topic for m in collector.messages]
                assert topics.index(f"{ROOT}/scans/SCAN-42/image") < max(
                    i for i, t in enumerate(topics) if t == f"{ROOT}/reply")

                missing = await send(client, "scan.fetch", signed("scan.fetch", {"scan_id": "SCAN-404"}))
                assert missing["ok"] is False
                assert "not in the archive" in missing["error"]

                args = {"transaction_id": record["transaction_id"], "finding": "contraband",
                        "labels": ["cigarettes", "false-wall"]}
                reply = await send(client, "inspection.result", signed("inspection.result", args))
                assert reply["ok"] is True, reply
                unknown = await send(client, "inspection.result", signed("inspection.result", {
                    **args, "transaction_id": "01J0000000000000000000000X"}))
                assert unknown["ok"] is False
                assert "not known" in unknown["error"]
            assert collector.contract_problems() == []

        samples = list(iter_samples(tmp_path / "samples"))
        assert len(samples) == 1
        sample, scan_path = samples[0]
        assert sample["finding"] == "contraband"
        assert sample["labels"] == ["cigarettes", "false-wall"]
        assert sample["transaction_id"] == record["transaction_id"]
        assert sample["transaction"]["scan"]["scan_id"] == "SCAN-42"
        assert sample["transaction"]["msg_id"]  # the record as published
        assert sample["issued_by"] == "ops@hub"
        assert np.array_equal(load_scan(scan_path).pixels, make_scan("SCAN-42").pixels)
        on_disk = json.loads((tmp_path / "samples" / f"{record['transaction_id']}.json").read_text())
        assert on_disk == sample
        # The training code reads the sample directory as it is.
        from inference.training.dataset import load_field_samples

        (field,) = load_field_samples(tmp_path / "samples")
        assert (field.finding, field.labels, field.declared) == ("contraband", ("cigarettes", "false-wall"), "general")

    asyncio.run(main())


def test_scan_fetch_when_archiving_is_off(broker: MosquittoBroker, tmp_path: Path) -> None:
    async def main() -> None:
        with hub_client(broker) as client:
            async with gate(broker, tmp_path) as g:
                g.archive.enabled = False
                assert await asyncio.to_thread(g.archive.store_scan, make_scan("S1")) is None
                reply = await send(client, "scan.fetch", signed("scan.fetch", {"scan_id": "S1"}))
                assert reply["ok"] is False
                assert "switched off" in reply["error"]

    asyncio.run(main())
