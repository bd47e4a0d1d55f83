"""Applies a `FaultConfig` to the frames the virtual firmware sends."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from firmware_bridge.frame import HEADER_SIZE, MAGIC, VERSION, FrameType
from firmware_bridge.simulator.faults import FaultConfig

__all__ = ["FaultInjector"]


@dataclass
class FaultInjector:
    config: FaultConfig
    rng: random.Random
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("bit_flips", "dropped", "garbage_bursts", "garbage_bytes", "truncated", "duplicated"), 0))

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def garbage(self) -> bytes:
        size = self.rng.randint(1, max(1, self.config.garbage_max_bytes))
        noise = bytearray(self.rng.getrandbits(8) for _ in range(size))
        if size >= 3 and self.rng.random() < 0.5:
            # A false magic: with and without a plausible version byte after it.
            at = self.rng.randrange(0, size - 2)
            noise[at:at + 3] = MAGIC + bytes([VERSION if self.rng.random() < 0.5 else 0x7F])
        self.counts["garbage_bursts"] += 1
        self.counts["garbage_bytes"] += size
        return bytes(noise)

    def mangle(self, frame: bytes, frame_type: int, *, first_transmission: bool) -> list[bytes]:
        """The chunks to put on the line for this frame (empty: the frame is lost)."""
        cfg = self.config
        if self.chance(cfg.drop_frame_rate) or (
                frame_type == FrameType.SCAN_LINES and first_transmission and self.chance(cfg.drop_lines_rate)):
            self.counts["dropped"] += 1
            return []
        out: list[bytes] = []
        if self.chance(cfg.garbage_rate):
            out.append(self.garbage())
        data = frame
        if self.chance(cfg.bit_flip_rate):
            flipped = bytearray(data)
            bit = self.rng.randrange(len(flipped) * 8)
            flipped[bit // 8] ^= 1 << (bit % 8)
            data = bytes(flipped)
            self.counts["bit_flips"] += 1
        if self.chance(cfg.truncate_rate):
            data = data[:self.rng.randrange(2, max(3, min(len(data), HEADER_SIZE + 64)))]
            self.counts["truncated"] += 1
        out.append(data)
        return out
