"""Passages through a lane against the virtual PLC: release, stop, cancel, queueing, operator commands."""

from __future__ import annotations

import asyncio
import re

import pytest

from gate_controller.core.ports import CommandRefused
from gate_controller.lane.machine import UNFAMILIAR_ALARM_S, Mode, Phase
from gate_controller.lane.transaction import TransactionRecord
from gate_controller.plc.driver import DisplayMessage, LaneStateCode
from gate_controller.plc.sim import Spot
from tests.support.plc import ScriptedDecider, lane_rig, run_async

TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def check_record(record: dict[str, object]) -> None:
    assert record["schema"] == "smartgate.transaction/1"
    assert ULID.match(str(record["transaction_id"]))
    for key in ("arrived_at", "decided_at", "completed_at"):
        assert TS.match(str(record[key])), (key, record[key])
    assert set(record) == {"schema", "transaction_id", "site", "gate", "lane", "arrived_at", "decided_at",
                           "completed_at", "plate", "containers", "scan", "decision", "barrier", "timings_ms"}
    assert "msg_id" not in record
    assert "seq" not in record


@run_async
async def test_release_passage_commits_before_the_barrier_moves_and_publishes_on_completion() -> None:
    async with lane_rig() as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence(containers=("MSCU1234565", "TGHU9876544"))
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.RELEASED, what="released")
        await rig.until(lambda: rig.plc.coils["light_green"], what="green once the barrier is up")
        assert rig.plc.holding["display_message"] == DisplayMessage.PROCEED
        await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)
        await rig.until(lambda: rig.lane.phase is Phase.IDLE and rig.journal.completed, what="complete")
        [record] = rig.journal.completed
        check_record(record)
        assert record["decision"] == {"action": "release", "reasons": ["ALL_RELEASED", "SCAN_CLEAR"],
                                      "by": "auto", "operator": None}
        assert [c["number"] for c in record["containers"]] == ["MSCU1234565", "TGHU9876544"]
        assert record["plate"] == {"text": "AB123CD", "confidence": 0.95}
        assert TS.match(record["barrier"]["raised_at"])
        assert TS.match(record["barrier"]["lowered_at"])
        timings = record["timings_ms"]
        assert 0 <= timings["arrival_to_decision"] <= timings["arrival_to_complete"]
        assert timings["scan_end_to_decision"] is not None
        # Durable before the barrier moved: the open record precedes the raise on the wire.
        opened_at = next(t for t, kind, _ in rig.journal.timeline if kind == "open")
        raise_write = next(w for w in rig.plc.writes_of("barrier_raise") if w.value is True)
        assert opened_at <= raise_write.at
        lower = [w for w in rig.plc.writes_of("barrier_raise") if w.value is False]
        assert lower
        assert all(not w.inputs["loop_safety"] for w in lower)
        [evidence] = rig.decider.calls
        assert [r.text for r in evidence.container_reads] == ["MSCU1234565", "TGHU9876544"]
        assert evidence.scan is not None
        assert evidence.has_scanner
        assert not evidence.plc_fault
        assert rig.plc.coils["light_red"]
        assert not rig.plc.coils["light_green"]


@run_async
async def test_inspect_keeps_the_barrier_down_and_closes_when_the_truck_leaves() -> None:
    async with lane_rig(decider=ScriptedDecider().then("inspect")) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="stopped")
        await rig.until(lambda: rig.plc.coils["sign_inspection"]
                        and rig.plc.holding["display_message"] == DisplayMessage.GO_TO_INSPECTION, what="sign")
        assert rig.plc.coils["light_red"]
        assert not rig.plc.coils["barrier_raise"]
        assert rig.journal.opened[0]["decision"]["action"] == "inspect"
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: rig.journal.completed, what="completed")
        [record] = rig.journal.completed
        assert record["decision"]["action"] == "inspect"
        assert "CANCELLED" not in record["decision"]["reasons"]
        assert record["barrier"] is None
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))


@run_async
async def test_a_held_vehicle_closes_as_manual_after_hold_s() -> None:
    async with lane_rig(decider=ScriptedDecider().then("hold"), timeouts={"hold_s": 30.0}) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="stopped")
        await rig.until(lambda: rig.plc.holding["display_message"] == DisplayMessage.STOP_WAIT, what="STOP-WAIT")
        rig.clock.advance(31.0)
        await rig.until(lambda: rig.journal.completed, what="closed")
        assert rig.journal.completed[0]["decision"]["action"] == "manual"
        assert rig.journal.completed[0]["decision"]["reasons"] == ["ON_HOLD"]


@run_async
async def test_back_out_before_the_decision_and_a_vehicle_that_never_arrives_cancel_cleanly() -> None:
    async with lane_rig(timeouts={"arrival_s": 20.0}) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.plc.vehicle_to_stop_line(truck)  # no scan yet: still collecting
        await rig.until(lambda: rig.lane.phase is Phase.COLLECTING, what="collecting")
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: len(rig.journal.completed) == 1, what="cancelled")
        first = rig.journal.completed[0]
        check_record(first)
        assert first["decision"] == {"action": "manual", "reasons": ["CANCELLED"], "by": "auto", "operator": None}
        assert rig.decider.calls == []
        await rig.settle(0.1)  # the next truck is a few metres behind
        await rig.plc.vehicle_arrives()
        await rig.until(lambda: rig.lane.phase is Phase.ARRIVING, what="arriving")
        rig.clock.advance(21.0)
        await rig.until(lambda: len(rig.journal.completed) == 2, what="never arrived")
        assert rig.journal.completed[1]["decision"]["reasons"] == ["CANCELLED"]
        assert rig.journal.opened == []  # nothing was decided, nothing moved
        assert rig.lane.phase is Phase.IDLE


@run_async
async def test_a_second_vehicle_in_the_scan_zone_is_not_merged() -> None:
    async with lane_rig() as rig:
        first = await rig.plc.vehicle_arrives()
        await rig.passage_evidence(containers=("MSCU1234565",))
        await rig.settle(0.15)  # a truck length behind (longer than entry_gap_s)
        second = await rig.plc.vehicle_arrives()  # enters before the first reached the stop line
        await rig.until(lambda: len(rig.journal.completed) == 1, what="first cancelled")
        assert rig.journal.completed[0]["decision"]["reasons"] == ["CANCELLED"]
        rig.ocr("TGHU9876544")
        await rig.plc.vehicle_to_stop_line(first)
        await rig.until(lambda: len(rig.journal.completed) == 2, what="ambiguous passage cancelled")
        # Neither passage could be vouched for: nothing decided is recorded or carried out. (The
        # first one's evidence was complete before the second entered, so the decider may have
        # been asked early; that answer is dropped with the passage.)
        assert rig.journal.opened == []
        assert {c.transaction_id for c in rig.decider.calls} <= {rig.journal.completed[0]["transaction_id"]}
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))
        rig.plc.move(first, Spot.GONE)
        rig.plc.move(second, Spot.GONE)


@run_async
async def test_the_vehicle_behind_waits_and_gets_its_own_evidence() -> None:
    async with lane_rig(decider=ScriptedDecider().then("release", "release")) as rig:
        a = await rig.plc.vehicle_arrives()
        await rig.passage_evidence(containers=("MSCU1234565",), plate="AAA111")
        await rig.plc.vehicle_to_stop_line(a)
        await rig.until(lambda: rig.lane.phase is Phase.RELEASED, what="A released")
        b = await rig.plc.vehicle_arrives()
        await rig.passage_evidence(containers=("TGHU9876544",), plate="BBB222")
        snap = rig.lane.snapshot()
        assert snap.transaction_id is not None
        assert snap.next_transaction_id is not None
        drive = asyncio.create_task(rig.plc.vehicle_drives_through(a, timeout_s=3.0))
        await rig.plc.wait_for(lambda: rig.plc.inputs["loop_safety"], timeout_s=3.0)
        await rig.settle(0.05)
        await rig.plc.vehicle_to_stop_line(b)  # B on the stop loop while A is still passing
        await drive
        await rig.until(lambda: len(rig.decider.calls) == 2, what="B decided")
        ev_a, ev_b = rig.decider.calls
        assert [r.text for r in ev_a.container_reads] == ["MSCU1234565"]
        assert [r.text for r in ev_b.container_reads] == ["TGHU9876544"]
        assert [r.text for r in ev_b.plate_reads] == ["BBB222"]
        assert ev_a.scan is not None
        assert ev_b.scan is not None
        assert ev_a.scan.scan_id != ev_b.scan.scan_id
        await rig.until(lambda: rig.lane.phase is Phase.RELEASED, what="B released")
        await rig.plc.vehicle_drives_through(b, timeout_s=3.0)
        await rig.until(lambda: len(rig.journal.completed) == 2 and rig.lane.phase is Phase.IDLE, what="both done")
        assert [r["decision"]["action"] for r in rig.journal.completed] == ["release", "release"]


@run_async
async def test_missing_incomplete_and_late_scans_never_release() -> None:
    decider = ScriptedDecider(default="release")
    async with lane_rig(decider=decider, timeouts={"collect_s": 1.0}) as rig:
        # No scan at all: decided when collect_s runs out; the lane refuses a release without one.
        truck = await rig.plc.vehicle_arrives()
        rig.ocr("MSCU1234565")
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, timeout_s=3.0, what="stopped without scan")
        assert decider.calls[-1].scan is None
        assert rig.journal.opened[-1]["decision"]["action"] == "manual"
        assert rig.journal.opened[-1]["decision"]["reasons"][-1] == "NO_SCAN"
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: len(rig.journal.completed) == 1, what="first done")
        await rig.settle(0.1)
        # A scan that ended before this vehicle arrived belongs to someone else.
        truck = await rig.plc.vehicle_arrives()
        rig.scan(ended_ago_s=10.0)
        rig.ocr("MSCU1234565")
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, timeout_s=3.0, what="late scan ignored")
        assert decider.calls[-1].scan is None
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: len(rig.journal.completed) == 2, what="second done")
        await rig.settle(0.1)
        # An incomplete scan is handed over, but cannot carry a release.
        truck = await rig.plc.vehicle_arrives()
        rig.scan(complete=False)
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, timeout_s=3.0, what="incomplete scan")
        assert rig.journal.opened[-1]["decision"]["reasons"][-1] == "SCAN_INCOMPLETE"
        # A scan arriving after the decision does not change it.
        rig.scan()
        await rig.settle(0.2)
        assert rig.lane.phase is Phase.STOPPED
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))
        await rig.plc.vehicle_backs_out(truck)


@run_async
async def test_reads_just_before_the_entry_loop_belong_to_the_arriving_vehicle() -> None:
    async with lane_rig(scanner=False) as rig:
        rig.ocr("MSCU1234565", ago_s=1.0)
        rig.ocr("OLD0000000", ago_s=30.0)  # long before: not this vehicle
        await rig.settle(0.05)
        truck = await rig.plc.vehicle_arrives()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.decider.calls, what="decided")
        assert [r.text for r in rig.decider.calls[0].container_reads] == ["MSCU1234565"]
        assert rig.decider.calls[0].has_scanner is False
        await rig.until(lambda: rig.lane.phase is Phase.RELEASED, what="released without a scanner")
        await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)


@run_async
async def test_decider_timeout_becomes_manual() -> None:
    async with lane_rig(decider=ScriptedDecider(delay_s=5.0), timeouts={"decision_s": 0.3}) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="manual after timeout")
        assert rig.journal.opened[0]["decision"]["action"] == "manual"
        assert rig.journal.opened[0]["decision"]["reasons"] == ["INFERENCE_UNAVAILABLE"]
        await rig.plc.vehicle_backs_out(truck)


@run_async
async def test_hub_manual_and_closed_modes() -> None:
    async with lane_rig() as rig:
        await rig.lane.set_mode("manual")
        await rig.until(lambda: rig.plc.holding["lane_state"] == LaneStateCode.MANUAL, what="manual")
        assert rig.plc.coils["scan_permit"] is False
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="stopped in manual mode")
        decision = rig.journal.opened[0]["decision"]
        assert decision["action"] == "manual"
        assert decision["reasons"][-1] == "MANUAL_OVERRIDE"
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: rig.journal.completed, what="done")
        await rig.lane.set_mode("closed")
        await rig.until(lambda: rig.plc.holding["display_message"] == DisplayMessage.LANE_CLOSED, what="closed")
        assert rig.plc.holding["lane_state"] == LaneStateCode.CLOSED
        assert rig.lane.snapshot().state == "closed"
        await rig.lane.set_mode("auto")
        await rig.until(lambda: rig.plc.coils["scan_permit"] and rig.lane.mode is Mode.AUTOMATIC, what="auto")
        modes = [e["detail"]["mode"] for e in rig.journal.codes("LANE_MODE")]
        assert modes[-3:] == ["manual", "closed", "automatic"]
        with pytest.raises(CommandRefused):
            await rig.lane.set_mode("party")  # type: ignore[arg-type]


@run_async
async def test_operator_open_and_close_are_audited_transactions() -> None:
    async with lane_rig(decider=ScriptedDecider().then("hold"), timeouts={"pass_s": 10.0}) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="held")
        await rig.lane.barrier_command(action="open", reason="papers checked at the booth", operator="alice")
        assert rig.plc.coils["barrier_raise"] is True
        held, opened = rig.journal.completed[0], rig.journal.opened[-1]
        assert held["decision"]["action"] == "hold"
        assert "CANCELLED" not in held["decision"]["reasons"]
        assert opened["decision"] == {"action": "release", "reasons": ["MANUAL_OVERRIDE"], "by": "operator",
                                      "operator": "alice"}
        assert opened["containers"] == held["containers"]  # the audit keeps what was read
        with pytest.raises(CommandRefused, match="already open"):
            await rig.lane.barrier_command(action="open", reason="again", operator="alice")
        await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)
        await rig.until(lambda: len(rig.journal.completed) == 2, what="operator passage done")
        assert rig.journal.completed[1]["barrier"]["lowered_at"] is not None
        # An open with nobody coming: pass_s later the barrier comes down again.
        await rig.lane.barrier_command(action="open", reason="test", operator="bob")
        await rig.until(lambda: rig.plc.inputs["barrier_up"], what="up")
        rig.clock.advance(11.0)
        await rig.until(lambda: len(rig.journal.completed) == 3, what="nobody passed")
        assert rig.journal.completed[2]["decision"]["reasons"] == ["MANUAL_OVERRIDE", "CANCELLED"]
        # Close refused with a vehicle under the arm, accepted otherwise.
        await rig.lane.barrier_command(action="open", reason="x", operator="carol")
        await rig.until(lambda: rig.plc.inputs["barrier_up"], what="up again")
        under = rig.plc.add_vehicle(Spot.UNDER)
        await rig.settle(0.1)
        with pytest.raises(CommandRefused, match="under the barrier"):
            await rig.lane.barrier_command(action="close", reason="y", operator="carol")
        rig.plc.move(under, Spot.GONE)
        await rig.until(lambda: len(rig.journal.completed) == 4, what="passed under")
        await rig.lane.barrier_command(action="close", reason="end of shift", operator="dave")
        await rig.until(lambda: len(rig.journal.completed) == 5, what="close recorded")
        closed = rig.journal.completed[4]
        assert closed["decision"]["by"] == "operator"
        assert closed["decision"]["action"] == "manual"
        assert closed["barrier"]["raised_at"] is None
        assert closed["barrier"]["lowered_at"] is not None


@run_async
async def test_journal_failure_keeps_the_barrier_down() -> None:
    async with lane_rig() as rig:
        rig.journal.fail_opens = 1
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="stopped")
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: rig.journal.completed, what="completed")
        assert rig.journal.completed[0]["decision"]["action"] == "manual"


@run_async
async def test_snapshot_and_stop_leave_the_lane_offline_and_safe() -> None:
    async with lane_rig() as rig:
        truck = await rig.plc.vehicle_arrives()
        snap = rig.lane.snapshot()
        assert snap.state == "arriving"
        assert snap.plc_connected
        assert snap.transaction_id is not None
        assert snap.inputs is not None
        assert "loop_entry" in snap.inputs
        assert snap.inputs["lane_state"] == 1
        data = snap.as_dict()
        assert data["mode"] == "automatic"
        assert data["faults"] == []
        await rig.lane.stop()
        assert rig.plc.holding["lane_state"] == LaneStateCode.OFFLINE
        assert rig.journal.completed[-1]["decision"]["reasons"] == ["CANCELLED"]
        assert not rig.plc.coils["scan_permit"]
        with pytest.raises(CommandRefused):
            await rig.lane.set_mode("auto")
        rig.plc.move(truck, Spot.GONE)


def test_record_builder_renders_the_contract_form() -> None:
    from datetime import UTC, datetime

    t0 = datetime(2026, 11, 22, 4, 0, 0, 123456, tzinfo=UTC)
    record = TransactionRecord(site="S", gate="G", lane="L1", arrived_at=t0, arrived_mono=100.0)
    assert record.as_record()["decision"] is None
    assert record.as_record()["barrier"] is None
    record.decide(action="release", reasons=("ALL_RELEASED", "SCAN_CLEAR", "ALL_RELEASED"), now=t0,
                  now_mono=100.25, scan_end_mono=99.5)
    record.raised_at = t0
    record.cancel(now=t0, now_mono=101.0)
    out = record.as_record()
    assert out["arrived_at"] == "2026-11-22T04:00:00.123Z"
    assert out["decision"]["reasons"] == ["ALL_RELEASED", "SCAN_CLEAR", "CANCELLED"]
    assert out["timings_ms"] == {"scan_end_to_decision": 750, "arrival_to_decision": 250, "arrival_to_complete": 1000}
    assert out["barrier"] == {"raised_at": "2026-11-22T04:00:00.123Z", "lowered_at": None}
    with pytest.raises(RuntimeError):
        record.decide(action="hold", reasons=(), now=t0, now_mono=0.0)


@run_async
async def test_a_truck_taken_for_the_trailer_of_the_one_in_front_never_lends_it_its_scan() -> None:
    # Bumper to bumper: B crosses the entry loop within entry_gap_s of A leaving it, so the loops
    # alone show one long vehicle. The scanner sees two: the second scan proves the merge.
    async with lane_rig(timeouts={"entry_gap_s": 1.0, "ocr_settle_s": 0.3}) as rig:
        a = await rig.plc.vehicle_arrives()
        b = await rig.plc.vehicle_arrives()  # 0.05 s behind: inside the trailer gap
        rig.ocr("MSCU1234565")
        rig.scan()  # A's scan
        rig.ocr("TGHU9876544")
        rig.scan()  # B's scan
        await rig.plc.vehicle_to_stop_line(a)
        await rig.until(lambda: rig.journal.completed, what="cancelled")
        [record] = rig.journal.completed
        assert "CANCELLED" in record["decision"]["reasons"]
        assert record["decision"]["action"] != "release"
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))
        rig.plc.move(a, Spot.GONE)
        rig.plc.move(b, Spot.GONE)


@run_async
async def test_unfamiliar_scans_raise_review_unfamiliar_at_most_once_an_hour() -> None:
    evidence = {"scan_id": "S-1", "reason": "scan unlike the model's training: flagged_share 0.6 outside",
                "envelope": {"flagged_share": 0.6, "noise": 0.003}, "conditioning": {"dead_rows": []},
                "model": "m", "version": "2"}
    decider = ScriptedDecider(default="manual", extra={"review_unfamiliar": evidence})
    async with lane_rig(decider=decider) as rig:
        for n in range(3):
            if n == 2:
                rig.clock.advance(UNFAMILIAR_ALARM_S + 1.0)
            truck = await rig.plc.vehicle_arrives()
            await rig.passage_evidence()
            await rig.plc.vehicle_to_stop_line(truck)
            await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="stopped")
            await rig.plc.vehicle_backs_out(truck)
            await rig.until(lambda n=n: len(rig.journal.completed) == n + 1, what="done")
            await rig.settle(0.1)
        alarms = rig.journal.codes("REVIEW_UNFAMILIAR")
        assert len(alarms) == 2  # the second scan fell within the hour of the first alarm
        first, second = alarms
        assert first["type"] == "alarm"
        assert first["severity"] == "warning"
        assert first["active"] is True
        assert first["lane"] == rig.lane.id
        assert first["detail"]["scan_id"] == "S-1"
        assert first["detail"]["envelope"]["flagged_share"] == 0.6
        assert first["detail"]["unfamiliar_scans"] == 1
        assert second["detail"]["unfamiliar_scans"] == 2  # the suppressed one and this one
        assert rig.lane.counters["review_unfamiliar"] == 3
