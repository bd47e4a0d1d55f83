"""The incremental GFP/1 receiver: bytes in, valid frames out, every rule of spec section 2.

It is a plain object with no I/O and no clock of its own (the caller passes ``now``), so the link's
reader thread, the simulator and the fuzz tests all drive the very same code.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from firmware_bridge.frame import (
    HEADER_SIZE,
    MAGIC,
    MAX_FRAME_SIZE,
    MAX_PAYLOAD,
    MAX_READ_CHUNK,
    TRAILER_SIZE,
    VERSION,
    Frame,
    FrameType,
    crc16_ccitt_false,
)

__all__ = ["MAX_BUFFERED", "FrameReceiver", "ReceiverCounters"]

# Rule 7: never more than one maximum frame plus one read chunk.
MAX_BUFFERED = MAX_FRAME_SIZE + MAX_READ_CHUNK

_MAGIC0 = MAGIC[0]
_HEADER_TAIL = struct.Struct("<BBHIH")
_U32 = struct.Struct("<I")


@dataclass
class ReceiverCounters:
    """Counts kept by one receiver (section 2 rules 1-8)."""

    bytes: int = 0
    frames: int = 0
    """Frames whose header CRC and frame CRC were valid, whatever their type."""
    garbage_bytes: int = 0
    header_errors: int = 0
    """False magics: wrong version, wrong header CRC or a length over the maximum (rule 2)."""
    oversize_headers: int = 0
    """The part of ``header_errors`` whose header CRC passed but whose length exceeds the maximum."""
    crc_errors: int = 0
    unknown_types: int = 0
    partial_frames: int = 0
    """Partial frames discarded after silence (rule 6)."""
    lost_frames: int = 0
    """Frames missing by the peer's sequence numbers (rule 5)."""
    sequence_resyncs: int = 0
    """Sequence jumps backwards (a restarted peer or a replay): followed, not counted as losses."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class FrameReceiver:
    """Turns a byte stream into frames; never raises on input, never buffers beyond `MAX_BUFFERED`.

    ``accepted_types`` are the frame types meant for this end (the other direction's types are
    counted as unknown). ``resync_types`` restart sequence tracking without counting a gap: a HELLO
    follows a firmware power-up, whose counter may start anywhere.
    """

    def __init__(
        self,
        accepted_types: Iterable[int],
        *,
        partial_timeout_s: float = 2.0,
        resync_types: Iterable[int] = (FrameType.HELLO,),
    ) -> None:
        self._accepted = frozenset(int(t) for t in accepted_types)
        self._resync = frozenset(int(t) for t in resync_types)
        self._partial_timeout_s = partial_timeout_s
        self._buf = bytearray()
        self._need = 0  # bytes the buffer must reach before parsing again (a valid header is waiting)
        self._expected_seq: int | None = None
        self._last_rx: float | None = None
        self.last_frame_at: float | None = None
        """``now`` of the last valid frame of any type: the sign of life of section 2 rule 8."""
        self.counters = ReceiverCounters()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        """Forget buffered bytes and sequence state (a new connection is a new byte stream)."""
        self._buf.clear()
        self._need = 0
        self._expected_seq = None
        self._last_rx = None

    def partial_deadline(self) -> float | None:
        """When buffered bytes become a discarded partial frame if nothing else arrives."""
        if not self._buf or self._last_rx is None:
            return None
        return self._last_rx + self._partial_timeout_s

    def expire(self, now: float) -> bool:
        """Apply rule 6: drop a partial frame after more than the timeout of silence."""
        deadline = self.partial_deadline()
        if deadline is None or now <= deadline:
            return False
        if len(self._buf) >= len(MAGIC) and self._buf.startswith(MAGIC):
            self.counters.partial_frames += 1
        else:  # a lone first magic byte that never became a magic
            self.counters.garbage_bytes += len(self._buf)
        self._buf.clear()
        self._need = 0
        return True

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> list[Frame]:
        """Add received bytes; return the frames they complete, oldest first."""
        frames: list[Frame] = []
        size = len(data)
        if not size:
            return frames
        self.expire(now)
        self._last_rx = now
        self.counters.bytes += size
        if size <= MAX_READ_CHUNK:
            self._buf += data
            if len(self._buf) >= self._need:
                self._parse(frames, now)
            return frames
        view = memoryview(data)
        for start in range(0, size, MAX_READ_CHUNK):
            self._buf += view[start:start + MAX_READ_CHUNK]
            if len(self._buf) >= self._need:
                self._parse(frames, now)
        return frames

    def _parse(self, frames: list[Frame], now: float) -> None:
        buf = self._buf
        counters = self.counters
        n = len(buf)
        pos = 0
        self._need = 0
        with memoryview(buf) as view:
            while True:
                start = buf.find(MAGIC, pos)
                if start < 0:
                    # Keep a trailing first magic byte: the next read may complete the magic.
                    keep = n - 1 if n > pos and buf[n - 1] == _MAGIC0 else n
                    counters.garbage_bytes += keep - pos
                    pos = keep
                    break
                counters.garbage_bytes += start - pos
                pos = start
                avail = n - pos
                if avail > 2 and buf[pos + 2] != VERSION:
                    self._false_magic(oversize=False)
                    pos += 1
                    continue
                if avail < HEADER_SIZE:
                    break
                _version, ftype, seq, length, hcrc = _HEADER_TAIL.unpack_from(buf, pos + 2)
                header_ok = crc16_ccitt_false(view[pos + 2:pos + 10]) == hcrc
                if not header_ok or length > MAX_PAYLOAD:
                    self._false_magic(oversize=header_ok)
                    pos += 1
                    continue
                end = pos + HEADER_SIZE + length
                if n < end + TRAILER_SIZE:
                    # Rule 3: the header is valid, so its length is trusted; wait for the rest.
                    self._need = end + TRAILER_SIZE - pos
                    break
                (fcrc,) = _U32.unpack_from(buf, end)
                if zlib.crc32(view[pos + 2:end]) != fcrc:
                    counters.crc_errors += 1
                    pos = end + TRAILER_SIZE
                    continue
                payload = bytes(view[pos + HEADER_SIZE:end])
                pos = end + TRAILER_SIZE
                self._valid_frame(ftype, seq, now)
                if ftype in self._accepted:
                    frames.append(Frame(ftype, seq, payload))
                else:
                    counters.unknown_types += 1
        if pos:
            del buf[:pos]

    def _false_magic(self, *, oversize: bool) -> None:
        # Rule 2: drop only the first magic byte; it counts as garbage (rule 8).
        self.counters.header_errors += 1
        self.counters.garbage_bytes += 1
        if oversize:
            self.counters.oversize_headers += 1

    def _valid_frame(self, ftype: int, seq: int, now: float) -> None:
        counters = self.counters
        counters.frames += 1
        self.last_frame_at = now
        expected = self._expected_seq
        self._expected_seq = (seq + 1) & 0xFFFF
        if expected is None or ftype in self._resync:
            return
        gap = (seq - expected) & 0xFFFF
        if gap == 0:
            return
        if gap < 0x8000:
            counters.lost_frames += gap
        else:
            counters.sequence_resyncs += 1
