"""The virtual gate firmware: GFP/1 scanner and OCR devices with trucks, OCR errors and link faults.

Names are imported on first use (PEP 562): the CLI reads the scenario list without loading numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firmware_bridge.simulator.faults import FaultConfig
    from firmware_bridge.simulator.firmware import FirmwareSimulator, PassageRecord
    from firmware_bridge.simulator.ports import FirmwarePort, PtyPort, SerialPort, TcpServerPort
    from firmware_bridge.simulator.scenarios import SCENARIOS, Scenario
    from firmware_bridge.simulator.standalone import run_standalone
    from firmware_bridge.simulator.trucks import (
        ContainerSpec,
        TruckSpec,
        ocr_reads,
        random_container_number,
        random_truck,
    )

__all__ = [
    "SCENARIOS",
    "ContainerSpec",
    "FaultConfig",
    "FirmwarePort",
    "FirmwareSimulator",
    "PassageRecord",
    "PtyPort",
    "Scenario",
    "SerialPort",
    "TcpServerPort",
    "TruckSpec",
    "ocr_reads",
    "random_container_number",
    "random_truck",
    "run_standalone",
]

_HOMES = {
    "FaultConfig": "faults", "FirmwareSimulator": "firmware", "PassageRecord": "firmware",
    "FirmwarePort": "ports", "PtyPort": "ports", "SerialPort": "ports", "TcpServerPort": "ports",
    "SCENARIOS": "scenarios", "Scenario": "scenarios", "run_standalone": "standalone",
    "ContainerSpec": "trucks", "TruckSpec": "trucks", "ocr_reads": "trucks",
    "random_container_number": "trucks", "random_truck": "trucks",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'firmware_bridge.simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(f"firmware_bridge.simulator.{home}"), name)
