"""Lane faults against the virtual PLC: link loss and reconnect reconciliation, estop and key
switch, the PLC watchdog, barrier and output verification faults, and config reloads."""

from __future__ import annotations

import asyncio
import contextlib
import time

from gate_controller.lane.machine import Mode, Phase
from gate_controller.plc.driver import COILS, LaneStateCode
from gate_controller.plc.sim import Spot, VirtualPlcServer
from tests.support.plc import ScriptedDecider, fast_plc, lane_config, lane_rig, run_async, wait_until


@run_async
async def test_link_loss_faults_the_lane_and_reconnect_lowers_an_unused_raised_barrier() -> None:
    # Production link timing (0.5 s timeout, 1 s loss) to check the 2 s rule end to end.
    plc_timing = {"timeout_s": 0.5, "link_loss_s": 1.0, "poll_hz": 10.0, "reconnect_max_s": 0.5}
    # Loops must stay occupied longer than one 10 Hz poll, as real trucks do.
    async with lane_rig(plc_settings=plc_timing, plc=fast_plc(move_s=0.3)) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.plc.inputs["barrier_up"], what="released and up")
        await rig.server.go_offline()
        lost = time.monotonic()
        await rig.until(lambda: rig.lane.mode is Mode.FAULT, timeout_s=3.0, what="fault")
        assert time.monotonic() - lost < 2.0
        assert rig.journal.codes("LINK_DOWN")[-1]["active"] is True
        assert rig.lane.snapshot().state == "fault"
        await asyncio.sleep(0.3)
        reconnect = time.monotonic()
        await rig.server.go_online()
        await rig.until(lambda: rig.journal.completed, timeout_s=5.0, what="passage closed after reconnect")
        [record] = rig.journal.completed
        assert record["decision"]["action"] == "release"
        assert record["decision"]["reasons"][-1] == "CANCELLED"
        assert record["barrier"]["raised_at"]
        assert record["barrier"]["lowered_at"]
        assert rig.plc.inputs["barrier_down"]
        assert rig.journal.codes("LINK_DOWN")[-1]["active"] is False
        after = [w for w in rig.plc.writes if w.at >= reconnect]
        rewritten = {w.name for w in after}
        assert set(COILS) <= rewritten
        assert {"lane_state", "display_message", "host_heartbeat"} <= rewritten
        assert all(not w.inputs["loop_safety"] for w in after if w.name == "barrier_raise" and not w.value)
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC, what="resumed")
        rig.plc.move(truck, Spot.GONE)


@run_async
async def test_reconnect_with_a_vehicle_under_the_barrier_waits_for_it() -> None:
    async with lane_rig() as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.plc.inputs["barrier_up"], what="up")
        await rig.server.go_offline()
        rig.plc.move(truck, Spot.UNDER)  # it drives under while the link is down
        await rig.until(lambda: rig.lane.mode is Mode.FAULT, what="fault")
        await rig.server.go_online()
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC and rig.lane.phase is Phase.PASSING, what="passing")
        await rig.settle(0.3)
        assert rig.plc.coils["barrier_raise"] is True
        rig.plc.move(truck, Spot.GONE)
        await rig.until(lambda: rig.journal.completed, what="completed")
        assert rig.journal.completed[0]["decision"]["reasons"] == ["ALL_RELEASED", "SCAN_CLEAR"]
        assert all(not w.inputs["loop_safety"] for w in rig.plc.writes_of("barrier_raise") if not w.value)


@run_async
async def test_a_decision_that_lands_during_a_link_loss_does_not_raise() -> None:
    async with lane_rig(decider=ScriptedDecider(delay_s=1.0)) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.DECIDING, what="deciding")
        await rig.server.go_offline()
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, timeout_s=3.0, what="decided")
        await rig.server.go_online()
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC, what="back")
        await rig.settle(0.3)
        decision = rig.journal.opened[0]["decision"]
        assert decision["action"] == "manual"
        assert decision["reasons"][-1] == "PLC_FAULT"
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))
        await rig.plc.vehicle_backs_out(truck)


@run_async
async def test_estop_and_key_switch_silence_every_coil_but_the_alarm() -> None:
    async with lane_rig() as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        rig.plc.press_estop()
        pressed = time.monotonic()
        await rig.until(lambda: rig.lane.mode is Mode.MANUAL, what="manual")
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="decided under estop")
        assert rig.journal.opened[0]["decision"]["reasons"][-1] == "MANUAL_OVERRIDE"
        await rig.until(lambda: rig.plc.coils["alarm"], what="alarm")
        assert rig.plc.holding["lane_state"] == LaneStateCode.MANUAL
        assert [e["active"] for e in rig.journal.codes("ESTOP")] == [True]
        rig.plc.press_estop(False)
        released = time.monotonic()
        during = [w for w in rig.plc.writes if pressed <= w.at <= released and w.name in COILS]
        assert {w.name for w in during} == {"alarm"}
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC, what="auto again")
        await rig.until(lambda: not rig.plc.coils["alarm"] and rig.plc.coils["scan_permit"], what="rewritten")
        rig.plc.set_key_switch(True)
        turned = time.monotonic()
        await rig.until(lambda: rig.lane.mode is Mode.MANUAL, what="key switch")
        rig.plc.local_barrier(True)  # the technician raises it by hand
        await rig.plc.wait_for(lambda: rig.plc.inputs["barrier_up"], timeout_s=2.0)
        await rig.settle(0.3)
        assert [w for w in rig.plc.writes if w.at >= turned and w.name in COILS] == []
        rig.plc.local_barrier(False)
        rig.plc.set_key_switch(False)
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC, what="remote again")
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: rig.journal.completed, what="left")


@run_async
async def test_wedged_pipeline_lets_the_plc_watchdog_trip_and_recovery_rewrites_the_coils() -> None:
    plc = fast_plc(watchdog_s=0.5)
    async with lane_rig(plc=plc) as rig:
        await rig.until(lambda: rig.plc.coils["scan_permit"], what="automatic outputs")
        rig.healthy[0] = False
        wedged = time.monotonic()
        await rig.until(lambda: plc.watchdog_tripped, timeout_s=3.0, what="PLC watchdog")
        await rig.until(lambda: rig.lane.mode is Mode.FAULT, what="lane fault")
        assert rig.journal.codes("PLC_WATCHDOG")[-1]["active"] is True
        assert [w for w in plc.writes_of("host_heartbeat") if w.at > wedged + 0.25] == []
        assert plc.coils["scan_permit"] is False
        assert plc.coils["light_red"] is True
        rig.healthy[0] = True
        await rig.until(lambda: not plc.watchdog_tripped, timeout_s=3.0, what="watchdog cleared")
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC and plc.coils["scan_permit"], what="resumed")
        assert rig.journal.codes("PLC_WATCHDOG")[-1]["active"] is False


@run_async
async def test_barrier_that_never_opens_faults_and_stays_latched_until_acknowledged() -> None:
    async with lane_rig() as rig:
        rig.plc.stick_limit_switch("barrier_down", True)  # reads "down" whatever the arm does
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.mode is Mode.FAULT, timeout_s=3.0, what="barrier fault")
        fault = rig.journal.codes("BARRIER_FAULT")[-1]
        assert fault["active"]
        assert fault["detail"]["expected"] == "up"
        await rig.until(lambda: rig.journal.completed, what="aborted passage published")
        assert rig.journal.completed[0]["decision"]["reasons"][-1] == "CANCELLED"
        await rig.until(lambda: rig.plc.position == 0.0, what="barrier back down")
        await rig.until(lambda: rig.plc.coils["alarm"], what="alarm")
        await rig.settle(0.3)
        assert rig.lane.mode is Mode.FAULT  # latched: a stuck switch must not flap
        rig.plc.stick_limit_switch("barrier_down", None)
        await rig.lane.set_mode("auto")
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC, what="acknowledged")
        assert rig.journal.codes("BARRIER_FAULT")[-1]["active"] is False
        await rig.plc.vehicle_backs_out(truck)


@run_async
async def test_barrier_that_never_reads_down_faults_then_clears_when_repaired() -> None:
    async with lane_rig() as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.plc.inputs["barrier_up"], what="up")
        rig.plc.stick_limit_switch("barrier_up", True)
        await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)
        await rig.until(lambda: rig.lane.mode is Mode.FAULT, timeout_s=3.0, what="fault on lowering")
        assert rig.journal.codes("BARRIER_FAULT")[-1]["detail"]["expected"] == "down"
        await rig.until(lambda: rig.journal.completed, what="published")
        assert rig.journal.completed[0]["barrier"]["lowered_at"] is None
        assert "CANCELLED" not in rig.journal.completed[0]["decision"]["reasons"]
        rig.plc.stick_limit_switch("barrier_up", None)
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC, what="cleared")


@run_async
async def test_output_that_does_not_verify_faults_the_lane_with_the_barrier_down() -> None:
    async with lane_rig() as rig:
        rig.plc.freeze_coil("light_green")
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.mode is Mode.FAULT, timeout_s=3.0, what="verification fault")
        assert rig.journal.codes("OUTPUT_FAULT")[-1]["active"] is True
        await rig.until(lambda: rig.journal.completed and rig.plc.inputs["barrier_down"], what="released aborted")
        assert rig.journal.completed[0]["decision"]["reasons"][-1] == "CANCELLED"
        rig.plc.freeze_coil("light_green", False)
        await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC, timeout_s=3.0, what="verified again")
        await rig.plc.vehicle_backs_out(truck)


@run_async
async def test_reload_applies_timeouts_now_and_swaps_the_plc_only_when_idle() -> None:
    other = fast_plc()
    other_server = VirtualPlcServer(other)
    other_port = await other_server.start_tcp()
    try:
        async with lane_rig(timeouts={"hold_s": 600.0}, decider=ScriptedDecider().then("hold")) as rig:
            truck = await rig.plc.vehicle_arrives()
            await rig.passage_evidence()
            await rig.plc.vehicle_to_stop_line(truck)
            await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="held")
            port = rig.server.port
            await rig.lane.apply_config(lane_config(port=port, timeouts={"hold_s": 30.0}))
            rig.clock.advance(31.0)
            await rig.until(lambda: rig.journal.completed, what="new hold_s applied")
            await rig.plc.vehicle_backs_out(truck)
            # Now with the barrier in use: the PLC swap waits for the passage to finish.
            truck = await rig.plc.vehicle_arrives()
            await rig.passage_evidence()
            await rig.plc.vehicle_to_stop_line(truck)
            await rig.until(lambda: rig.lane.phase is Phase.RELEASED, what="released")
            await rig.lane.apply_config(lane_config(port=other_port))
            await rig.settle(0.3)
            assert rig.lane.driver.config.port == port
            await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)
            await rig.until(lambda: rig.lane.driver.config.port == other_port, what="swapped when idle")
            await rig.until(lambda: rig.lane.mode is Mode.AUTOMATIC and other.coils["scan_permit"]
                            and other.holding["lane_state"] == LaneStateCode.AUTOMATIC,
                            what="reconciled on the new PLC")
            assert len(rig.journal.completed) == 2
    finally:
        await other_server.stop()


@run_async
async def test_startup_lowers_a_stray_raised_barrier_and_a_waiting_vehicle_gets_no_decision() -> None:
    plc = fast_plc()
    plc.coils["barrier_raise"] = True
    plc.position = 1.0
    waiting = plc.add_vehicle(Spot.STOP)
    async with lane_rig(plc=plc) as rig:
        await rig.until(lambda: plc.inputs["barrier_down"], what="lowered at startup")
        await rig.settle(0.2)
        assert rig.decider.calls == []
        assert rig.lane.phase is Phase.IDLE
        # The operator lets it through; audited as an operator transaction.
        await rig.lane.barrier_command(action="open", reason="was waiting at startup", operator="eve")
        await plc.vehicle_drives_through(waiting, timeout_s=3.0)
        await rig.until(lambda: rig.journal.completed, what="operator passage")
        assert rig.journal.completed[0]["decision"]["by"] == "operator"


@run_async
async def test_unreachable_plc_at_startup_raises_link_down_and_cancelling_run_is_safe() -> None:
    from gate_controller.lane.machine import Lane
    from gate_controller.plc.driver import PlcBusRegistry
    from tests.support.plc import InMemoryJournal

    plc = fast_plc()
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    await server.go_offline()
    journal = InMemoryJournal()
    lane = Lane(lane_config(port=port), site="S1", gate="G1", decider=ScriptedDecider(), journal=journal,
                buses=PlcBusRegistry(), tick_s=0.02)
    task = asyncio.create_task(lane.run())
    try:
        await asyncio.sleep(2.3)
        assert [e["active"] for e in journal.codes("LINK_DOWN")] == [True]
        assert lane.snapshot().state == "fault"
        await server.go_online()
        await wait_until(lambda: lane.mode is Mode.AUTOMATIC, 5.0, "automatic")
        truck = await plc.vehicle_arrives()
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert plc.holding["lane_state"] == LaneStateCode.OFFLINE
        assert journal.completed[-1]["decision"]["reasons"] == ["CANCELLED"]
        plc.move(truck, Spot.GONE)
    finally:
        await server.stop()


@run_async
async def test_a_vehicle_that_reaches_the_stop_line_during_a_link_loss_is_still_decided() -> None:
    async with lane_rig() as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.until(lambda: rig.lane.phase is Phase.ARRIVING, what="arriving")
        rig.plc.mute = True
        await rig.until(lambda: rig.lane.mode is Mode.FAULT, what="link lost")
        await rig.plc.vehicle_to_stop_line(truck)  # unseen by the lane
        rig.plc.mute = False
        await rig.until(lambda: rig.lane.phase is Phase.RELEASED, what="decided after reconnect")
        await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)
        await rig.until(lambda: rig.journal.completed, what="complete")
        assert rig.journal.completed[0]["decision"]["action"] == "release"


@run_async
async def test_a_wedged_journal_does_not_wedge_the_lane() -> None:
    async with lane_rig(journal_timeout_s=0.3) as rig:
        rig.journal.hang = True
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="decided; not committed, so held")
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))
        rig.plc.press_estop()  # the lane still follows the PLC while every commit hangs
        await rig.until(lambda: rig.lane.mode is Mode.MANUAL and rig.plc.coils["alarm"], what="estop handled")
        rig.plc.press_estop(False)
        rig.journal.hang = False
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: rig.journal.completed, what="published once the journal works")
        assert rig.journal.completed[0]["decision"]["action"] == "manual"
