"""The firmware's protocol engine: sequence numbers, pacing, fault injection, decoding replies.

The simulator and the conformance tests' scripted firmware both talk through this: it is the
sender side of GFP/1 that our receiver is tested against.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from firmware_bridge.errors import PayloadError
from firmware_bridge.frame import DAEMON_TO_FIRMWARE, encode_frame
from firmware_bridge.messages import DaemonMessage, FirmwareMessage, decode_daemon_message
from firmware_bridge.receiver import FrameReceiver
from firmware_bridge.simulator.fault_injector import FaultInjector
from firmware_bridge.simulator.ports import FirmwarePort

__all__ = ["FirmwareEndpoint"]

log = logging.getLogger(__name__)

# A paced writer sends at most this much line time per write (keeps frames of other tasks,
# such as heartbeats, interleaving with a long scan transfer the way a real UART queue would).
_PACE_SLICE_S = 0.02


class FirmwareEndpoint:
    """Frames out (with optional baud pacing and faults), daemon messages in.

    ``baud`` throttles in software (a pty ignores the configured rate): bytes leave at
    ``baud / bits_per_byte`` per second (10 for 8N1).
    """

    def __init__(
        self,
        port: FirmwarePort,
        *,
        baud: int | None = None,
        bits_per_byte: int = 10,
        faults: FaultInjector | None = None,
        on_message: Callable[[DaemonMessage], None] | None = None,
    ) -> None:
        self.port = port
        self.faults = faults
        self.on_message: Callable[[DaemonMessage], None] = on_message or (lambda msg: None)
        self._rate = baud / bits_per_byte if baud else None
        self._next_free = 0.0
        self._lock = asyncio.Lock()
        self.tx_seq = 0
        self.receiver = FrameReceiver(DAEMON_TO_FIRMWARE, resync_types=())
        self.rejected: list[PayloadError] = []
        self.frames_sent = 0
        self.bytes_sent = 0
        port.on_data = self._on_data

    def _on_data(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        for frame in self.receiver.feed(data, loop.time()):
            try:
                msg = decode_daemon_message(frame)
            except PayloadError as err:
                self.rejected.append(err)
                log.warning("simulator: rejected a frame from the daemon: %s", err)
                continue
            self.on_message(msg)

    def next_seq(self) -> int:
        seq = self.tx_seq
        self.tx_seq = (self.tx_seq + 1) & 0xFFFF
        return seq

    async def send(self, msg: FirmwareMessage, *, first_transmission: bool = True) -> bool:
        return await self.send_frame(msg.frame_type, msg.to_payload(), first_transmission=first_transmission)

    async def send_frame(self, frame_type: int, payload: bytes, *, seq: int | None = None,
                         first_transmission: bool = True, inject: bool = True) -> bool:
        """Encode and send one frame; the sequence number is used even if a fault drops the frame."""
        frame = encode_frame(frame_type, self.next_seq() if seq is None else seq, payload)
        self.frames_sent += 1
        chunks = [frame]
        if inject and self.faults is not None:
            chunks = self.faults.mangle(frame, frame_type, first_transmission=first_transmission)
        ok = True
        for chunk in chunks:
            ok = await self.send_raw(chunk) and ok
        return ok and bool(chunks)

    async def send_raw(self, data: bytes) -> bool:
        """Put bytes on the line as they are (paced when a baud rate is set)."""
        async with self._lock:
            self.bytes_sent += len(data)
            if self._rate is None:
                return await self.port.write(data)
            loop = asyncio.get_running_loop()
            slice_size = max(1, int(self._rate * _PACE_SLICE_S))
            ok = True
            for start in range(0, len(data), slice_size):
                chunk = data[start:start + slice_size]
                now = loop.time()
                if self._next_free > now:
                    await asyncio.sleep(self._next_free - now)
                self._next_free = max(self._next_free, loop.time()) + len(chunk) / self._rate
                ok = await self.port.write(chunk) and ok
            return ok
