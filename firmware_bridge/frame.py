"""GFP/1 frame layout, CRCs and encoding (spec section 1).

The CRCs come from the standard library's C implementations: CRC-16/CCITT-FALSE is
``binascii.crc_hqx`` with initial value 0xFFFF, CRC-32/ISO-HDLC is ``zlib.crc32``.
"""

from __future__ import annotations

import binascii
import enum
import struct
import zlib
from dataclasses import dataclass

from firmware_bridge.errors import ProtocolError

__all__ = [
    "DAEMON_TO_FIRMWARE",
    "FIRMWARE_TO_DAEMON",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_FRAME_SIZE",
    "MAX_PAYLOAD",
    "MAX_READ_CHUNK",
    "TRAILER_SIZE",
    "VERSION",
    "Frame",
    "FrameType",
    "crc16_ccitt_false",
    "crc32",
    "encode_frame",
    "header_is_valid",
]

MAGIC = b"\xa5\x5a"
VERSION = 0x01
HEADER_SIZE = 12
TRAILER_SIZE = 4
MAX_PAYLOAD = 1_048_576
MAX_FRAME_SIZE = HEADER_SIZE + MAX_PAYLOAD + TRAILER_SIZE
# Section 2 rule 7: reads are at most 64 KiB; the receiver's buffer bound is one frame plus one read.
MAX_READ_CHUNK = 65_536

_HEADER = struct.Struct("<2sBBHI")  # magic, version, type, sequence, length (bytes 0..9)
_HEADER_TAIL = struct.Struct("<BBHIH")  # version, type, sequence, length, header CRC (bytes 2..11)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class FrameType(enum.IntEnum):
    HELLO = 0x01
    HEARTBEAT = 0x02
    SCAN_BEGIN = 0x10
    SCAN_LINES = 0x11
    SCAN_END = 0x12
    SCAN_ABORT = 0x13
    OCR_READ = 0x20
    FAULT = 0x30
    SCAN_ACK = 0x81
    RESEND = 0x82
    CONTROL = 0x83


# HEARTBEAT travels both ways; everything else has one direction. A frame type meant for the
# other direction counts as an unknown type (section 2 rule 8).
FIRMWARE_TO_DAEMON: frozenset[int] = frozenset({
    FrameType.HELLO, FrameType.HEARTBEAT, FrameType.SCAN_BEGIN, FrameType.SCAN_LINES,
    FrameType.SCAN_END, FrameType.SCAN_ABORT, FrameType.OCR_READ, FrameType.FAULT,
})
DAEMON_TO_FIRMWARE: frozenset[int] = frozenset({
    FrameType.HEARTBEAT, FrameType.SCAN_ACK, FrameType.RESEND, FrameType.CONTROL,
})


@dataclass(frozen=True, slots=True)
class Frame:
    """One received frame whose header CRC and frame CRC were both valid."""

    type: int
    seq: int
    payload: bytes


def crc16_ccitt_false(data: bytes | bytearray | memoryview) -> int:
    return binascii.crc_hqx(data, 0xFFFF)


def crc32(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """Build the bytes of one frame; ``seq`` is taken modulo 65536 (the counter wraps)."""
    if not 0 <= frame_type <= 0xFF:
        raise ProtocolError(f"frame type must fit one byte (got {frame_type})")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    head = _HEADER.pack(MAGIC, VERSION, frame_type, seq & 0xFFFF, len(payload))
    head += _U16.pack(crc16_ccitt_false(head[2:]))
    crc = zlib.crc32(payload, zlib.crc32(head[2:]))
    return b"".join((head, payload, _U32.pack(crc)))


def header_is_valid(header: bytes | bytearray | memoryview) -> bool:
    """True when 12 bytes starting at a magic form a header the receiver would accept (rule 2)."""
    if len(header) < HEADER_SIZE or bytes(header[:2]) != MAGIC:
        return False
    version, _type, _seq, length, hcrc = _HEADER_TAIL.unpack_from(header, 2)
    return bool(version == VERSION and length <= MAX_PAYLOAD and crc16_ccitt_false(header[2:10]) == hcrc)
