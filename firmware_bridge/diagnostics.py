"""What a GFP/1 link shows for diagnostics: its counters and the frames that crossed it (never payloads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from firmware_bridge.frame import FrameType

__all__ = ["RECENT_FRAMES", "FrameNote", "LinkCounters", "frame_type_name"]

RECENT_FRAMES = 32
"""Frames of each direction a link remembers for diagnostics (type, sequence, length; no payload)."""


@dataclass(frozen=True)
class LinkCounters:
    """A snapshot of one link's counters since the link object was made."""

    connects: int
    connect_failures: int
    disconnects: int
    link_downs: int
    bytes_rx: int
    frames_rx: int
    garbage_bytes: int
    header_errors: int
    oversize_headers: int
    crc_errors: int
    unknown_types: int
    partial_frames: int
    lost_frames: int
    sequence_resyncs: int
    rejected_payloads: int
    frames_tx: int
    bytes_tx: int
    tx_dropped: int
    hellos: int
    heartbeats_rx: int
    ocr_reads: int
    faults: int
    scans_begun: int
    scans_complete: int
    scans_incomplete: int
    scans_superseded: int
    scans_aborted: int
    scans_timed_out: int
    scans_crc_mismatch: int
    unknown_scan_frames: int
    duplicate_columns: int
    discarded_columns: int
    duplicate_ends: int
    resend_rounds: int
    resend_requests: int
    resent_columns: int
    events_dropped: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FrameNote:
    """One frame that crossed the link, as diagnostics show it: never the payload itself."""

    at: float
    """Wall-clock time (seconds since the epoch) it was received or queued for sending."""
    direction: str
    """``rx`` (from the firmware) or ``tx`` (to the firmware)."""
    type: str
    seq: int
    length: int


def frame_type_name(value: int) -> str:
    try:
        return FrameType(value).name
    except ValueError:
        return f"0x{value:02X}"
