"""Errors raised by the firmware bridge, under the shared `SmartGateError` root."""

from __future__ import annotations

from inference.errors import SmartGateError

__all__ = [
    "LinkClosedError",
    "LinkError",
    "LinkSettingsError",
    "PayloadError",
    "ProtocolError",
]


class LinkError(SmartGateError):
    """A GFP/1 link could not be opened, broke, or is not connected for a send."""


class LinkClosedError(LinkError):
    """A send was attempted while the link has no open connection."""


class LinkSettingsError(SmartGateError, ValueError):
    """Link settings are out of range (the daemon's config schema should have caught it)."""


class ProtocolError(SmartGateError):
    """Bytes or payloads that do not follow GFP/1."""


class PayloadError(ProtocolError):
    """A frame's payload is rejected under spec section 3.

    ``kind`` is a short stable token (``bad_json``, ``missing:scan_no``, ``type:rows``, ...) used for
    counting and for logging each kind of rejection once instead of once per frame.
    """

    def __init__(self, frame_type: int, kind: str, detail: str = "") -> None:
        super().__init__(f"frame type 0x{frame_type:02x}: {kind}{': ' + detail if detail else ''}")
        self.frame_type = frame_type
        self.kind = kind
