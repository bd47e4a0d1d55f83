"""Decide as soon as the evidence is complete, actuate when the vehicle reaches the stop line.

At a real gate the OCR portal and the scanner come before the stop line: the reads and the scan are
in while the truck still drives to the barrier. The lane decides then and raises the barrier on
arrival, without weakening any condition of a release.
"""

from __future__ import annotations

import asyncio

from gate_controller.lane.machine import Phase
from gate_controller.plc.sim import Spot
from tests.support.plc import fast_plc, lane_rig, run_async

DEFAULTS = {"ocr_settle_s": 1.5, "collect_s": 30.0, "decision_s": 5.0}
"""The shipped defaults for what the decision waits for (docs/lane-states.md)."""


def stop_line_reached(vehicle: object) -> float:
    return next(t for t, spot in vehicle.history if spot is Spot.STOP)  # type: ignore[attr-defined]


@run_async
async def test_evidence_complete_before_the_stop_line_raises_the_barrier_on_arrival() -> None:
    # The default 10 Hz poll, and loops a real truck covers for longer than one poll.
    async with lane_rig(timeouts=DEFAULTS, plc_settings={"poll_hz": 10.0}, plc=fast_plc(move_s=0.3)) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()  # OCR portal, then the scanner
        await asyncio.sleep(2.0)  # the drive from the scanner to the stop line
        assert rig.lane.phase is Phase.ARRIVING
        assert len(rig.decider.calls) == 1, "decided while the truck drove to the stop line"
        assert rig.journal.opened == [], "nothing is committed before the vehicle is at the line"
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: any(w.value for w in rig.plc.writes_of("barrier_raise")), what="raise")
        raised = next(w for w in rig.plc.writes_of("barrier_raise") if w.value)
        dwell = raised.at - stop_line_reached(truck)
        # Stop loop seen (10 Hz poll), journal commit, raise with read-back: well under the 1.5 s the
        # old quiet time counted from the stop line alone.
        assert 0 < dwell < 0.6, f"dwell {dwell:.3f} s"
        assert rig.journal.opened[0]["decision"]["action"] == "release"
        opened_at = next(t for t, kind, _ in rig.journal.timeline if kind == "open")
        assert opened_at <= raised.at
        await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)
        await rig.until(lambda: rig.journal.completed, what="complete")
        # decided_at is when the decider answered, before the truck reached the line.
        assert rig.journal.completed[0]["decided_at"] < rig.journal.completed[0]["barrier"]["raised_at"]


@run_async
async def test_an_early_decision_is_not_carried_out_after_a_mode_change() -> None:
    async with lane_rig(timeouts=DEFAULTS) as rig:
        truck = await rig.plc.vehicle_arrives()
        await rig.passage_evidence()
        await rig.until(lambda: len(rig.decider.calls) == 1, timeout_s=3.0, what="decided early")
        await rig.lane.set_mode("manual")
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.STOPPED, what="held at the barrier")
        assert len(rig.decider.calls) == 2, "decided again at the stop line"
        [opened] = rig.journal.opened
        assert opened["decision"]["action"] == "manual"
        assert "MANUAL_OVERRIDE" in opened["decision"]["reasons"]
        assert not any(w.value for w in rig.plc.writes_of("barrier_raise"))
        await rig.plc.vehicle_backs_out(truck)
        await rig.until(lambda: rig.journal.completed, what="complete")


@run_async
async def test_without_the_scan_nothing_is_decided_before_the_stop_line() -> None:
    async with lane_rig(timeouts=DEFAULTS) as rig:
        truck = await rig.plc.vehicle_arrives()
        rig.ocr("MSCU1234565")
        rig.ocr("AB123CD", kind="plate")
        await asyncio.sleep(1.8)
        assert rig.decider.calls == []
        rig.scan()
        await rig.until(lambda: len(rig.decider.calls) == 1, timeout_s=1.0, what="decided once the scan is in")
        assert rig.lane.phase is Phase.ARRIVING
        await rig.plc.vehicle_to_stop_line(truck)
        await rig.until(lambda: rig.lane.phase is Phase.RELEASED, what="released on arrival")
        await rig.plc.vehicle_drives_through(truck, timeout_s=3.0)
        await rig.until(lambda: rig.journal.completed, what="complete")
