"""GFP/1 serial links to the gate firmware: frames, scan assembly, events, and the firmware simulator.

Names are imported on first use (PEP 562) so that ``smartgate --help`` and the CLI parsers, which
import this package for its constants, do not pay for numpy on a small gate computer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firmware_bridge.errors import (
        LinkClosedError,
        LinkError,
        LinkSettingsError,
        PayloadError,
        ProtocolError,
    )
    from firmware_bridge.events import (
        DeviceInfo,
        FaultEvent,
        HeartbeatEvent,
        HelloEvent,
        LinkEvent,
        LinkStateEvent,
        OcrEvent,
        ScanEvent,
    )
    from firmware_bridge.link import GfpLink, LinkCounters
    from firmware_bridge.settings import LinkSettings

__all__ = [
    "DeviceInfo",
    "FaultEvent",
    "GfpLink",
    "HeartbeatEvent",
    "HelloEvent",
    "LinkClosedError",
    "LinkCounters",
    "LinkError",
    "LinkEvent",
    "LinkSettings",
    "LinkSettingsError",
    "LinkStateEvent",
    "OcrEvent",
    "PayloadError",
    "ProtocolError",
    "ScanEvent",
]

_HOMES = {
    "LinkClosedError": "errors", "LinkError": "errors", "LinkSettingsError": "errors", "PayloadError": "errors",
    "ProtocolError": "errors",
    "DeviceInfo": "events", "FaultEvent": "events", "HeartbeatEvent": "events", "HelloEvent": "events",
    "LinkEvent": "events", "LinkStateEvent": "events", "OcrEvent": "events", "ScanEvent": "events",
    "GfpLink": "link", "LinkCounters": "link", "LinkSettings": "settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'firmware_bridge' has no attribute {name!r}")
    return getattr(importlib.import_module(f"firmware_bridge.{home}"), name)
