"""What a link reports to its owner: one typed, immutable event per thing that happened.

Times named ``monotonic``/``received`` are the link clock (``time.monotonic`` unless injected) so
the daemon can measure latencies such as SCAN_END to decision; ``*_ms`` fields are the firmware's
wall-clock timestamps, passed through untouched. `as_dict` gives the JSON form used by
``smartgate sniff --json`` (pixels are never included).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.scan import Scan

__all__ = [
    "DeviceInfo",
    "FaultEvent",
    "HeartbeatEvent",
    "HelloEvent",
    "LinkEvent",
    "LinkStateEvent",
    "OcrEvent",
    "ScanEvent",
]


@dataclass(frozen=True)
class DeviceInfo:
    """The firmware's HELLO."""

    device: str
    fw_version: str
    serial_no: str
    protocol: int
    rows: int | None = None
    channels: int | None = None
    bits: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "fw_version": self.fw_version, "serial_no": self.serial_no,
                "protocol": self.protocol, "rows": self.rows, "channels": self.channels, "bits": self.bits}


@dataclass(frozen=True)
class LinkStateEvent:
    """The link went up (first valid frame) or down (5 s rule, or the connection broke)."""

    link: str
    up: bool
    reason: str
    monotonic: float

    def as_dict(self) -> dict[str, Any]:
        return {"event": "link", "link": self.link, "up": self.up, "reason": self.reason}


@dataclass(frozen=True)
class HelloEvent:
    link: str
    device: DeviceInfo
    monotonic: float

    def as_dict(self) -> dict[str, Any]:
        return {"event": "hello", "link": self.link, **self.device.as_dict()}


@dataclass(frozen=True)
class HeartbeatEvent:
    link: str
    uptime_ms: int
    state: str
    monotonic: float

    def as_dict(self) -> dict[str, Any]:
        return {"event": "heartbeat", "link": self.link, "uptime_ms": self.uptime_ms, "state": self.state}


@dataclass(frozen=True)
class ScanEvent:
    """One scan transfer ended. Only ``complete`` scans may ever lead to an automatic release.

    ``scan`` holds the pixels whenever every column arrived, even when ``data_crc32`` did not match
    (then ``complete`` is False and ``sha256`` is the hash of the bytes received). ``sha256`` is None
    while columns are missing.
    """

    link: str
    scan_id: str
    scan_no: int
    columns: int
    rows: int
    channels: int
    bits: int
    pixel_mm: float
    complete: bool
    sha256: str | None
    reason: str | None
    resend_rounds: int
    scan: Scan | None
    started_ms: int
    ended_ms: int | None
    speed_kmh: float | None
    received: float | None
    """Link-clock time SCAN_END arrived (None without a SCAN_END)."""
    monotonic: float
    """Link-clock time the transfer ended and this event was made."""
    columns_received: int = 0
    aborted: bool = False
    expected_columns: int | None = None
    declared: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": "scan", "link": self.link, "scan_id": self.scan_id, "scan_no": self.scan_no,
            "columns": self.columns, "rows": self.rows, "channels": self.channels, "bits": self.bits,
            "pixel_mm": self.pixel_mm, "complete": self.complete, "sha256": self.sha256,
            "reason": self.reason, "aborted": self.aborted, "resend_rounds": self.resend_rounds,
            "columns_received": self.columns_received, "started_ms": self.started_ms,
            "ended_ms": self.ended_ms, "speed_kmh": self.speed_kmh,
        }


@dataclass(frozen=True)
class OcrEvent:
    link: str
    kind: str
    camera: str
    text: str
    confidence: float
    char_confidence: tuple[float, ...] | None
    iso_type: str | None
    read_ms: int | None
    monotonic: float

    def as_dict(self) -> dict[str, Any]:
        return {"event": "ocr", "link": self.link, "kind": self.kind, "camera": self.camera, "text": self.text,
                "confidence": self.confidence,
                "char_confidence": list(self.char_confidence) if self.char_confidence is not None else None,
                "iso_type": self.iso_type, "read_ms": self.read_ms}


@dataclass(frozen=True)
class FaultEvent:
    """A firmware fault; it stays active until the same ``code`` arrives with ``active`` False."""

    link: str
    code: str
    severity: str
    active: bool
    message: str
    monotonic: float

    def as_dict(self) -> dict[str, Any]:
        return {"event": "fault", "link": self.link, "code": self.code, "severity": self.severity,
                "active": self.active, "message": self.message}


LinkEvent = LinkStateEvent | HelloEvent | HeartbeatEvent | ScanEvent | OcrEvent | FaultEvent
