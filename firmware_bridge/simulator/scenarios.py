"""Named scenarios for ``smartgate sim firmware --scenario NAME``: link faults and truck mix."""

from __future__ import annotations

from dataclasses import dataclass, field

from firmware_bridge.simulator.faults import FaultConfig

__all__ = ["SCENARIOS", "Scenario"]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    faults: FaultConfig = field(default_factory=FaultConfig)
    anomaly_rate: float = 0.15
    empty_rate: float = 0.15
    misdeclared_rate: float = 0.05
    ocr_quality: float = 0.8
    interval_s: float = 10.0


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("clean", "a healthy link and mostly good OCR"),
    Scenario("noisy", "electrical noise: garbage bursts with false magics, bit flips, a few lost lines",
             FaultConfig(garbage_rate=0.05, bit_flip_rate=0.01, drop_lines_rate=0.03, truncate_rate=0.002)),
    Scenario("lossy", "lines lost, repeated and out of order: every scan needs RESEND",
             FaultConfig(drop_lines_rate=0.1, duplicate_lines_rate=0.05, shuffle_lines=True)),
    Scenario("flaky", "the link drops for 6 s every 45 s",
             FaultConfig(link_drop_interval_s=45.0, link_drop_duration_s=6.0)),
    Scenario("faults", "firmware FAULT frames raised and cleared every 20 s",
             FaultConfig(fault_interval_s=20.0)),
    Scenario("corrupt", "scans with a wrong data_crc32 or aborted in the tunnel",
             FaultConfig(bad_data_crc_rate=0.25, abort_rate=0.1)),
    Scenario("bad-ocr", "dirty cameras: most OCR reads are damaged", ocr_quality=0.3),
    Scenario("contraband", "many anomalies and misdeclared empties", anomaly_rate=0.5, misdeclared_rate=0.2),
    Scenario("stress", "everything at once",
             FaultConfig(garbage_rate=0.05, bit_flip_rate=0.01, drop_lines_rate=0.05, duplicate_lines_rate=0.05,
                         shuffle_lines=True, bad_data_crc_rate=0.05, abort_rate=0.05, link_drop_interval_s=60.0,
                         fault_interval_s=30.0),
             anomaly_rate=0.3, ocr_quality=0.6, interval_s=6.0),
)}
