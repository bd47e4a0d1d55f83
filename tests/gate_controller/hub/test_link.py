"""The hub link against a real mosquitto with TLS and password auth."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gate_controller.core.errors import ConfigError
from gate_controller.hub.hub_side import HubClient
from gate_controller.hub.link import BirthInfo, HubLink
from gate_controller.hub.outbox import Outbox
from tests.support.broker import (
    BROKER_MARKS,
    HUB_USER,
    MosquittoBroker,
    make_tls_material,
    running_broker,
)
from tests.support.hub import (
    COMMAND_KEY,
    GATE,
    ROOT,
    SITE,
    Collector,
    mqtt_config,
    transaction_record,
    write_key,
)

pytestmark = BROKER_MARKS


def birth() -> BirthInfo:
    return BirthInfo(lanes=["L1", "L2"], links={"scanner-l1": "up", "ocr-l1": "down"},
                     model={"name": "cargo-anomaly", "version": "1.0.0", "sha256": "cd" * 32})


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of this test alone (it gets stopped, paused and restarted)."""
    with running_broker(tmp_path / "broker") as b:
        yield b


def open_outbox(tmp_path: Path, **kwargs: Any) -> Outbox:
    return Outbox.open(tmp_path / "outbox.sqlite3", root_topic=ROOT, site=SITE, gate=GATE, **kwargs)


@asynccontextmanager
async def running_hub(hub: HubLink) -> AsyncIterator[HubLink]:
    task = asyncio.create_task(hub.run(), name="hub")
    try:
        yield hub
    finally:
        await hub.shutdown(grace_s=2.0)
        await asyncio.wait_for(task, 15)


async def until(predicate: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(0.02)


def make_hub(broker: MosquittoBroker, tmp_path: Path, outbox: Outbox, **overrides: Any) -> HubLink:
    key = write_key(tmp_path)
    hub_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in ("notices", "commands", "notice_key")}
    return HubLink(mqtt_config(broker, key, **overrides), site=SITE, gate=GATE, outbox=outbox, birth=birth,
                   **hub_kwargs)


def statuses(collector: Collector) -> list[dict[str, Any]]:
    return collector.json_on("/status")


def test_birth_rebirth_will_and_clean_shutdown(shared_broker: MosquittoBroker, tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    with Collector(shared_broker, client_id="c-birth") as collector:
        async def main() -> None:
            hub = make_hub(shared_broker, tmp_path, outbox)
            async with running_hub(hub):
                await asyncio.wait_for(hub.wait_connected(), 10)
                await until(lambda: any(s["state"] == "online" for s in statuses(collector)), what="birth")
                first = [s for s in statuses(collector) if s["state"] == "online"][-1]
                assert first["boot_id"] == outbox.boot_id == 1
                assert first["lanes"] == ["L1", "L2"]
                assert first["links"] == {"scanner-l1": "up", "ocr-l1": "down"}
                assert first["model"]["name"] == "cargo-anomaly"
                assert (first["site"], first["gate"]) == (SITE, GATE)

                assert await hub.rebirth()
                await until(lambda: sum(s["state"] == "online" for s in statuses(collector)) >= 2, what="rebirth")

                # Cut the gate's TCP connection without a DISCONNECT: the broker publishes the Will.
                session = hub._session
                assert session is not None
                sock = session.client.socket()
                assert sock is not None
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
                await until(lambda: any(s.get("reason") == "connection-lost" for s in statuses(collector)),
                            what="will")
                will = next(s for s in statuses(collector) if s.get("reason") == "connection-lost")
                assert will == {"state": "offline", "reason": "connection-lost", "boot_id": 1, "gate": GATE,
                                "site": SITE}
                # ... and the gate comes back by itself, with a new birth and a LINK_DOWN pair.
                await until(lambda: sum(s["state"] == "online" for s in statuses(collector)) >= 3, what="rebirth")
                await until(lambda: len(collector.json_on("/events")) >= 2, what="LINK_DOWN events")
                events = sorted(collector.json_on("/events"), key=lambda e: e["seq"])
                assert [(e["code"], e["active"]) for e in events] == [("LINK_DOWN", True), ("LINK_DOWN", False)]
                assert events[0]["detail"]["link"] == "hub"
                assert events[0]["historical"] is True  # committed while the link was down
            last = statuses(collector)[-1]
            await asyncio.sleep(0)
            assert last["state"] in ("offline", "online")

        try:
            asyncio.run(main())
        finally:
            outbox.close()
        collector.wait_for(lambda c: statuses(c)[-1].get("reason") == "shutdown")
        death = statuses(collector)[-1]
        assert death["state"] == "offline"
        assert death["boot_id"] == 1
        datetime.fromisoformat(death["ts"].replace("Z", "+00:00"))
        assert collector.contract_problems() == []
    # The retained status is the clean shutdown, not the Will: the DISCONNECT reached the broker.
    assert shared_broker.tls is not None
    with HubClient(shared_broker.url, username=HUB_USER[0], password=HUB_USER[1],
                   ca_file=str(shared_broker.tls.ca_file)) as late:
        late.subscribe(f"{ROOT}/status")
        message = late.receive(5.0)
        assert message is not None
        assert message.retain
        assert message.json()["reason"] == "shutdown"


def test_first_connect_to_a_down_broker_then_backlog_arrives(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    # The hub side subscribes with a persistent session first, so the broker queues for it
    # whatever the gate publishes after the restart, however fast the gate reconnects.
    broker.start()
    collector = Collector(broker, client_id="c-down").__enter__()
    broker.stop()
    outbox = open_outbox(tmp_path)

    async def main() -> None:
        hub = make_hub(broker, tmp_path, outbox)
        async with running_hub(hub):
            for i in range(5):
                await outbox.complete_transaction(transaction_record(i))
            await asyncio.sleep(0.5)  # several failed attempts, with backoff
            assert not hub.connected
            assert hub.status().sessions >= 2
            assert "Connection refused" in (hub.status().last_error or "")
            await asyncio.to_thread(broker.start)
            await asyncio.wait_for(hub.wait_connected(), 10)
            await until(lambda: outbox.pending_count() == 0, what="drain")
            await until(lambda: len(collector.json_on("/transactions")) == 5, what="5 transactions")
            await until(lambda: len(collector.json_on("/events")) == 2, what="LINK_DOWN pair")

    try:
        asyncio.run(main())
        transactions = collector.json_on("/transactions")
        assert all(t["historical"] for t in transactions)  # committed while the broker was down
        seqs = [t["seq"] for t in transactions]
        assert seqs == sorted(seqs)
        # Live messages interleave with the backlog, so the hub orders by seq.
        events = sorted(collector.json_on("/events"), key=lambda e: e["seq"])
        assert [(e["code"], e["active"]) for e in events] == [("LINK_DOWN", True), ("LINK_DOWN", False)]
        assert sorted(seqs + [e["seq"] for e in events]) == list(range(1, 8))
        assert collector.contract_problems() == []
    finally:
        collector.__exit__()
        broker.stop()
        outbox.close()


def test_wrong_password_keeps_retrying_and_stops_promptly(shared_broker: MosquittoBroker, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pw"
    bad.write_text("not-the-password\n")
    outbox = open_outbox(tmp_path)

    async def main() -> None:
        hub = make_hub(shared_broker, tmp_path, outbox, password_file=str(bad))
        async with running_hub(hub):
            await until(lambda: hub.status().sessions >= 3, what="retries")
            assert not hub.connected
            assert "refused" in (hub.status().last_error or "")
        started = time.monotonic()
        await hub.shutdown()
        assert time.monotonic() - started < 1.0

    try:
        asyncio.run(main())
    finally:
        outbox.close()


def test_broker_certificate_is_verified(shared_broker: MosquittoBroker, tmp_path: Path) -> None:
    other = make_tls_material(tmp_path / "other-ca")
    outbox = open_outbox(tmp_path)

    async def main() -> None:
        hub = make_hub(shared_broker, tmp_path, outbox, tls={"ca_file": str(other.ca_file)})
        async with running_hub(hub):
            await until(lambda: hub.status().sessions >= 2, what="retries")
            assert not hub.connected
            assert "CERTIFICATE_VERIFY_FAILED" in (hub.status().last_error or "")

    try:
        asyncio.run(main())
    finally:
        outbox.close()
    with pytest.raises(ConfigError, match="tls"):
        make_hub(shared_broker, tmp_path, outbox, tls={"ca_file": str(tmp_path / "missing.pem")})


def test_client_certificate_and_password(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", require_client_cert=True)
    broker.start()
    outbox = open_outbox(tmp_path)

    async def main() -> None:
        hub = make_hub(broker, tmp_path, outbox)
        async with running_hub(hub):
            await asyncio.wait_for(hub.wait_connected(), 10)
            await outbox.complete_transaction(transaction_record(1))
            await until(lambda: outbox.pending_count() == 0, what="PUBACK")

    try:
        asyncio.run(main())
    finally:
        broker.stop()
        outbox.close()


def test_window_is_bounded_and_rows_stay_until_puback(broker: MosquittoBroker, tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)

    async def main() -> None:
        hub = make_hub(broker, tmp_path, outbox, max_inflight=4, keepalive_s=30)
        async with running_hub(hub):
            await asyncio.wait_for(hub.wait_connected(), 10)
            broker.pause()  # the broker reads nothing and acknowledges nothing
            try:
                for i in range(20):
                    await outbox.complete_transaction(transaction_record(i))
                await until(lambda: hub.status().inflight == 4, what="window full")
                await asyncio.sleep(0.3)
                assert hub.status().inflight == 4  # never more than max_inflight awaiting PUBACK
                assert hub.status().published == 4
                assert outbox.pending_count() == 20  # nothing deleted without a PUBACK
            finally:
                broker.resume()
            await until(lambda: outbox.pending_count() == 0, what="drain after resume")
            assert hub.status().acknowledged == 20

    try:
        asyncio.run(main())
    finally:
        outbox.close()


def test_live_messages_are_not_starved_by_a_long_backlog(broker: MosquittoBroker, tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    backlog = 1500

    async def main() -> None:
        await asyncio.gather(*(outbox.complete_transaction(transaction_record(i)) for i in range(backlog)))
        with Collector(broker, client_id="c-live") as collector:
            hub = make_hub(broker, tmp_path, outbox, max_inflight=8)
            async with running_hub(hub):
                await asyncio.wait_for(hub.wait_connected(), 10)
                await until(lambda: hub.status().acknowledged >= 50, what="drain started")
                live = transaction_record(99_999)
                await outbox.complete_transaction(live)
                await until(lambda: outbox.pending_count() == 0, within=60, what="drain")
                await until(lambda: len(collector.json_on("/transactions")) >= backlog + 1, what="all received")
            transactions = collector.json_on("/transactions")
            position = next(i for i, t in enumerate(transactions) if t["transaction_id"] == live["transaction_id"])
            assert transactions[position]["historical"] is False
            assert position < backlog / 2, f"live message waited behind {position} backlog messages"
            backlog_seqs = [t["seq"] for t in transactions if t["historical"]]
            assert backlog_seqs == sorted(backlog_seqs)  # the backlog drains in seq order
            assert len({t["msg_id"] for t in transactions}) == backlog + 1

    try:
        asyncio.run(main())
    finally:
        outbox.close()


def test_mid_wraparound_maps_every_puback_to_its_row(shared_broker: MosquittoBroker, tmp_path: Path) -> None:
    """paho's 16-bit mid wraps after 65535; start each session just below it."""
    outbox = open_outbox(tmp_path)

    async def main() -> None:
        with Collector(shared_broker, client_id="c-wrap") as collector:
            hub = make_hub(shared_broker, tmp_path, outbox, max_inflight=16)
            original = hub._new_session

            def near_wrap(number: int) -> Any:
                session = original(number)
                session.client._last_mid = 65_520
                return session

            hub._new_session = near_wrap  # type: ignore[method-assign]
            async with running_hub(hub):
                await asyncio.wait_for(hub.wait_connected(), 10)
                await asyncio.gather(*(outbox.complete_transaction(transaction_record(i)) for i in range(100)))
                await until(lambda: outbox.pending_count() == 0, what="drain across the wrap")
                await until(lambda: len(collector.json_on("/transactions")) == 100, what="received")
            seqs = sorted(t["seq"] for t in collector.json_on("/transactions"))
            assert seqs == list(range(1, 101))

    try:
        asyncio.run(main())
    finally:
        outbox.close()


def test_previews_images_telemetry_and_notices(shared_broker: MosquittoBroker, tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    applied: list[tuple[str, bytes, bytes]] = []

    class Notices:
        def apply(self, container: str, payload: bytes, *, key: bytes, now: datetime) -> None:
            applied.append((container, payload, key))

    assert shared_broker.tls is not None
    with HubClient(shared_broker.url, username=HUB_USER[0], password=HUB_USER[1],
                   ca_file=str(shared_broker.tls.ca_file)) as hub_side:
        # Retained before the gate connects: delivered at subscribe time.
        hub_side.publish_notice(SITE, "MSKU1234565", "released", key=COMMAND_KEY, declared="general", ref="R1")

        async def main() -> None:
            with Collector(shared_broker, client_id="c-media") as collector:
                hub = make_hub(shared_broker, tmp_path, outbox, notices=Notices(), notice_key=COMMAND_KEY)
                async with running_hub(hub):
                    await asyncio.wait_for(hub.wait_connected(), 10)
                    assert await hub.publish_preview("SCAN-1", b"\xff\xd8\xff\xe0jpeg")
                    await hub.publish_image("SCAN-1", b"\x89PNG\r\n\x1a\npng")
                    await hub.publish_telemetry({"ts": "2026-11-22T04:00:00.000Z"})
                    with pytest.raises(ValueError, match="scan id"):
                        await hub.publish_preview("../etc", b"")
                    await until(lambda: len(applied) == 1, what="retained notice")
                    await asyncio.to_thread(hub_side.publish_notice, SITE, "TGHU7654320", "hold", key=COMMAND_KEY)
                    await asyncio.to_thread(hub_side.delete_notice, SITE, "MSKU1234565")
                    await until(lambda: len(applied) == 3, what="live notices")
                    await until(lambda: outbox.pending_count() == 0, what="drain")
                    await until(lambda: len(collector.on("/preview")) == 1 and len(collector.on("/image")) == 1
                                and len(collector.on("/telemetry")) == 1, what="media")
                assert collector.on("/scans/SCAN-1/preview")[0].payload.startswith(b"\xff\xd8\xff")
                assert collector.on("/scans/SCAN-1/image")[0].payload.startswith(b"\x89PNG")
                assert collector.on("/telemetry")[0].qos == 0

        try:
            asyncio.run(main())
        finally:
            outbox.close()
        hub_side.delete_notice(SITE, "TGHU7654320")
    assert [a[0] for a in applied] == ["MSKU1234565", "TGHU7654320", "MSKU1234565"]
    first = json.loads(applied[0][1])
    assert first["status"] == "released"
    assert applied[0][2] == COMMAND_KEY
    assert applied[2][1] == b""  # the deletion, handed over as the contract's empty payload


@pytest.mark.slow
def test_nothing_lost_across_20_broker_restarts(broker: MosquittoBroker, tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path)
    rng = random.Random(7)
    committed: list[str] = []

    async def produce(stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            record = transaction_record(n)
            await outbox.complete_transaction(record)
            committed.append(record["transaction_id"])
            n += 1
            if n % 25 == 0:
                await outbox.emit_event(lane="L1", type="state", code="LANE_MODE", severity="info", active=True,
                                        detail={"mode": "auto", "n": n})
            await asyncio.sleep(rng.uniform(0.002, 0.02))

    async def restart_broker(times: int) -> None:
        for _ in range(times):
            await asyncio.sleep(rng.uniform(0.15, 0.4))
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(rng.uniform(0.02, 0.15))
            await asyncio.to_thread(broker.start)

    async def main(collector: Collector) -> None:
        hub = make_hub(broker, tmp_path, outbox)
        async with running_hub(hub):
            await asyncio.wait_for(hub.wait_connected(), 10)
            stop = asyncio.Event()
            producer = asyncio.create_task(produce(stop))
            await restart_broker(20)
            await asyncio.sleep(0.3)
            stop.set()
            await producer
            await until(lambda: outbox.pending_count() == 0, within=30, what="outbox drained")
            assert hub.status().sessions >= 21
        next_seq = (await outbox.stats()).next_seq
        await until(lambda: len(collector.sequenced()) == next_seq - 1, within=30, what="every seq received")

    with Collector(broker, client_id="c-restarts") as collector:
        try:
            asyncio.run(main(collector))
        finally:
            outbox.close()
        sequenced = collector.sequenced()
        assert sorted(sequenced) == list(range(1, max(sequenced) + 1))  # no gap
        assert all(len(ids) == 1 for ids in sequenced.values())  # a duplicate carries the same msg_id
        received = {t["transaction_id"] for t in collector.json_on("/transactions")}
        assert received == set(committed)
        transactions = collector.json_on("/transactions")
        assert any(t["historical"] for t in transactions)
        assert any(not t["historical"] for t in transactions)
        assert collector.contract_problems() == []
    assert len(committed) > 100


def test_release_notices_reach_the_notice_store(shared_broker: MosquittoBroker, tmp_path: Path) -> None:
    from gate_controller.decision.notices import NoticeStore

    outbox = open_outbox(tmp_path)
    store = NoticeStore(tmp_path / "notices.sqlite3")
    assert shared_broker.tls is not None
    with HubClient(shared_broker.url, username=HUB_USER[0], password=HUB_USER[1],
                   ca_file=str(shared_broker.tls.ca_file)) as hub_side, \
            Collector(shared_broker, client_id="c-notices") as collector:
        # Retained before the gate connects: the gate learns the current state at subscribe time.
        hub_side.publish_notice(SITE, "CSQU3054383", "released", key=COMMAND_KEY, declared="general", ref="R-7")

        async def main() -> None:
            hub = make_hub(shared_broker, tmp_path, outbox, notices=store, notice_key=COMMAND_KEY)
            async with running_hub(hub):
                await asyncio.wait_for(hub.wait_connected(), 10)
                now = datetime.now().astimezone()
                await until(lambda: store.lookup("CSQU3054383", now) is not None, what="retained notice stored")
                notice = store.lookup("CSQU3054383", now)
                assert notice is not None
                assert (notice.status, notice.declared, notice.ref) == ("released", "general", "R-7")
                # A forged notice (wrong key) changes nothing and raises NOTICE_REJECTED.
                await asyncio.to_thread(hub_side.publish_notice, SITE, "CSQU3054383", "hold", key=b"forger")
                await until(lambda: any(e["code"] == "NOTICE_REJECTED" for e in collector.json_on("/events")),
                            what="NOTICE_REJECTED")
                notice = store.lookup("CSQU3054383", datetime.now().astimezone())
                assert notice is not None
                assert notice.status == "released"
                # The hub deletes the notice with an empty retained message.
                await asyncio.to_thread(hub_side.delete_notice, SITE, "CSQU3054383")
                await until(lambda: store.lookup("CSQU3054383", datetime.now().astimezone()) is None,
                            what="notice deleted")

        try:
            asyncio.run(main())
        finally:
            outbox.close()
            store.close()
        event = next(e for e in collector.json_on("/events") if e["code"] == "NOTICE_REJECTED")
        assert event["detail"]["container"] == "CSQU3054383"
        assert "signature" in event["detail"]["reason"]
        assert collector.contract_problems(ignore=("/release/",)) == []  # the forged notice is ours
