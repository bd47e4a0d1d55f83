"""Close following at 120 trucks an hour: the share of trucks the lane still decides automatically.

One lane (`gate_controller.lane.Lane`, the shipped timeouts) against the virtual lane PLC served
over Modbus TCP by the real pymodbus server, with traffic in the lane's own simulator:

* Arrivals: 120 trucks an hour on average (``--per-hour``). ``--bunched`` (30 %) of them come right
  behind the truck before (a platoon); the other gaps are exponential, so the mean rate holds.
* One truck in the scan zone at a time: a truck drives over the entry loop once the truck in front
  has left the stop line. One that was already waiting (bumper to bumper) does so 1-2 s after it.
* In the zone (times from the entry loop): 1 s on the entry loop, the OCR portal reads the container
  twice and the plate at 1.5 s, the scan ends at 4 s, the stop line at 6 s.
* At the stop line the driver waits for the barrier to come down behind the one in front (if it
  is still up) and then to go up for itself; the inspection sign sends it to the inspection area
  by the side exit before the barrier (no loop sees it go); with neither after 20 s an operator
  sends it there too. Released, it drives off: 0.5-2.5 s from the stop loop to the safety loop
  (``--to-arm``), 1.5 s under the arm, 1 s on the exit detector (``--exit-detector``).
* The decider answers from the evidence in 50 ms: ``release`` for the container's notice (90 %)
  or ``inspect`` (10 %) when the reads name exactly one container of the plan and the scan is
  complete, else ``manual``.

"Decided automatically" is a truck whose transaction was decided ``release`` or ``inspect`` by the
lane and carried out (not cancelled, not turned manual). The run also checks what must never
happen: a barrier raised with no open ``release`` committed for it, a barrier commanded down onto
the safety loop, a truck driving off under a release decided on another truck's evidence.

Every duration (traffic, PLC physics, the lane's timeouts and PLC timing) is divided by
``--time-scale`` (default 4: 200 trucks in 25 minutes instead of 100), so the figures are those of
a lane at the shipped settings, run faster.

Run: .venv/bin/python benchmarks/bench_close_following.py [--trucks 200] [--time-scale 4] [--exit-detector]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gate_controller.config import LaneConfig, PointConfig  # noqa: E402
from gate_controller.config.schema import LaneTimeouts  # noqa: E402
from gate_controller.core.ports import (  # noqa: E402
    DecisionOutcome,
    OcrObservation,
    PassageEvidence,
    ScanObservation,
)
from gate_controller.lane.machine import Lane, Phase  # noqa: E402
from gate_controller.plc.driver import PlcBusRegistry  # noqa: E402
from gate_controller.plc.sim import Spot, VirtualLanePlc, VirtualPlcServer  # noqa: E402

EXIT_POINT = {"table": "discrete_input", "address": 7}


@dataclass
class Truck:
    index: int
    number: str
    plate: str
    action: str
    """What the container's notice says: release or inspect."""
    arrival: float
    """Seconds after the start (unscaled) when the truck joins the queue."""
    to_arm_s: float
    bunched: bool = False
    entered: float | None = None
    left_stop: float | None = None
    drove_under_for: str | None = None
    """The transaction whose release the driver saw carried out when it drove off."""
    outcome: str = "none"


@dataclass
class Journal:
    opened: list[dict[str, Any]] = field(default_factory=list)
    completed: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    async def open_transaction(self, record: Mapping[str, Any]) -> None:
        copied = copy.deepcopy(dict(record))
        self.opened.append(copied)
        self.timeline.append((time.monotonic(), "open", copied))

    async def complete_transaction(self, record: Mapping[str, Any]) -> None:
        copied = copy.deepcopy(dict(record))
        self.completed.append(copied)
        self.timeline.append((time.monotonic(), "complete", copied))

    async def emit_event(self, *, lane: str | None, type: str, code: str, severity: str, active: bool,
                         detail: Mapping[str, Any]) -> None:
        return None


class PlanDecider:
    """Decides from the evidence as the real decider would on clean reads: the notice of the one
    container read, provided the scan is complete; anything else is manual."""

    def __init__(self, plan: Mapping[str, str], delay_s: float) -> None:
        self.plan = plan
        self.delay_s = delay_s
        self.outcomes: dict[str, DecisionOutcome] = {}

    async def decide(self, evidence: PassageEvidence) -> DecisionOutcome:
        await asyncio.sleep(self.delay_s)
        numbers = sorted({r.text for r in evidence.container_reads})
        reasons: tuple[str, ...]
        scan = evidence.scan
        containers = tuple({"number": n, "raw": [n], "confidence": 0.99, "check_digit_ok": True, "corrected": False,
                            "iso_type": "42G1", "release": {"status": self.plan.get(n, "none"), "ref": None,
                                                            "declared": None}} for n in numbers)
        plate = ({"text": evidence.plate_reads[-1].text, "confidence": 0.99} if evidence.plate_reads else None)
        scan_section = None if scan is None else {
            "scan_id": scan.scan_id, "columns": scan.columns, "rows": scan.rows, "channels": scan.channels,
            "complete": scan.complete, "sha256": scan.sha256, "inference": None}
        if len(numbers) != 1 or numbers[0] not in self.plan:
            action, reasons = "manual", ("OCR_UNREADABLE",)
        elif scan is None or not scan.complete:
            action, reasons = "manual", ("NO_SCAN",)
        elif self.plan[numbers[0]] == "release":
            action, reasons = "release", ("ALL_RELEASED", "SCAN_CLEAR")
        else:
            action, reasons = "inspect", ("INSPECTION_ORDERED",)
        outcome = DecisionOutcome(action=action, reasons=reasons, containers=containers,  # type: ignore[arg-type]
                                  plate=plate, scan=scan_section)
        self.outcomes[evidence.transaction_id] = outcome
        return outcome


def plan_traffic(count: int, *, per_hour: float, bunched: float, seed: int) -> list[Truck]:
    rng = random.Random(seed)
    mean_gap = 3600.0 / per_hour
    free_gap = mean_gap / max(1e-9, 1.0 - bunched)  # the platoons' zero gaps keep the mean rate
    trucks: list[Truck] = []
    t = 0.0
    for i in range(count):
        if i > 0:
            t += 0.0 if rng.random() < bunched else rng.expovariate(1.0 / free_gap)
        trucks.append(Truck(index=i, number=f"BNCH{i:06d}", plate=f"PL{i:05d}",
                            action="inspect" if rng.random() < 0.10 else "release",
                            arrival=t, to_arm_s=rng.uniform(0.5, 2.5)))
    return trucks


def scaled_config(port: int, scale: float, exit_detector: bool) -> LaneConfig:
    defaults = LaneTimeouts()
    timeouts = {name: getattr(defaults, name) / scale for name in type(defaults).model_fields}
    plc: dict[str, Any] = {
        "transport": "tcp", "host": "127.0.0.1", "port": port, "poll_hz": min(50.0, 10.0 * scale),
        "timeout_s": max(0.05, 0.5 / scale), "heartbeat_interval_s": max(0.1, 0.5 / scale),
        "reconnect_max_s": max(0.1, 2.0 / scale), "link_loss_s": max(0.2, 1.0 / scale),
        "barrier_travel_s": max(1.0, 6.0 / scale),
    }
    if exit_detector:
        plc["exit_loop"] = dict(EXIT_POINT)
    return LaneConfig.model_validate({"id": "L1", "scanner": True, "links": ["fw"], "plc": plc, "timeouts": timeouts,
                                      "exit_detection": exit_detector})


class Traffic:
    def __init__(self, lane: Lane, plc: VirtualLanePlc, journal: Journal, scale: float, seed: int) -> None:
        self.lane = lane
        self.plc = plc
        self.journal = journal
        self.scale = scale
        self.rng = random.Random(seed + 1)
        self.scan_no = 0
        self.t0 = time.monotonic()

    def s(self, seconds: float) -> float:
        return seconds / self.scale

    def now(self) -> float:
        """Unscaled seconds since the start."""
        return (time.monotonic() - self.t0) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.s(seconds))

    def ocr(self, kind: str, text: str) -> None:
        self.lane.observe_ocr(OcrObservation(kind=kind, camera="cam1", text=text, confidence=0.99,  # type: ignore[arg-type]
                                             received=time.monotonic(), link="fw"))

    def scan(self) -> None:
        self.scan_no += 1
        self.lane.observe_scan(ScanObservation(link="fw", scan_id=f"S{self.scan_no:05d}", scan_no=self.scan_no,
                                               complete=True, columns=2400, rows=256, channels=2, sha256="0" * 64,
                                               reason=None, scan_end=time.monotonic()))

    async def drive(self, truck: Truck, left: asyncio.Event) -> None:
        plc = self.plc
        vehicle = plc.add_vehicle(Spot.ENTRY, payload=truck)
        await self.sleep(1.0)
        plc.move(vehicle, Spot.ZONE)
        await self.sleep(0.5)
        self.ocr("container", truck.number)
        await self.sleep(0.2)
        self.ocr("plate", truck.plate)
        await self.sleep(0.2)
        self.ocr("container", truck.number)
        await self.sleep(2.1)
        self.scan()
        await self.sleep(2.0)
        plc.move(vehicle, Spot.STOP)
        if await self._barrier_for_me():
            truck.drove_under_for = self._carried_out()
            await self.sleep(0.5)  # the driver sets off
            plc.move(vehicle, Spot.TO_ARM)
            truck.left_stop = self.now()
            left.set()
            await self.sleep(truck.to_arm_s)
            plc.move(vehicle, Spot.UNDER)
            await self.sleep(1.5)
            plc.move(vehicle, Spot.EXIT)
            await self.sleep(1.0)
            plc.move(vehicle, Spot.GONE)
        else:
            await self.sleep(2.0)
            plc.vehicle_turns_off(vehicle)
            truck.left_stop = self.now()
            left.set()

    async def _barrier_for_me(self) -> bool:
        """Wait at the stop line: True when the barrier opens for this truck, False when it is sent
        to inspection (or nothing happens for 20 s)."""
        plc = self.plc
        if plc.position >= 1.0:
            # Still up behind the truck in front: not for this one until it has come down.
            with contextlib.suppress(TimeoutError):
                await plc.wait_for(lambda: plc.position < 1.0, timeout_s=self.s(20.0))
        try:
            await plc.wait_for(lambda: plc.position >= 1.0 or plc.coils["sign_inspection"], timeout_s=self.s(20.0))
        except TimeoutError:
            return False
        return plc.position >= 1.0

    def _carried_out(self) -> str | None:
        """The release the lane is carrying out now: the last release opened and not yet complete."""
        done = {r["transaction_id"] for r in self.journal.completed}
        for record in reversed(self.journal.opened):
            if record["decision"]["action"] == "release" and record["transaction_id"] not in done:
                return str(record["transaction_id"])
        return None

    async def run(self, trucks: list[Truck]) -> None:
        drives: list[asyncio.Task[None]] = []
        left = asyncio.Event()
        left.set()
        front_left = 0.0
        for truck in trucks:
            await left.wait()
            if drives:
                front_left = trucks[truck.index - 1].left_stop or self.now()
            left = asyncio.Event()
            if truck.arrival <= front_left and truck.index > 0:
                truck.bunched = True
                start = front_left + self.rng.uniform(1.0, 2.0)  # bumper to bumper
            else:
                start = truck.arrival
            await self.sleep(max(0.0, start - self.now()))
            truck.entered = self.now()
            drives.append(asyncio.create_task(self.drive(truck, left)))
        await asyncio.gather(*drives)


def wire_checks(plc: VirtualLanePlc, journal: Journal, decider: PlanDecider) -> dict[str, int]:
    unauthorised = lowered_onto = 0
    for w in plc.writes_of("barrier_raise"):
        if not w.value:
            lowered_onto += not w.master_knew_clear("loop_safety", within_s=1.0)
            continue
        opened = [r for t, kind, r in journal.timeline if kind == "open" and t <= w.at]
        if not opened:
            unauthorised += 1
            continue
        record = opened[-1]
        done = [t for t, kind, r in journal.timeline if kind == "complete"
                and r["transaction_id"] == record["transaction_id"] and t < w.at]
        outcome = decider.outcomes.get(record["transaction_id"])
        if (record["decision"]["action"] != "release" or done or outcome is None
                or outcome.action != "release"):
            unauthorised += 1
    return {"raise_without_open_release": unauthorised, "lowered_onto_safety_loop": lowered_onto}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    scale = args.time_scale
    exit_point = PointConfig.model_validate(EXIT_POINT) if args.exit_detector else None
    plc = VirtualLanePlc(travel_s=(1.5 / scale, 3.0 / scale), move_s=1.0 / scale, tick_s=0.01, seed=args.seed,
                         exit_loop=exit_point)
    server = VirtualPlcServer(plc)
    port = await server.start_tcp()
    trucks = plan_traffic(args.trucks, per_hour=args.per_hour, bunched=args.bunched, seed=args.seed)
    journal = Journal()
    decider = PlanDecider({t.number: t.action for t in trucks}, delay_s=0.05)
    config = scaled_config(port, scale, args.exit_detector)
    lane = Lane(config, site="BENCH", gate="G1", decider=decider, journal=journal, buses=PlcBusRegistry(),
                tick_s=0.05 / scale)
    task = asyncio.create_task(lane.run(), name="lane-L1")
    traffic = Traffic(lane, plc, journal, scale, args.seed)
    try:
        deadline = time.monotonic() + 10.0
        while not lane.driver.connected or lane.mode.value != "automatic":
            if time.monotonic() > deadline:
                raise RuntimeError("the lane did not come up")
            await asyncio.sleep(0.05)
        traffic.t0 = time.monotonic()
        await traffic.run(trucks)
        with contextlib.suppress(TimeoutError):
            await plc.wait_for(lambda: lane.phase is Phase.IDLE and plc.inputs["barrier_down"],
                               timeout_s=30.0 / scale + config.timeouts.backout_s)
        elapsed_h = traffic.now() / 3600.0
    finally:
        await lane.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop()
    return figures(args, trucks, journal, decider, plc, elapsed_h)


def figures(args: argparse.Namespace, trucks: list[Truck], journal: Journal, decider: PlanDecider,
            plc: VirtualLanePlc, elapsed_h: float) -> dict[str, Any]:
    by_number: dict[str, list[dict[str, Any]]] = {}
    for record in journal.completed:
        for c in record["containers"]:
            by_number.setdefault(c["number"], []).append(record)
    crossed = 0
    for truck in trucks:
        records = by_number.get(truck.number, [])
        auto = [r for r in records if r["decision"]["by"] == "auto"
                and r["decision"]["action"] in ("release", "inspect") and "CANCELLED" not in r["decision"]["reasons"]]
        if auto:
            truck.outcome = auto[0]["decision"]["action"]
        elif records:
            truck.outcome = "manual"
        else:
            truck.outcome = "cancelled"
        if truck.drove_under_for is not None:
            released = next((r for r in journal.opened if r["transaction_id"] == truck.drove_under_for), None)
            numbers = [c["number"] for c in released["containers"]] if released else []
            crossed += numbers != [truck.number]
    def share(group: list[Truck]) -> dict[str, Any]:
        auto = sum(t.outcome in ("release", "inspect") for t in group)
        return {"trucks": len(group), "decided_automatically": auto,
                "share": round(auto / len(group), 4) if group else None}
    cancelled = sum("CANCELLED" in r["decision"]["reasons"] for r in journal.completed)
    bunched = [t for t in trucks if t.bunched]
    gaps = [t.entered - (trucks[t.index - 1].left_stop or 0.0) for t in bunched if t.entered is not None]
    return {
        "trucks": len(trucks), "per_hour_planned": args.per_hour, "per_hour_run": round(len(trucks) / elapsed_h, 1),
        "time_scale": args.time_scale, "exit_detector": args.exit_detector, "bunched_planned": args.bunched,
        "all": share(trucks), "bumper_to_bumper": share(bunched),
        "free": share([t for t in trucks if not t.bunched]),
        "entry_after_front_left_stop_s": {"min": round(min(gaps), 2), "median": round(statistics.median(gaps), 2),
                                          "max": round(max(gaps), 2)} if gaps else None,
        "outcomes": {k: sum(t.outcome == k for t in trucks) for k in ("release", "inspect", "manual", "cancelled")},
        "planned_inspect": sum(t.action == "inspect" for t in trucks),
        "transactions": len(journal.completed), "cancelled_transactions": cancelled,
        "drove_under_another_trucks_release": crossed,
        **wire_checks(plc, journal, decider),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trucks", type=int, default=200)
    parser.add_argument("--per-hour", type=float, default=120.0, help="mean arrival rate of the lane")
    parser.add_argument("--bunched", type=float, default=0.3, help="share of trucks arriving in a platoon")
    parser.add_argument("--time-scale", type=float, default=4.0, help="run this many times faster than real time")
    parser.add_argument("--exit-detector", action="store_true", help="the lane has an exit detector past the barrier")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--log", default="WARNING", help="log level of the lane")
    parsed = parser.parse_args()
    if not 1.0 <= parsed.time_scale <= 5.0:
        parser.error("--time-scale must be between 1 and 5 (the PLC timing limits of the config)")
    logging.getLogger("gate_controller").setLevel(parsed.log)
    print(json.dumps(asyncio.run(main(parsed)), indent=2))
