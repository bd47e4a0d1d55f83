"""Settings of one GFP/1 link: a plain dataclass the daemon's YAML schema maps onto.

`firmware_bridge` does not import the daemon's config; ``gate_controller`` builds `LinkSettings`
from its validated `LinkConfig`. The checks here guard direct use (tests, `smartgate sniff`).
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_bridge.errors import LinkSettingsError

__all__ = ["LinkSettings"]


@dataclass(frozen=True)
class LinkSettings:
    name: str
    url: str
    """Anything ``serial.serial_for_url`` opens: a device path, ``socket://``, ``rfc2217://``, ``loop://``."""
    baudrate: int = 115200
    parity: str = "N"
    bytesize: int = 8
    stopbits: float = 1
    heartbeat_interval_s: float = 1.0
    """Our HEARTBEAT period; the spec requires at least every 2 s."""
    link_timeout_s: float = 5.0
    """No valid frame for this long: the link is down (and the port is reopened)."""
    partial_frame_timeout_s: float = 2.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    resend_first_delay_s: float = 0.05
    """Delay of RESEND round 1 after SCAN_END; the spec requires it within 100 ms."""
    resend_interval_s: float = 1.0
    resend_rounds: int = 3
    scan_timeout_s: float = 60.0
    write_timeout_s: float = 2.0
    """A write that cannot complete in this time breaks the connection (then it is reopened)."""
    max_scan_bytes: int = 256 * 1024 * 1024
    """Memory cap of one scan being assembled; a larger scan is reported incomplete (``too_large``)."""
    event_queue_size: int = 1024
    """Events kept for a slow consumer; beyond it new events are dropped and counted."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.name:
            problems.append("name must not be empty")
        if not self.url:
            problems.append("url must not be empty")
        if self.baudrate <= 0:
            problems.append(f"baudrate must be > 0 (got {self.baudrate})")
        if self.parity not in ("N", "E", "O"):
            problems.append(f"parity must be N, E or O (got {self.parity!r})")
        if self.bytesize not in (5, 6, 7, 8):
            problems.append(f"bytesize must be 5..8 (got {self.bytesize})")
        if self.stopbits not in (1, 1.5, 2):
            problems.append(f"stopbits must be 1, 1.5 or 2 (got {self.stopbits})")
        if not 0 < self.heartbeat_interval_s <= 2.0:
            problems.append(f"heartbeat_interval_s must be in (0, 2] (got {self.heartbeat_interval_s})")
        if not 0 <= self.resend_first_delay_s <= 0.1:
            problems.append(f"resend_first_delay_s must be in [0, 0.1] (got {self.resend_first_delay_s})")
        if self.resend_rounds < 0:
            problems.append(f"resend_rounds must be >= 0 (got {self.resend_rounds})")
        for key in ("link_timeout_s", "partial_frame_timeout_s", "reconnect_initial_s", "reconnect_max_s",
                    "resend_interval_s", "scan_timeout_s", "write_timeout_s"):
            if not getattr(self, key) > 0:
                problems.append(f"{key} must be > 0 (got {getattr(self, key)})")
        if self.reconnect_max_s < self.reconnect_initial_s:
            problems.append("reconnect_max_s must be >= reconnect_initial_s")
        if self.max_scan_bytes < 1:
            problems.append(f"max_scan_bytes must be >= 1 (got {self.max_scan_bytes})")
        if self.event_queue_size < 1:
            problems.append(f"event_queue_size must be >= 1 (got {self.event_queue_size})")
        if problems:
            raise LinkSettingsError(f"link {self.name!r}: " + "; ".join(problems))
