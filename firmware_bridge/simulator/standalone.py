"""``smartgate sim firmware``: one simulated device sending N random trucks on a timer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from firmware_bridge.simulator.firmware import FirmwareSimulator, PassageRecord
from firmware_bridge.simulator.scenarios import SCENARIOS
from firmware_bridge.simulator.trucks import random_truck

__all__ = ["run_standalone"]

log = logging.getLogger(__name__)


async def run_standalone(
    url: str,
    *,
    scenario: str = "clean",
    device: str = "combo",
    baud: int | None = None,
    trucks: int = 5,
    interval_s: float | None = None,
    seed: int = 0,
    serial_no: str = "SIM-0001",
    realtime: bool = False,
    emit: Callable[[dict[str, Any]], None] = lambda record: None,
) -> dict[str, Any]:
    """Serve ``url``, wait for a daemon to speak, pass ``trucks`` trucks (0: forever), then wait
    for their SCAN_ACKs (at most as long as scans are kept) and return the simulator's stats."""
    spec = SCENARIOS[scenario]
    sim = FirmwareSimulator(device=device, serial_no=serial_no, baud=baud, faults=spec.faults, seed=seed,
                            realtime=realtime)
    interval = spec.interval_s if interval_s is None else interval_s
    try:
        served = await sim.serve_url(url)
        emit({"event": "serving", "url": served, "device": device, "scenario": scenario, "baud": baud})
        # Trucks sent before a daemon listens would be lost on a TCP server with no client.
        await sim.wait_for_daemon()
        emit({"event": "daemon", "connected": True})
        records: list[PassageRecord] = []
        n = 0
        while trucks == 0 or n < trucks:
            truck = random_truck(seed * 100_003 + n, anomaly_rate=spec.anomaly_rate, empty_rate=spec.empty_rate,
                                 misdeclared_rate=spec.misdeclared_rate, ocr_quality=spec.ocr_quality)
            record = await sim.pass_truck(truck)
            records.append(record)
            emit(record.as_dict())
            n += 1
            if trucks == 0 or n < trucks:
                await asyncio.sleep(interval)
        pending = [r.scan_no for r in records if r.scan_no is not None and not r.aborted]
        try:
            async with asyncio.timeout(sim.keep_scans_s):
                for scan_no in pending:
                    ack = await sim.wait_for_ack(scan_no)
                    emit({"event": "ack", "scan_no": scan_no, "status": ack.status, "reason": ack.reason})
        except TimeoutError:
            log.warning("some scans were never acknowledged: %s", [s for s in pending if s not in sim.acks])
        stats = sim.stats()
        emit({"event": "done", **stats})
        return stats
    finally:
        await sim.close()
