"""The durable outbox on its own: sequence numbers, boot ids, the journal, backlog limits."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gate_controller.config import BacklogConfig
from gate_controller.core.errors import OutboxError
from gate_controller.hub.hub_side import contract_errors
from gate_controller.hub.outbox import Outbox, OutboxRow
from tests.support.hub import GATE, ROOT, SITE, transaction_record

MB = 1024 * 1024


def open_outbox(path: Path, *, limits: BacklogConfig | None = None,
                disk_free: Callable[[], int] | None = None) -> Outbox:
    return Outbox.open(path, root_topic=ROOT, site=SITE, gate=GATE, limits=limits, disk_free=disk_free)


async def all_rows(outbox: Outbox) -> list[OutboxRow]:
    return await outbox.fetch_after(0, 1_000_000)


def test_seq_and_boot_id_survive_restarts(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite3"

    async def run(n: int) -> list[int]:
        outbox = open_outbox(db)
        try:
            seqs = []
            for i in range(n):
                committed = await outbox.commit_transaction(transaction_record(i))
                assert committed.seq is not None
                seqs.append(committed.seq)
            event = await outbox.commit_event(lane="L1", type="alarm", code="ESTOP", severity="critical",
                                              active=True, detail={"input": "estop"})
            assert event.seq is not None
            seqs.append(event.seq)
            return seqs
        finally:
            outbox.close()

    first = asyncio.run(run(3))
    second = asyncio.run(run(2))
    assert first == [1, 2, 3, 4]
    assert second == [5, 6, 7]  # seq continues across the restart; never reset, never reused
    outbox = open_outbox(db)
    try:
        assert outbox.boot_id == 3
        rows = asyncio.run(all_rows(outbox))
    finally:
        outbox.close()
    boots = [json.loads(r.payload)["boot_id"] for r in rows]
    assert boots == [1, 1, 1, 1, 2, 2, 2]


def test_wire_payload_is_contract_valid_and_carries_historical(tmp_path: Path) -> None:
    async def main() -> list[OutboxRow]:
        outbox = open_outbox(tmp_path / "o.db")
        try:
            await outbox.complete_transaction(transaction_record(1))
            await outbox.emit_event(lane=None, type="state", code="LANE_MODE", severity="info", active=True,
                                    detail={"mode": "manual"})
            return await all_rows(outbox)
        finally:
            outbox.close()

    rows = asyncio.run(main())
    assert [r.kind for r in rows] == ["transaction", "event"]
    for row in rows:
        for historical in (True, False):
            wire = row.wire_payload(historical=historical)
            doc = json.loads(wire)
            assert doc["historical"] is historical
            assert doc["seq"] == row.seq
            assert doc["msg_id"] == row.msg_id
            assert contract_errors(row.topic, wire) == []
    assert rows[0].topic == f"{ROOT}/transactions"
    assert rows[1].topic == f"{ROOT}/events"


def test_group_commit_keeps_seq_dense_and_ordered(tmp_path: Path) -> None:
    async def main() -> list[int]:
        outbox = open_outbox(tmp_path / "o.db")
        try:
            results = await asyncio.gather(*(outbox.commit_transaction(transaction_record(i)) for i in range(200)))
            rows = await all_rows(outbox)
        finally:
            outbox.close()
        assert sorted(r.seq for r in results if r.seq is not None) == list(range(1, 201))
        # Row order (the drain order) is seq order.
        return [r.seq for r in rows if r.seq is not None]

    assert asyncio.run(main()) == list(range(1, 201))


def test_bad_record_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db")
        try:
            with pytest.raises(ValueError, match="transaction_id"):
                await outbox.complete_transaction({"lane": "L1"})
            with pytest.raises(ValueError):
                await outbox.complete_transaction({"transaction_id": "T", "score": float("nan")})
            with pytest.raises(ValueError, match="UPPER_SNAKE"):
                await outbox.emit_event(lane=None, type="alarm", code="lower", severity="info", active=True,
                                        detail={})
            good = await outbox.commit_transaction(transaction_record(1))
            assert good.seq == 1  # the refused ones consumed no seq
        finally:
            outbox.close()

    asyncio.run(main())


def test_open_transaction_is_completed_once_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    record = transaction_record(7)
    record.pop("completed_at")
    record["barrier"] = {"raised_at": record["decided_at"], "lowered_at": None}

    async def crash() -> None:
        outbox = open_outbox(db)
        await outbox.open_transaction(record)
        # No complete_transaction and no close: the process "dies" with the journal entry open.
        outbox._writer.shutdown(wait=True)  # only to release the thread in this test process
        outbox._reader.shutdown(wait=True)

    asyncio.run(crash())
    for attempt in range(2):
        outbox = open_outbox(db)
        try:
            rows = asyncio.run(all_rows(outbox))
            if attempt == 0:
                assert outbox.recovered == (record["transaction_id"],)
            else:
                assert outbox.recovered == ()  # recovered exactly once
        finally:
            outbox.close()
    transactions = [json.loads(r.wire_payload(historical=True)) for r in rows if r.kind == "transaction"]
    assert len(transactions) == 1
    doc = transactions[0]
    assert doc["transaction_id"] == record["transaction_id"]
    assert doc["recovered"] is True
    assert doc["decision"]["action"] == "release"  # what was decided, and may have moved the barrier
    assert doc["decision"]["reasons"][-1] == "CANCELLED"
    assert doc["boot_id"] == 2
    assert contract_errors(f"{ROOT}/transactions", json.dumps(doc).encode()) == []


def test_complete_closes_the_journal_entry(tmp_path: Path) -> None:
    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db")
        try:
            record = transaction_record(1)
            await outbox.open_transaction(record)
            assert await outbox.open_transaction_ids() == [record["transaction_id"]]
            await outbox.complete_transaction(record)
            assert await outbox.open_transaction_ids() == []
        finally:
            outbox.close()

    asyncio.run(main())
    outbox = open_outbox(tmp_path / "o.db")
    try:
        assert outbox.recovered == ()
    finally:
        outbox.close()


def test_acknowledge_deletes_only_the_given_rows(tmp_path: Path) -> None:
    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db")
        try:
            for i in range(5):
                await outbox.complete_transaction(transaction_record(i))
            rows = await all_rows(outbox)
            assert await outbox.acknowledge([rows[1].id, rows[3].id, 99999]) == 2
            left = await all_rows(outbox)
            assert [r.seq for r in left] == [1, 3, 5]
            stats = await outbox.stats()
            assert stats.pending == 3
            assert stats.sequenced == 3
            assert stats.next_seq == 6
        finally:
            outbox.close()

    asyncio.run(main())


def test_per_kind_caps_drop_oldest_telemetry_and_previews(tmp_path: Path) -> None:
    limits = BacklogConfig(max_messages=100, max_mb=100, max_previews=3, max_telemetry=2, min_free_disk_mb=1)

    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db", limits=limits)
        try:
            for i in range(5):
                await outbox.enqueue_telemetry({"n": i})
                await outbox.enqueue_preview(f"S{i}", b"\xff\xd8\xff" + bytes([i]) * 10)
            await outbox.enqueue_image("S9", b"\x89PNG\r\n\x1a\n" + b"x" * 10)
            rows = await all_rows(outbox)
            telemetry = [json.loads(r.payload)["n"] for r in rows if r.kind == "telemetry"]
            media = [r.topic.rsplit("/", 2)[-2] for r in rows if r.kind in ("preview", "image")]
            assert telemetry == [3, 4]
            assert media == ["S3", "S4", "S9"]  # previews and images share the media cap
            stats = await outbox.stats()
            assert stats.dropped == {"telemetry": 3, "preview": 3, "image": 0}
            assert not stats.full
        finally:
            outbox.close()

    asyncio.run(main())


def test_space_limit_drops_telemetry_then_previews_never_transactions(tmp_path: Path) -> None:
    limits = BacklogConfig(max_messages=1000, max_mb=1, max_previews=1000, max_telemetry=1000, min_free_disk_mb=1)
    big = b"\xff\xd8\xff" + b"p" * (175 * 1000)

    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db", limits=limits)
        try:
            for i in range(3):
                await outbox.enqueue_telemetry({"n": i, "pad": "t" * 100_000})
            for i in range(4):
                await outbox.enqueue_preview(f"P{i}", big)
            kinds = [r.kind for r in await all_rows(outbox)]
            assert kinds.count("telemetry") == 3
            assert kinds.count("preview") == 4
            # ~1.0 MB pending: a 60 kB transaction pushes past 1 MiB. Telemetry goes first.
            await outbox.complete_transaction(transaction_record(0))
            kinds = [r.kind for r in await all_rows(outbox)]
            assert kinds.count("telemetry") == 3
            await outbox.complete_transaction({**transaction_record(1), "extra": {"pad": "x" * 60_000}})
            await outbox.complete_transaction(transaction_record(2))
            kinds = [r.kind for r in await all_rows(outbox)]
            assert kinds.count("transaction") == 3
            assert kinds.count("telemetry") == 2
            assert kinds.count("preview") == 4  # previews untouched while telemetry could make room
            # Fill up with transactions: telemetry is gone first, then previews, transactions never.
            pad = {"pad": "x" * 50_000}
            for i in range(30):
                await outbox.complete_transaction({**transaction_record(100 + i), "extra": pad})
            rows = await all_rows(outbox)
            kinds = [r.kind for r in rows]
            assert kinds.count("telemetry") == 0
            assert kinds.count("preview") == 0
            assert kinds.count("transaction") == 33
            seqs = [r.seq or 0 for r in rows if r.kind == "transaction"]
            assert seqs == sorted(seqs)
            full_events = [json.loads(r.payload) for r in rows if r.kind == "event"]
            assert [e["code"] for e in full_events] == ["BACKLOG_FULL"]
            assert full_events[0]["active"] is True
            assert full_events[0]["detail"]["dropped"]["telemetry"] == 3
            assert (await outbox.stats()).full
        finally:
            outbox.close()

    asyncio.run(main())


def test_backlog_full_alarm_raises_keeps_accepting_and_clears(tmp_path: Path) -> None:
    limits = BacklogConfig(max_messages=100, max_mb=100, max_previews=10, max_telemetry=10, min_free_disk_mb=1)

    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db", limits=limits)
        try:
            for i in range(120):
                await outbox.complete_transaction(transaction_record(i))
            rows = await all_rows(outbox)
            transactions = [r for r in rows if r.kind == "transaction"]
            events = [json.loads(r.wire_payload(historical=False)) for r in rows if r.kind == "event"]
            assert len(transactions) == 120  # kept accepting past max_messages
            assert [(e["code"], e["active"]) for e in events] == [("BACKLOG_FULL", True)]
            assert events[0]["seq"] == 101  # raised when the 100th message was committed
            for e in events:
                assert contract_errors(f"{ROOT}/events", json.dumps(e).encode()) == []
            # The hub comes back: once below 90 % the alarm clears, in the same commit as the deletion.
            await outbox.acknowledge([r.id for r in transactions[:40]])
            rows = await all_rows(outbox)
            events = [json.loads(r.payload) for r in rows if r.kind == "event"]
            assert [(e["code"], e["active"]) for e in events] == [("BACKLOG_FULL", True), ("BACKLOG_FULL", False)]
            assert not (await outbox.stats()).full
        finally:
            outbox.close()

    asyncio.run(main())
    # The alarm state is persisted: a restart while full does not raise it a second time.
    conn = sqlite3.connect(tmp_path / "o.db")
    try:
        assert dict(conn.execute("SELECT key, value FROM meta").fetchall())["backlog_full"] == 0
    finally:
        conn.close()


def test_low_disk_drops_droppables_and_alarms(tmp_path: Path) -> None:
    free = {"bytes": 500 * MB}
    limits = BacklogConfig(max_messages=1000, max_mb=1000, max_previews=100, max_telemetry=100, min_free_disk_mb=200)

    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db", limits=limits, disk_free=lambda: free["bytes"])
        try:
            await outbox.enqueue_telemetry({"n": 1})
            await outbox.enqueue_preview("P1", b"\xff\xd8\xff" + b"x" * 1000)
            free["bytes"] = 150 * MB  # the disk fills up from elsewhere
            await outbox.complete_transaction(transaction_record(1))
            kinds = [r.kind for r in await all_rows(outbox)]
            assert "telemetry" not in kinds
            assert "preview" not in kinds
            assert kinds.count("transaction") == 1
            assert (await outbox.stats()).full
            free["bytes"] = 400 * MB
            await outbox.complete_transaction(transaction_record(2))
            events = [json.loads(r.payload) for r in await all_rows(outbox) if r.kind == "event"]
            assert [e["active"] for e in events] == [True, False]
        finally:
            outbox.close()

    asyncio.run(main())


def test_commit_failure_is_an_outbox_error_and_consumes_no_seq(tmp_path: Path) -> None:
    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db")
        try:
            await outbox.complete_transaction(transaction_record(1))
            # Another process holds the write lock longer than the busy timeout allows: the commit fails.
            outbox._store.conn.execute("PRAGMA busy_timeout=50")
            blocker = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                with pytest.raises(OutboxError, match="commit failed"):
                    await outbox.complete_transaction(transaction_record(9))
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            committed = await outbox.commit_transaction(transaction_record(3))
            assert committed.seq == 2
        finally:
            outbox.close()

    asyncio.run(main())


def test_closed_outbox_refuses(tmp_path: Path) -> None:
    outbox = open_outbox(tmp_path / "o.db")
    outbox.close()
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        asyncio.run(outbox.complete_transaction(transaction_record(1)))


def test_timestamps_use_the_injected_clock(tmp_path: Path) -> None:
    fixed = datetime(2026, 11, 22, 4, 0, 0, 123000, tzinfo=UTC)
    outbox = Outbox.open(tmp_path / "o.db", root_topic=ROOT, site=SITE, gate=GATE, wall_clock=lambda: fixed)
    try:
        asyncio.run(outbox.emit_event(lane=None, type="alarm", code="ESTOP", severity="critical", active=True,
                                      detail={}))
        rows = asyncio.run(all_rows(outbox))
    finally:
        outbox.close()
    assert json.loads(rows[0].payload)["ts"] == "2026-11-22T04:00:00.123Z"


def test_observers_see_the_backlog_alarm_the_outbox_raises_itself(tmp_path: Path) -> None:
    """BACKLOG_FULL is written on the writer thread inside another commit; observers (the console's
    alarms page) get it on the loop like any other event, raised and cleared, in seq order."""
    limits = BacklogConfig(max_messages=10, max_mb=100, max_previews=10, max_telemetry=10, min_free_disk_mb=1)

    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db", limits=limits)
        seen: list[tuple[str, dict[str, object]]] = []
        loop_thread: list[bool] = []

        def observer(kind: str, message: Mapping[str, object]) -> None:
            loop_thread.append(asyncio.get_running_loop() is loop)
            seen.append((kind, dict(message)))

        loop = asyncio.get_running_loop()
        outbox.add_observer(observer)
        try:
            for i in range(12):
                await outbox.complete_transaction(transaction_record(i))
            await asyncio.sleep(0.05)  # the alarm is handed over one loop turn after its commit
            alarms = [m for k, m in seen if k == "event"]
            assert [(m["code"], m["active"]) for m in alarms] == [("BACKLOG_FULL", True)]
            raised = alarms[0]
            assert (raised["seq"], raised["boot_id"]) == (11, outbox.boot_id)
            assert (raised["severity"], raised["type"], raised["lane"]) == ("error", "alarm", None)
            wire = json.dumps({**raised, "historical": False}).encode()  # observers get it without the flag
            assert contract_errors(f"{ROOT}/events", wire) == []
            seqs = [m["seq"] for _, m in seen]
            assert seqs == sorted(seqs) == list(range(1, 14))  # 12 transactions and the alarm, in order
            # It is the same message the hub receives (same msg_id in the outbox row).
            rows = [r for r in await all_rows(outbox) if r.kind == "event"]
            assert [json.loads(r.payload)["msg_id"] for r in rows] == [raised["msg_id"]]
            # Cleared by an acknowledgement (a commit no lane observes): still handed over.
            transactions = [r for r in await all_rows(outbox) if r.kind == "transaction"]
            await outbox.acknowledge([r.id for r in transactions[:8]])
            await asyncio.sleep(0.05)
            alarms = [m for k, m in seen if k == "event"]
            assert [(m["code"], m["active"]) for m in alarms] == [("BACKLOG_FULL", True), ("BACKLOG_FULL", False)]
            assert alarms[1]["severity"] == "info"
            assert all(loop_thread)
        finally:
            outbox.close()

    asyncio.run(main())


def test_a_commit_that_fails_hands_no_backlog_alarm_to_observers(tmp_path: Path) -> None:
    """The alarm goes to observers only once committed: a failing commit that would have raised it
    leaves the observers (and the outbox) without it."""
    limits = BacklogConfig(max_messages=10, max_mb=100, max_previews=10, max_telemetry=10, min_free_disk_mb=1)

    async def main() -> None:
        outbox = open_outbox(tmp_path / "o.db", limits=limits)
        seen: list[str] = []
        outbox.add_observer(lambda kind, message: seen.append(str(message.get("code", kind))))
        try:
            for i in range(9):
                await outbox.complete_transaction(transaction_record(i))
            blocker = sqlite3.connect(tmp_path / "o.db", timeout=0)
            blocker.execute("BEGIN EXCLUSIVE")  # the next commit cannot get its write lock
            try:
                outbox._store.conn.execute("PRAGMA busy_timeout = 50")
                with pytest.raises(OutboxError):
                    await outbox.complete_transaction(transaction_record(9))
            finally:
                blocker.rollback()
                blocker.close()
            await asyncio.sleep(0.05)
            assert seen == ["transaction"] * 9
            assert not [r for r in await all_rows(outbox) if r.kind == "event"]
            await outbox.complete_transaction(transaction_record(10))
            await asyncio.sleep(0.05)
            assert seen == ["transaction"] * 10 + ["BACKLOG_FULL"]
        finally:
            outbox.close()

    asyncio.run(main())
