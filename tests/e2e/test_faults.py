"""The field, compressed: a stream of trucks through the real daemon while things break in turn.

Peers are real: mosquitto with TLS and password auth, pymodbus servers as lane PLCs, GFP/1
firmware simulators over TCP, the daemon as its own process with the shipped model in its review
worker. After every fault: each truck's transaction reached the broker (duplicates by ``msg_id``
are allowed, loss is not), ``seq`` has no gap, no barrier went up for a truck that was not
released, none came down onto a vehicle, and the lanes are back in automatic operation on their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gate_controller.demo.gate import DemoTruck, SimulatedGate, check_plc_safety, plan_trucks
from gate_controller.service.control import read_status
from tests.support.broker import BROKER_MARKS, MosquittoBroker
from tests.support.gate import daemon_log, simulated_gate

pytestmark = [*BROKER_MARKS, pytest.mark.slow]

TALLY: list[tuple[str, int, int, int, str]] = []


class Traffic:
    """Trucks for each lane in turn, from one deterministic plan."""

    def __init__(self, gate: SimulatedGate) -> None:
        self.gate = gate
        self.plan = plan_trucks(200, list(gate.rigs), seed=23)
        self.next = 0
        self.driven = 0

    def take(self, lane: str) -> DemoTruck:
        while self.plan[self.next].lane != lane:
            self.next += 1
        truck = self.plan[self.next]
        self.next += 1
        return truck

    async def run(self, per_lane: int = 1) -> None:
        async def lane_run(lane: str) -> None:
            for _ in range(per_lane):
                await self.gate.drive_truck(self.gate.rigs[lane], self.take(lane))
                self.driven += 1
        await asyncio.gather(*(lane_run(lane) for lane in self.gate.rigs))


async def lane_phase(gate: SimulatedGate, lane: str, phases: tuple[str, ...], timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = await asyncio.to_thread(read_status, gate.config.control.socket_path, 1.0)
            phase = str(status["lanes"][lane]["phase"])
            if phase in phases:
                return phase
        except (OSError, ValueError, TypeError, KeyError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"lane {lane} never reached {phases}")


async def recovered(gate: SimulatedGate, timeout_s: float = 60.0) -> None:
    """Every lane back to automatic and idle, every link up, without help."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(read_status, gate.config.control.socket_path, 1.0)
            lanes_ok = all(lane["mode"] == "automatic" and lane["phase"] == "idle" and lane["plc_connected"]
                           for lane in last["lanes"].values())
            links_ok = all(link["up"] for link in last["links"].values())
            if lanes_ok and links_ok and last["hub"]["connected"]:
                return
        except (OSError, ValueError, TypeError, KeyError):
            pass
        await asyncio.sleep(0.2)
    sims = {lane: rig.ocr.stats() for lane, rig in gate.rigs.items()}
    raise AssertionError(f"the gate did not recover on its own: {last}\nsimulators: {sims}\n{daemon_log(gate)}")


async def settle_and_judge(gate: SimulatedGate, traffic: Traffic, name: str) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and len(
            {t["transaction_id"] for t in gate.result.transactions.values()}) < traffic.driven:
        await asyncio.sleep(0.2)
    check_plc_safety(gate)
    result = gate.result
    distinct = {t["transaction_id"] for t in result.transactions.values()}
    TALLY.append((name, traffic.driven, len(distinct), result.duplicates,
                  "ok" if result.ok else f"unsafe={result.unsafe} lost={result.lost} gaps={result.seq_gaps()}"))
    assert not result.unsafe, (name, result.unsafe, daemon_log(gate))
    assert not result.lost, (name, result.lost, daemon_log(gate))
    assert not result.seq_gaps(), (name, result.seq_gaps())
    assert len(distinct) >= traffic.driven, (name, len(distinct), traffic.driven, daemon_log(gate))
    await recovered(gate)


async def during(fault: Callable[[], Awaitable[None]], traffic: Traffic, *, delay_s: float) -> None:
    async def later() -> None:
        await asyncio.sleep(delay_s)
        await fault()
    await asyncio.gather(traffic.run(), later())


def test_fault_injection_suite(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        asyncio.run(_suite(tmp_path, broker))
    finally:
        broker.stop()
        print("\nfault-injection tally (phase, trucks driven so far, distinct transactions, duplicates, verdict)")
        for row in TALLY:
            print("  {:<28} {:>4} {:>4} {:>4}  {}".format(*row))


async def _suite(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with simulated_gate(tmp_path / "gate", broker, mqtt={"backlog": {"max_messages": 10}}) as gate:
        traffic = Traffic(gate)
        await recovered(gate)
        await traffic.run()
        await settle_and_judge(gate, traffic, "baseline")

        # 1. The broker restarts while trucks pass.
        async def restart_broker() -> None:
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.start)
        await during(restart_broker, traffic, delay_s=0.5)
        await settle_and_judge(gate, traffic, "broker restart")

        # 2. The daemon is SIGKILLed after a decision (barrier up, transaction journaled, not complete).
        truck = traffic.take("L1")
        drive = asyncio.create_task(gate.drive_truck(gate.rigs["L1"], truck))
        await lane_phase(gate, "L1", ("released", "passing", "stopped"))
        await gate.stop_daemon(signal.SIGKILL)
        await asyncio.sleep(1.0)
        await gate.start_daemon()
        await drive
        traffic.driven += 1
        await settle_and_judge(gate, traffic, "daemon SIGKILL + restart")

        # 3. A PLC stops answering, then its connection drops.
        async def plc_outage() -> None:
            rig = gate.rigs["L2"]
            rig.plc.mute = True
            await asyncio.sleep(3.0)
            rig.plc.mute = False
            rig.server.drop_connections()
        await during(plc_outage, traffic, delay_s=1.8)
        await settle_and_judge(gate, traffic, "PLC link loss")

        # 4. A serial link drops in the middle of a scan transfer.
        async def serial_drop() -> None:
            sim = gate.rigs["L1"].scanner
            assert sim is not None
            await sim.drop_link(2.0)
        await during(serial_drop, traffic, delay_s=0.35)
        await settle_and_judge(gate, traffic, "serial link drop mid-scan")

        # 5. The inference worker crashes.
        async def kill_worker() -> None:
            status = await asyncio.to_thread(read_status, gate.config.control.socket_path, 2.0)
            pid = status["inference"]["worker_pid"]
            assert isinstance(pid, int)
            os.kill(pid, signal.SIGKILL)
        await during(kill_worker, traffic, delay_s=0.1)
        await settle_and_judge(gate, traffic, "inference worker crash")

        # 6. The hub is unreachable long enough for the backlog to pass its limit.
        await asyncio.to_thread(broker.stop)
        gate.expect_delivery = False
        for _ in range(5):  # 10 transactions: the backlog reaches max_messages (10)
            await traffic.run()
        await asyncio.to_thread(broker.start)
        gate.expect_delivery = True
        await settle_and_judge(gate, traffic, "backlog full (hub down)")
        codes = {
            (e.get("code"), e.get("active")) for e in await _events(gate)
        }
        assert ("BACKLOG_FULL", True) in codes, codes


async def _events(gate: SimulatedGate) -> list[dict[str, Any]]:
    return list(gate.events_seen)
