"""Property-based lane test: random vehicle movements, link drops, estops, key switch, late and
missing scans, decisions, hub commands and a wedged pipeline, against the real virtual PLC.

After every step the safety rules are checked on the *wire*: the virtual PLC keeps every write
with the inputs at that instant and what the master had last been told, so a violation is caught
whatever the lane believed it was doing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gate_controller.core.ports import CommandRefused
from gate_controller.lane.machine import Lane
from gate_controller.plc.driver import COILS, PlcBusRegistry
from gate_controller.plc.sim import Spot, VirtualPlcServer, WriteRecord
from tests.support.plc import InMemoryJournal, OffsetClock, ScriptedDecider, fast_plc, lane_config, wait_until

STEP_S = 0.1
FRESH_S = 1.0  # a guard read older than this does not count as "the master knew"
HEARTBEAT_SLACK_S = 0.35  # one heartbeat write already in flight when the pipeline wedges


class LaneMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.plc = fast_plc(watchdog_s=1.0, move_s=0.05)
        self.server = VirtualPlcServer(self.plc)
        self.journal = InMemoryJournal()
        self.decider = ScriptedDecider(default="release")
        self.clock = OffsetClock()
        self.healthy = [True]
        self.wedged_at: float | None = None
        self.operators: set[str] = set()
        self.checked = 0
        self.scan_no = 0
        self.pedestrian: Any = None
        self.lane: Lane | None = None
        self.task: asyncio.Task[None] | None = None
        self.run(self._start())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        port = await self.server.start_tcp()
        config = lane_config(port=port, timeouts={
            "arrival_s": 20.0, "collect_s": 2.0, "ocr_settle_s": 0.05, "decision_s": 1.0, "pass_s": 30.0,
            "clear_s": 0.05, "hold_s": 60.0, "backout_s": 0.5, "entry_gap_s": 0.02,
        })
        self.lane = Lane(config, site="S1", gate="G1", decider=self.decider, journal=self.journal,
                         healthy=lambda: self.healthy[0], buses=PlcBusRegistry(), clock=self.clock, tick_s=0.02)
        self.task = asyncio.create_task(self.lane.run())
        await wait_until(lambda: self.lane is not None and self.lane.driver.connected, 5.0, "lane up")
        await asyncio.sleep(0.1)

    def settle(self, seconds: float = STEP_S) -> None:
        self.run(asyncio.sleep(seconds))

    def teardown(self) -> None:
        async def stop() -> None:
            assert self.lane is not None
            assert self.task is not None
            await self.lane.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            await self.server.stop()

        try:
            self.run(stop())
            self.run(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    # ------------------------------------------------------------------ vehicles

    def _at(self, spot: Spot) -> list[Any]:
        return [v for v in self.plc.vehicles if v.spot is spot and v is not self.pedestrian]

    def _arrive(self, scan: str, reads: bool) -> None:
        """A truck crosses the entry loop into the scan zone; OCR and the scanner see it there."""
        from gate_controller.core.ports import OcrObservation

        assert self.lane is not None
        truck = self.plc.add_vehicle(Spot.ENTRY)
        self.settle(0.08)
        self.plc.move(truck, Spot.ZONE)
        if reads:
            for kind, text in (("container", "MSCU1234565"), ("plate", "AB12CD")):
                self.lane.observe_ocr(OcrObservation(kind=kind, camera="c", text=text, confidence=0.9,  # type: ignore[arg-type]
                                                     received=self.clock(), link="fw"))
        if scan != "none":
            self._scan(complete=scan == "complete", ended_ago=0.0)

    def _scan(self, *, complete: bool, ended_ago: float) -> None:
        from gate_controller.core.ports import ScanObservation

        assert self.lane is not None
        self.scan_no += 1
        self.lane.observe_scan(ScanObservation(
            link="fw", scan_id=f"S{self.scan_no}", scan_no=self.scan_no, complete=complete, columns=10, rows=8,
            channels=1, sha256="0" * 64, reason=None, scan_end=self.clock() - ended_ago))

    def _advance(self) -> str:
        """The most natural next move of the traffic."""
        if self._at(Spot.UNDER):
            self.plc.move(self._at(Spot.UNDER)[0], Spot.GONE)
            return "leave"
        if self._at(Spot.STOP) and self.plc.position >= 1.0:
            self.plc.move(self._at(Spot.STOP)[0], Spot.UNDER)
            return "drive under"
        if self._at(Spot.ZONE) and not self._at(Spot.STOP):
            self.plc.move(self._at(Spot.ZONE)[0], Spot.STOP)
            return "to stop line"
        if not self._at(Spot.ZONE) and not self._at(Spot.ENTRY) and not self._at(Spot.STOP):
            self._arrive("complete", True)
            return "arrive"
        return "wait"

    @rule()
    def traffic_moves_on(self) -> None:
        event(f"traffic {self._advance()}")
        self.settle()

    @rule()
    def traffic_moves_on_again(self) -> None:
        """Same as above: a second rule doubles the weight of ordinary traffic in the mix."""
        self._advance()
        self.settle()

    @rule(move=st.sampled_from(["arrive", "back out"]),
          scan=st.sampled_from(["complete", "complete", "incomplete", "none"]), reads=st.booleans())
    def unusual_traffic(self, move: str, scan: str, reads: bool) -> None:
        """A truck tailgating into the scan zone, with or without evidence, or one reversing out."""
        if move == "arrive" and not self._at(Spot.ENTRY):
            self._arrive(scan, reads)
        elif move == "back out" and (self._at(Spot.ZONE) or self._at(Spot.STOP)) and not self._at(Spot.ENTRY):
            truck = (self._at(Spot.ZONE) + self._at(Spot.STOP))[-1]
            self.plc.move(truck, Spot.ZONE)
            self.settle(0.08)
            self.plc.move(truck, Spot.ENTRY)
            self.settle(0.08)
            self.plc.move(truck, Spot.GONE)
        self.settle()

    @rule(present=st.booleans())
    def someone_under_the_arm(self, present: bool) -> None:
        """A pedestrian or a wrong-way vehicle on the safety loop, whatever the barrier does."""
        if present and self.pedestrian is None:
            self.pedestrian = self.plc.add_vehicle(Spot.UNDER)
        elif not present and self.pedestrian is not None:
            self.plc.move(self.pedestrian, Spot.GONE)
            self.pedestrian = None
        self.settle()

    # ------------------------------------------------------------------ evidence and decisions

    @rule(what=st.sampled_from(["late scan", "old scan", "incomplete scan", "stray read", "early read"]))
    def odd_evidence(self, what: str) -> None:
        from gate_controller.core.ports import OcrObservation

        assert self.lane is not None
        if what.endswith("scan"):
            self._scan(complete=what != "incomplete scan", ended_ago=60.0 if what == "old scan" else 0.0)
        else:
            self.lane.observe_ocr(OcrObservation(kind="container", camera="c", text="TGHU9876544", confidence=0.9,
                                                 received=self.clock() - (30.0 if what == "stray read" else 2.0),
                                                 link="fw"))
        self.settle(0.03)

    @rule(action=st.sampled_from(["release", "release", "inspect", "hold", "manual"]),
          delay=st.sampled_from([0.0, 0.0, 0.3, 2.0]))
    def next_decision(self, action: str, delay: float) -> None:
        self.decider.script.append(action)
        self.decider.delay_s = delay

    # ------------------------------------------------------------------ operators, hub, faults, time

    @rule(what=st.sampled_from(["estop on", "estop off", "key manual", "key manual raised", "key remote"]))
    def local_operation(self, what: str) -> None:
        if what.startswith("estop"):
            self.plc.press_estop(what == "estop on")
        else:
            self.plc.set_key_switch(what != "key remote")
            self.plc.local_barrier(what == "key manual raised")
        self.settle()

    @rule(command=st.sampled_from(["auto", "auto", "manual", "closed", "open", "close"]))
    def hub_command(self, command: str) -> None:
        assert self.lane is not None
        with contextlib.suppress(CommandRefused):
            if command in ("open", "close"):
                name = f"op{len(self.operators)}"
                self.operators.add(name)
                self.run(self.lane.barrier_command(action=command, reason="test", operator=name))  # type: ignore[arg-type]
            else:
                self.run(self.lane.set_mode(command))  # type: ignore[arg-type]
        self.settle()

    @rule(fault=st.sampled_from(["drop", "mute 0.3", "mute 0.8", "offline 0.3", "offline 1.2"]))
    def plc_link_fault(self, fault: str) -> None:
        kind, _, seconds = fault.partition(" ")
        if kind == "drop":
            self.server.drop_connections()
        elif kind == "mute":
            self.plc.mute = True
            self.settle(float(seconds))
            self.plc.mute = False
        else:
            self.run(self.server.go_offline())
            self.settle(float(seconds))
            self.run(self.server.go_online())
        self.settle(0.25)

    @rule(seconds=st.sampled_from([0.6, 3.0, 25.0, 70.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settle()

    @rule(wedged=st.booleans())
    def pipeline(self, wedged: bool) -> None:
        self.healthy[0] = not wedged
        if wedged and self.wedged_at is None:
            self.wedged_at = self.plc._clock()
        elif not wedged:
            self.wedged_at = None
        self.settle(0.3 if wedged else STEP_S)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lane_task_alive(self) -> None:
        assert self.task is not None
        assert self.lane is not None
        if self.task.done():
            self.task.result()
            raise AssertionError("the lane task ended")
        event(f"lane state {self.lane.snapshot().state}")  # coverage, see --hypothesis-show-statistics

    @invariant()
    def safety_rules_hold_on_the_wire(self) -> None:
        writes = self.plc.writes[self.checked:]
        self.checked += len(writes)
        for w in writes:
            if w.name in COILS and w.name != "alarm":
                # Rule 3: nothing but the alarm while estop or local_manual.
                assert w.master_knew_clear("estop", within_s=FRESH_S), w
                assert w.master_knew_clear("local_manual", within_s=FRESH_S), w
            if w.name == "barrier_raise" and w.value is False:
                # Rule 2: never down onto loop_safety.
                assert w.master_knew_clear("loop_safety", within_s=FRESH_S), w
            if w.name == "barrier_raise" and w.value is True:
                self._check_raise_authorised(w)
            if w.name == "host_heartbeat" and self.wedged_at is not None:
                # Rule 6: a wedged pipeline writes no heartbeat.
                assert w.at <= self.wedged_at + HEARTBEAT_SLACK_S, (w.at - self.wedged_at, w)

    def _check_raise_authorised(self, write: WriteRecord) -> None:
        """Rule 1: the latest transaction committed before the write is a release, still open."""
        opened = [(t, r) for t, kind, r in self.journal.timeline if kind == "open" and t <= write.at]
        assert opened, f"barrier raised with no committed transaction: {write}"
        _, record = opened[-1]
        decision = record["decision"]
        assert decision["action"] == "release", (decision, write)
        done = [t for t, kind, r in self.journal.timeline
                if kind == "complete" and r["transaction_id"] == record["transaction_id"]]
        assert not done or done[0] >= write.at, "raised for a transaction already complete"
        if decision["by"] == "auto":
            outcome = self.decider.outcomes[record["transaction_id"]]
            assert outcome.action == "release", "the lane released what the decider did not"
        else:
            assert decision["operator"] in self.operators
            assert decision["reasons"] == ["MANUAL_OVERRIDE"]

    @invariant()
    def published_transactions_are_consistent(self) -> None:
        ids = [r["transaction_id"] for r in self.journal.completed]
        assert len(ids) == len(set(ids)), "a transaction was published twice"
        for record in self.journal.completed:
            decision = record["decision"]
            assert decision is not None
            assert record["completed_at"] is not None
            if record["barrier"] is not None and record["barrier"]["raised_at"] is not None:
                assert decision["action"] == "release"
            if decision["action"] == "release" and decision["by"] == "auto":
                assert self.decider.outcomes[record["transaction_id"]].action == "release"


# Every step runs in real time against the PLC; 14 examples of up to 30 steps take about a minute.
LaneMachine.TestCase.settings = settings(
    max_examples=14, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLaneStateMachine = pytest.mark.slow(LaneMachine.TestCase)
